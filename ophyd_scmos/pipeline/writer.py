"""The writer process: slot indices in on stdin, frames out to HDF5 files, status on stdout.

Run as ``python -m ophyd_scmos.pipeline`` (see `__main__.py`; never through multiprocessing's
spawn, which would re-import the user's main script), once per camera: it writes one run's
file after another. The commands, status lines and configuration are defined in `protocol`:
commands are served in order; end of stdin means the acquiring process is gone, or done
with the camera: an open file gets what was announced and is closed, then the process exits.
Every status line carries ``written``: frames in the file and flushed, which survive even a
killed writer.

The file is written in SWMR mode and flushed at least every `flush_interval` seconds, so a
reader (or a crash) always sees a consistent file holding every frame reported written. A
file without images (`WriterConfig.images` False) gets each frame's number, timestamps and
statistics: the frame itself is read for its statistics, and not stored.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import heapq
import io
import itertools
import json
import os
import select
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from typing import Any, TextIO

import h5py
import numpy as np

from ophyd_scmos.pipeline import layout, stats
from ophyd_scmos.pipeline.compression import ChunkCompressor, dataset_options
from ophyd_scmos.pipeline.protocol import (
    RECORD,
    Op,
    State,
    WriterConfig,
    WriterStatus,
    encode_stats,
)
from ophyd_scmos.pipeline.ring import PAGE, FrameRing
from ophyd_scmos.pipeline.writeback import (
    CloseReserve,
    Room,
    WriteBehind,
    file_identity,
    fsync_path,
    names_file,
    no_room,
)

#: plain ints: numpy compares an enum slowly
OPEN, RUN = int(Op.OPEN), int(Op.RUN)


class RunFile:
    """One run's file: appends frames from ring slots; owns nothing but the open file."""

    def __init__(
        self,
        config: WriterConfig,
        ring: FrameRing,
        compressor: ChunkCompressor | None,
        status: TextIO,
        measurer: Executor,
    ):
        options = config.options
        self.path = config.path
        self.ring = ring
        self.flush_interval = options.flush_interval
        self.status = status
        self.written = 0  # frames in the file
        self.flushed = 0  # frames in the file and flushed
        self.released = self.ring.released
        self.lost = {Op.DROPPED: 0, Op.MISSED: 0}  # as the producer last told us
        self.run: str | None = None  # the run the frames are of, once told (`Op.RUN`)
        # The acquiring process created the file, empty, to claim its name (see `files`).
        if os.path.getsize(self.path) != 0:
            raise FileExistsError(f"{self.path} is not the empty file made for this run")
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            self.reserve = CloseReserve(directory)
        except OSError as exc:
            needed = f"a new run's file {self.path}"
            raise no_room(exc.errno or errno.ENOSPC, needed, directory) from exc
        # Large chunks start on page boundaries: whole-page writes (small ones would waste
        # space). No file lock: a reader that opened the empty file the moment it appeared
        # (a follower of the write directory) holds one, and the run would fail to start.
        self.file = h5py.File(
            self.path,
            "w",
            libver="latest",
            alignment_threshold=2**20,
            alignment_interval=PAGE,
            locking=False,
        )
        spec = self.ring.spec
        self.data = layout.create_layout(
            self.file,
            spec.frame_shape,
            spec.dtype,
            compression=dataset_options(options.compression),
            attrs=config.attrs,
            images=config.images,
        )
        self.meta = [
            Column(self.file[p])
            for p in (layout.FRAME_NUMBER, layout.TIMESTAMP, layout.HOST_TIMESTAMP)
        ]
        self.regions = config.regions
        #: how this writer measures a frame's statistics (in one compiled pass where it takes
        #: the frames' type, else by BLAS products); None: there are none
        self.measure: Callable[..., np.ndarray] | None = None
        if self.regions is not None:
            compiled = stats.prepare(np.dtype(spec.dtype))
            self.measure = functools.partial(stats.compute, regions=self.regions, compiled=compiled)
        #: a frame's statistics: the whole frame's and each region's row
        self.stats_shape = (1 + len(self.regions or ()), len(stats.STATS))
        self.stats = (
            []
            if self.regions is None
            else [Column(d) for d in layout.create_stats(self.file, spec.frame_shape, self.regions)]
        )
        #: what a frame adds to the file: its chunk, or without images its row of 8-byte values
        row_bytes = 8 * (len(self.meta) + len(self.stats))
        self.frame_bytes = row_bytes if self.data is None else spec.frame_bytes
        #: statistics of frames from `stats_from` on, in batches (frames, regions, stats)
        self.unreported: list[np.ndarray] = []
        self.stats_from = 0
        self.unstored: list[np.ndarray] = []  #: those of frames from `stats_stored` on, likewise
        self.stats_stored = 0  #: frames whose statistics are in the file
        self.last_stats_store = time.monotonic()
        self.compressor = compressor
        self.measurer = measurer
        limit = options.write_limit_mb_s
        self.room = Room(self.path, reserved=self.reserve.held)
        self.fd = self.file.id.get_vfd_handle()
        self.identity = file_identity(self.fd)
        self.behind = WriteBehind(self.fd, limit=limit and limit * 1e6)
        self.file.swmr_mode = True
        self.last_flush = time.monotonic()
        self.flush_targets: list[int] = []  #: frame counts someone waits for (a heap)
        self.settle_at: int | None = None  #: a flush from here on stores every statistic

    def report(self, state: State, **extra: Any) -> None:
        message = {"state": state.value, "written": self.flushed, **extra}
        if self.stats:
            message["stored"] = self.stats_stored
        if self.unreported:
            message.update(
                stats_from=self.stats_from, stats=encode_stats(stats.joined(self.unreported))
            )
            self.unreported = []
        send(self.status, WriterStatus(**message))  # type: ignore[typeddict-item]

    def write_frames(self, slots: np.ndarray) -> None:
        """Append the frames in `slots` (in order), handing each slot back once it is stored.

        Every frame is one direct chunk write: the slot's bytes as they are, or the chunk the
        compressor made from them (none in a file without images). Its statistics are
        computed on the slot before it goes back (the whole frame and each region: no copy):
        by the `measurer` thread while frames are written (numpy, BLAS and the compiled pass
        work without the GIL, h5py holds it), unless the batch is one small frame (a step
        scan's point): then here, as handing it over would cost more than it overlaps.
        The per-frame metadata is copied out of the ring first, so a slot can go back to the
        producer as soon as its frame is written. If a write fails (disk full), the datasets
        are cut back to the frames that made it, so the file never claims a frame it does not
        hold.
        """
        ring, start = self.ring, self.written
        sources = (ring.frame_number, ring.camera_timestamp, ring.host_timestamp)
        values = [source[slots] for source in sources]
        frames = (ring.slot(s) for s in slots)
        measure = self.measure
        # each frame's statistics, measured into its row (none without statistics)
        computed = np.empty((0 if measure is None else len(slots), *self.stats_shape))
        measured: list[Future[np.ndarray]] = []
        if measure is not None and (
            len(slots) > 1 or ring.spec.frame_bytes >= stats.SMALL_FRAME_BYTES
        ):
            measured = [
                self.measurer.submit(measure, ring.slot(s), out=out)
                for s, out in zip(slots, computed, strict=True)
            ]
        chunks = frames if self.compressor is None else self.compressor.imap(frames)
        frame_shape = self.ring.spec.frame_shape
        if self.data is not None:
            self.data.id.set_extent((start + len(slots), *frame_shape))
        done = start
        try:
            for chunk in chunks:
                if self.data is not None:
                    self.data.id.write_direct_chunk((done, 0, 0), chunk)
                if measured:
                    measured[done - start].result()
                elif measure is not None:
                    measure(ring.slot(slots[done - start]), out=computed[done - start])
                done += 1
                self.released += 1
                ring.release_to(self.released)
                self.behind.advance(self.file.id.get_filesize())
        finally:
            chunks.close()  # a failed write: start no more compressions
            if measured:  # nor statistics; none may read a slot after this
                for future in measured:
                    future.cancel()
                wait(measured)
            if done < start + len(slots) and self.data is not None:
                self.data.id.set_extent((done, *frame_shape))
            if done > start:
                for column, frame_values in zip(self.meta, values, strict=True):
                    column.append(frame_values[: done - start])
                if measure is not None:
                    self.record_stats(start, computed[: done - start])
            self.written = done

    def record_stats(self, start: int, computed: np.ndarray) -> None:
        """Keep frames' statistics (frame, region, stat) from file index `start` for the next
        status line and for the file."""
        if not self.unreported:
            self.stats_from = start
        self.unreported.append(computed)
        self.unstored.append(computed)

    def store_stats(self, force: bool = False) -> None:
        """Append the statistics not yet in the file, at most once a flush interval unless
        `force`d: a step scan flushes every event, and one append per statistic and region
        per event would cost more than the frame. Readers see them lag the frames by up to
        `flush_interval`; the acquiring process has them from the status lines at once."""
        now = time.monotonic()
        if not self.unstored or (not force and now - self.last_stats_store < self.flush_interval):
            return
        columns = stats.joined(self.unstored).reshape(-1, len(self.stats))
        for i, column in enumerate(self.stats):
            column.append(columns[:, i])
            column.store()  # readers see it from the file's next flush
        self.stats_stored += len(columns)
        self.unstored = []
        self.last_stats_store = now

    def flush(self) -> None:
        """Make written frames visible to readers and safe from a crash of this process.
        A file deleted meanwhile fails here, within a flush interval, not at the run's end:
        every frame written into it since is lost. So does a file moved away or replaced:
        its run's documents name its path, where its frames no longer are."""
        if not names_file(self.path, self.identity):
            why = (
                "deleted while it was written"
                if os.fstat(self.fd).st_nlink == 0
                else "moved away or replaced while it was written (the frames written are in "
                "the file, wherever it went; the run's documents name this path)"
            )
            raise FileNotFoundError(errno.ENOENT, why, self.path)
        self.store_stats(force=self.settle_at is not None and self.written >= self.settle_at)
        for column in self.meta:
            column.store()
        self.file.flush()
        self.flushed = self.written
        self.last_flush = time.monotonic()
        while self.flush_targets and self.flush_targets[0] <= self.flushed:
            heapq.heappop(self.flush_targets)
        self.report(State.PROGRESS)

    def truncate(self, keep: int) -> None:
        """Cut the file to its first `keep` frames (frames of points a run never recorded)."""
        if 0 <= keep < self.written:
            if self.data is not None:
                self.data.resize(keep, axis=0)
            for column in self.meta:
                column.cut(keep)
            if self.unreported:
                kept = stats.joined(self.unreported)[: max(0, keep - self.stats_from)]
                self.unreported = [kept] if len(kept) else []
            if keep < self.stats_stored:
                for column in self.stats:
                    column.cut(keep)
                self.stats_stored, self.unstored = keep, []
            elif self.unstored:
                self.unstored = [stats.joined(self.unstored)[: keep - self.stats_stored]]
            self.written = keep
            self.flushed = min(self.flushed, keep)

    def finish(self, keep: int, complete: bool, error: str | None = None) -> None:
        """Flush, cut to `keep` frames (if >= 0), close, record the outcome, and make sure it
        is all on disk: a closed file survives a power cut (write-behind left little to do)."""
        self.reserve.release()  # for the metadata written from here on
        self.truncate(keep)
        self.store_stats(force=True)
        self.flush()
        self.close()
        self.record_outcome(complete, error)
        fsync_path(self.path)
        self.report(State.CLOSED, complete=complete)

    def close(self) -> None:
        """Close the file once its write-behind has let go of it (a failed writeback raises
        here, after the file is closed)."""
        try:
            self.behind.close()
        finally:
            self.file.close()

    def record_outcome(self, complete: bool, error: str | None = None) -> None:
        """After closing (`Outcome.store`), if its path still names it (never into another
        file put there since); HEADROOM leaves room for it on a full disk."""
        dropped, missed = self.lost[Op.DROPPED], self.lost[Op.MISSED]
        outcome = layout.Outcome(self.written, dropped, missed, complete, error, run=self.run)
        if names_file(self.path, self.identity):
            outcome.store(self.path)

    def append(self, slots: np.ndarray) -> None:
        """Write the frames in `slots`, or as many as the disk holds, then say it is full."""
        space, reason = self.room(self.file.id.get_filesize())
        fit = min(len(slots), space // self.frame_bytes)
        self.write_frames(slots[:fit])
        if fit < len(slots):
            raise no_room(reason, f"frame {self.written + 1}")


class Column:
    """A 1-D dataset that grows by appending. The chunk where it ends is kept here (its
    values, then zeros, as HDF5 fills) and written whole, by a direct chunk write, when it is
    full or the file is flushed (`store`): a step scan appends a value to each column for
    every event, and HDF5's general write of one value (its selections, its conversion, then
    the flush of the chunk it cached) cost twice as much."""

    def __init__(self, dataset: h5py.Dataset):
        # HDF5's own calls, one property list: h5py's properties fetch it again for each
        # (a run's start makes 21 columns with one region)
        plist = dataset.id.get_create_plist()
        if dataset.id.shape != (0,) or plist.get_nfilters():
            raise ValueError(f"{dataset.name}: a column starts empty and unfiltered")
        self.dataset = dataset
        self.length = 0  #: values appended
        self.stored = 0  #: values in the file, its extent
        (self._chunk_length,) = plist.get_chunk()
        self._tail = np.zeros(self._chunk_length, dataset.id.dtype)  #: the values of the chunk
        self._tail_start = 0  #: where the column ends, from its first index

    def append(self, values: np.ndarray) -> None:
        """Append `values`: in the file with the next `store`, or as soon as their chunk is
        full."""
        done = 0
        while done < len(values):
            if self.length == self._tail_start + self._chunk_length:  # full: on to the next
                self.store()
                self._tail_start = self.length
                self._tail[:] = 0
            offset = self.length - self._tail_start
            n = min(len(values) - done, self._chunk_length - offset)
            self._tail[offset : offset + n] = values[done : done + n]
            self.length += n
            done += n

    def store(self) -> None:
        """Write the values appended since the last store; a write that fails (disk full)
        leaves the file's extent at the values it holds."""
        if self.stored == self.length:
            return
        self.dataset.id.set_extent((self.length,))
        try:
            self.dataset.id.write_direct_chunk((self._tail_start,), self._tail)
        except BaseException:
            self.dataset.id.set_extent((self.stored,))
            raise
        self.stored = self.length

    def cut(self, length: int) -> None:
        """Keep the first `length` values."""
        if length >= self.length:
            return
        if length < self._tail_start:  # it now ends in an earlier chunk, stored: keep it here
            self._tail_start = length - length % self._chunk_length
            self._tail[: length - self._tail_start] = self.dataset[self._tail_start : length]
        self._tail[length - self._tail_start :] = 0
        self.length = length
        if self.stored > length:
            self.dataset.id.set_extent((length,))
            self.stored = length


class WriterLoop:
    """The writer process: serves one run's file after another, for as long as the camera
    that started it lives, and keeps the ring and the compressors between them.

    A file is opened by `Op.OPEN` (its `WriterConfig` follows as JSON) and closed by
    `Op.FINISH`; the frame commands between them are that file's. End of input means the
    acquiring process is gone (or is done with the camera): an open file is closed with
    what it was handed, then the process exits.
    """

    def __init__(self, status: TextIO):
        self.status = status
        self.ring: FrameRing | None = None
        self.file: RunFile | None = None
        self.compressors: dict[tuple[str, str], ChunkCompressor] = {}
        #: one thread computes statistics beside the one that writes
        self.measurer = ThreadPoolExecutor(1, thread_name_prefix="stats")

    def run(self, commands: int) -> None:
        """Serve commands until the end of input."""
        pending = b""
        while True:
            file = self.file
            timeout = None
            if file is not None:
                timeout = max(0.0, file.last_flush + file.flush_interval - time.monotonic())
            ready, _, _ = select.select([commands], [], [], timeout)
            if not ready:
                if file is not None and (file.flushed != file.written or file.unstored):
                    file.flush()
                elif file is not None:
                    file.last_flush = time.monotonic()
                continue
            chunk = os.read(commands, 1 << 16)
            if not chunk:
                if self.file is not None:
                    self.file.finish(keep=-1, complete=False)
                return
            pending = self.serve(pending + chunk)
            file = self.file
            if file is None:
                continue
            # Flush when the interval is up, and as soon as someone waits for these frames:
            # only flushed frames survive a killed writer, so only they complete a wait and
            # only a flush is reported (a line between flushes would tell nothing new).
            due = file.flush_targets and file.written >= file.flush_targets[0]
            if due or time.monotonic() - file.last_flush >= file.flush_interval:
                file.flush()

    def serve(self, data: bytes) -> bytes:
        """Carry out the whole commands in `data`, in order, runs of frames at once; return
        what is left of it (a command, or an OPEN's configuration, not yet complete)."""
        start = 0
        while len(data) - start >= RECORD.itemsize:
            whole = (len(data) - start) // RECORD.itemsize * RECORD.itemsize
            records = np.frombuffer(data[start : start + whole], RECORD)
            ops = records["op"]
            # a payload follows these
            carrying = np.flatnonzero((ops == OPEN) | (ops == RUN))
            count = int(carrying[0]) if len(carrying) else len(records)
            self.serve_records(records[:count])
            start += count * RECORD.itemsize
            if not len(carrying):
                break
            op, arg = int(ops[count]), int(records["arg"][count])
            payload = data[start + RECORD.itemsize : start + RECORD.itemsize + arg]
            if len(payload) < arg:
                break  # the rest has not arrived yet
            if op == OPEN:
                self.open(WriterConfig.from_json(payload.decode()))
            else:
                self.require_file(op).run = payload.decode()
            start += RECORD.itemsize + arg
        return data[start:]

    def serve_records(self, records: np.ndarray) -> None:
        if not len(records):
            return
        file = self.require_file(*set(records["op"].tolist()))
        ops, args = records["op"], records["arg"]
        edges = [0, *(np.flatnonzero(ops[1:] != ops[:-1]) + 1).tolist(), len(records)]
        for first, end in itertools.pairwise(edges):  # runs of one command
            op, arg = Op(int(ops[first])), args[first:end]
            if op is Op.FRAME:
                file.append(arg)
            elif op in file.lost:
                file.lost[op] = int(arg[-1])
            elif op in (Op.FLUSH, Op.SETTLE):
                for target in arg:
                    heapq.heappush(file.flush_targets, int(target))
                if op is Op.SETTLE:
                    file.settle_at = int(arg.min())
            elif op is Op.TRUNCATE:
                file.truncate(int(arg[-1]))
                file.report(State.PROGRESS, truncated=int(arg[-1]))
            elif op is Op.FINISH:
                file.finish(keep=int(arg[0]), complete=True)
                self.file = None

    def require_file(self, *ops: int) -> RunFile:
        if self.file is None:
            raise RuntimeError(f"commands {sorted(ops)} came with no file open")
        return self.file

    def open(self, config: WriterConfig) -> None:
        """Start a run's file, attaching to its ring if it is not the one attached."""
        if self.file is not None:
            self.close_unfinished(self.file)
        if self.ring is None or self.ring.spec != config.ring:
            if self.ring is not None:
                self.ring.close()
            self.ring = FrameRing.attach(config.ring)
        compressor = None
        codec = config.options.compression
        if codec is not None and config.images:
            key = (codec, config.ring.dtype)
            if key not in self.compressors:
                self.compressors[key] = ChunkCompressor(codec, config.ring.dtype)
            compressor = self.compressors[key]
        self.file = RunFile(config, self.ring, compressor, self.status, self.measurer)
        self.file.report(State.OPEN, path=self.file.path)

    def close_unfinished(self, file: RunFile) -> None:
        """Close a file whose `Op.FINISH` never came (its acquiring process was interrupted
        while closing it) as a run that ended early, with every frame it holds. Its status
        lines go nowhere: they would be taken for the next file's."""
        file.status = io.StringIO()
        file.finish(keep=-1, complete=False, error=UNFINISHED)
        self.file = None


#: the outcome's error of a file that `WriterLoop.close_unfinished` closed
UNFINISHED = (
    "closed as the next run's file opened: the acquiring process never finished this one "
    "(interrupted while closing it?); every frame written is kept"
)


def send(status: TextIO, message: WriterStatus) -> None:
    """One status line to the acquiring process, if it still listens: the file is what matters."""
    with contextlib.suppress(BrokenPipeError, ValueError):
        status.write(json.dumps(message) + "\n")
        status.flush()
