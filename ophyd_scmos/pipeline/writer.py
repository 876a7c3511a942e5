"""The writer process: slot indices in on stdin, frames out to one HDF5 file, status on stdout.

Run as ``python -m ophyd_scmos.pipeline CONFIG_JSON`` (see `__main__.py`; never through
multiprocessing's spawn, which would re-import the user's main script). The commands, status
lines and configuration are defined in `protocol`: commands are served in order; end of
stdin without `Op.FINISH` means the acquiring process is gone: write what was announced,
close, exit. Every status line carries ``written``: frames in the file and flushed, which
survive even a killed writer.

The file is written in SWMR mode and flushed at least every `flush_interval` seconds, so a
reader (or a crash) always sees a consistent file holding every frame reported written.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import select
import time
from typing import Any, TextIO

import h5py
import numpy as np

from ophyd_scmos.pipeline import layout
from ophyd_scmos.pipeline.compression import ChunkCompressor, dataset_options
from ophyd_scmos.pipeline.protocol import RECORD, Op, State, WriterConfig, WriterStatus
from ophyd_scmos.pipeline.ring import PAGE, FrameRing
from ophyd_scmos.pipeline.writeback import WriteBehind, no_room, room


class Writer:
    """Appends frames from ring slots to the file; owns nothing but the open file."""

    def __init__(self, config: WriterConfig, status: TextIO):
        options = config.options
        self.path = config.path
        self.ring = FrameRing.attach(config.ring)
        self.flush_interval = options.flush_interval
        self.status = status
        self.written = 0  # frames in the file
        self.flushed = 0  # frames in the file and flushed
        self.released = self.ring.released
        self.lost = {Op.DROPPED: 0, Op.MISSED: 0}  # as the producer last told us
        self.frame_bytes = self.ring.spec.frame_bytes
        # The acquiring process created the file, empty, to claim its name (see `files`).
        if os.path.getsize(self.path) != 0:
            raise FileExistsError(f"{self.path} is not the empty file made for this run")
        # Large chunks start on page boundaries: whole-page writes (small ones would waste space)
        self.file = h5py.File(
            self.path, "w", libver="latest", alignment_threshold=2**20, alignment_interval=PAGE
        )
        spec = self.ring.spec
        self.data = layout.create_layout(
            self.file,
            spec.frame_shape,
            spec.dtype,
            compression=dataset_options(options.compression),
            attrs=config.attrs,
        )
        self.meta = [
            self.file[p] for p in (layout.FRAME_NUMBER, layout.TIMESTAMP, layout.HOST_TIMESTAMP)
        ]
        self.compressor = (
            ChunkCompressor(options.compression, spec.dtype) if options.compression else None
        )
        limit = options.write_limit_mb_s
        self.behind = WriteBehind(self.file.id.get_vfd_handle(), limit=limit and limit * 1e6)
        self.file.swmr_mode = True
        self.last_flush = time.monotonic()
        self.flush_targets: list[int] = []  #: frame counts someone waits for (a heap)

    def report(self, state: State, **extra: Any) -> None:
        message = {"state": state.value, "written": self.flushed, **extra}
        send(self.status, WriterStatus(**message))  # type: ignore[typeddict-item]

    def write_frames(self, slots: np.ndarray) -> None:
        """Append the frames in `slots` (in order), handing each slot back once it is stored.

        Every frame is one direct chunk write: the slot's bytes as they are, or the chunk the
        compressor made from them. The per-frame metadata is copied out of the ring first, so a
        slot can go back to the producer as soon as its frame is written. If a write fails
        (disk full), the datasets are cut back to the frames that made it, so the file never
        claims a frame it does not hold.
        """
        ring, start = self.ring, self.written
        sources = (ring.frame_number, ring.camera_timestamp, ring.host_timestamp)
        values = [source[slots] for source in sources]
        frames = (ring.slot(s) for s in slots)
        chunks = frames if self.compressor is None else self.compressor.imap(frames)
        self.data.resize(start + len(slots), axis=0)
        done = start
        try:
            for chunk in chunks:
                self.data.id.write_direct_chunk((done, 0, 0), chunk)
                done += 1
                self.released += 1
                ring.release_to(self.released)
                self.behind.advance(self.file.id.get_filesize())
        finally:
            chunks.close()  # a failed write: start no more compressions
            if done < start + len(slots):
                self.data.resize(done, axis=0)
            for ds, frame_values in zip(self.meta, values, strict=True):
                if ds.shape[0] < done:
                    ds.resize(-(-done // layout.METADATA_STEP) * layout.METADATA_STEP, axis=0)
                ds[start:done] = frame_values[: done - start]
            self.written = done

    def flush(self) -> None:
        """Make written frames visible to readers and safe from a crash of this process."""
        for ds in self.meta:
            ds.resize(self.written, axis=0)
        self.file.flush()
        self.flushed = self.written
        self.last_flush = time.monotonic()
        while self.flush_targets and self.flush_targets[0] <= self.flushed:
            heapq.heappop(self.flush_targets)
        self.report(State.PROGRESS)

    def truncate(self, keep: int) -> None:
        """Cut the file to its first `keep` frames (frames of points a run never recorded)."""
        if 0 <= keep < self.written:
            self.data.resize(keep, axis=0)
            self.written = keep
            self.flushed = min(self.flushed, keep)

    def finish(self, keep: int, complete: bool) -> None:
        """Flush, cut to `keep` frames (if >= 0), close, record the outcome, and make sure it
        is all on disk: a closed file survives a power cut (write-behind left little to do)."""
        self.truncate(keep)
        self.flush()
        self.file.close()
        self.record_outcome(complete)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.ring.close()
        self.report(State.CLOSED, complete=complete)

    def record_outcome(self, complete: bool, error: str | None = None) -> None:
        """After closing: attributes cannot be created in SWMR mode. HEADROOM leaves room
        for them on a full disk."""
        dropped, missed = self.lost[Op.DROPPED], self.lost[Op.MISSED]
        with h5py.File(self.path, "r+") as f:
            layout.Outcome(self.written, dropped, missed, complete, error).write(f)

    def run(self, commands: int) -> None:
        """Serve commands until FINISH or end of input."""
        self.report(State.OPEN, path=self.path)
        pending = b""
        while True:
            timeout = max(0.0, self.last_flush + self.flush_interval - time.monotonic())
            ready, _, _ = select.select([commands], [], [], timeout)
            if not ready:
                if self.flushed != self.written:
                    self.flush()
                else:
                    self.last_flush = time.monotonic()
                continue
            chunk = os.read(commands, 1 << 16)
            if not chunk:
                self.finish(keep=-1, complete=False)
                return
            pending += chunk
            whole = len(pending) // RECORD.itemsize * RECORD.itemsize
            records = np.frombuffer(pending[:whole], RECORD)
            pending = pending[whole:]
            if self.serve(records):
                return
            # Flush when the interval is up, and as soon as someone waits for these frames:
            # only flushed frames survive a killed writer, so only they complete a wait.
            due = self.flush_targets and self.written >= self.flush_targets[0]
            if due or time.monotonic() - self.last_flush >= self.flush_interval:
                self.flush()
            else:
                self.report(State.PROGRESS)

    def serve(self, records: np.ndarray) -> bool:
        """Carry out `records` in order, runs of frames at once; True once finished."""
        for run in np.split(records, np.flatnonzero(np.diff(records["op"])) + 1):
            op, arg = Op(run["op"][0]), run["arg"]
            if op is Op.FRAME:
                self.append(arg)
            elif op in self.lost:
                self.lost[op] = int(arg[-1])
            elif op is Op.FLUSH:
                for target in arg:
                    heapq.heappush(self.flush_targets, int(target))
            elif op is Op.TRUNCATE:
                self.truncate(int(arg[-1]))
                self.report(State.PROGRESS, truncated=int(arg[-1]))
            elif op is Op.FINISH:
                self.finish(keep=int(arg[0]), complete=True)
                return True
        return False

    def append(self, slots: np.ndarray) -> None:
        """Write the frames in `slots`, or as many as the disk holds, then say it is full."""
        space, reason = room(self.path, self.file.id.get_filesize())
        fit = min(len(slots), space // self.frame_bytes)
        self.write_frames(slots[:fit])
        if fit < len(slots):
            raise no_room(reason, f"frame {self.written + 1}")


def send(status: TextIO, message: WriterStatus) -> None:
    """One status line to the acquiring process, if it still listens: the file is what matters."""
    with contextlib.suppress(BrokenPipeError, ValueError):
        status.write(json.dumps(message) + "\n")
        status.flush()
