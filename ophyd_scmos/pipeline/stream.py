"""One acquisition's frames: camera -> shared-memory ring -> writer process -> one HDF5 file.

`FrameStream` is one run: its file, the acquisition thread that reads the camera into free
ring slots, and the counts of what happened to every frame. The writer process and its ring
outlive it when the caller lends a warm `WriterProcess` (a camera does); otherwise the
stream starts its own and ends it when it closes. It knows nothing of ophyd: the Device,
the flyer and the benchmarks all drive it the same way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ophyd_scmos.drivers.base import CameraDriver, CameraError, TriggerMode
from ophyd_scmos.pipeline import layout, stats
from ophyd_scmos.pipeline.options import PipelineOptions
from ophyd_scmos.pipeline.process import WriterProcess
from ophyd_scmos.pipeline.protocol import Op, State, WriterConfig, WriterStatus, decode_stats
from ophyd_scmos.pipeline.recovery import H5PY_FAILURES, clear_open_flags, finish_close
from ophyd_scmos.pipeline.ring import FrameRing, Header
from ophyd_scmos.pipeline.stats import Region
from ophyd_scmos.pipeline.writeback import file_identity, fsync_path, names_file, no_room, room

INFO_KEPT = 1 << 16  #: (frame number, camera timestamp) of the most recent frames, for events
STATS_KEPT = 1 << 14  #: statistics of the most recent frames written, for events
#: frames one step-scan point may take: its statistics must all still be kept when it ends
MAX_FRAMES_PER_POINT = STATS_KEPT
#: seconds a camera owing frames may send none, beyond 20 frame intervals, before it counts as
#: stopped: long enough for a driver to notice a camera gone and say so in its own words
SILENCE_SECONDS = 10.0


class StreamError(RuntimeError):
    """Acquisition or writing failed; the message names the file and what was saved."""


@dataclass(frozen=True)
class StreamSummary:
    """What one stream put on disk."""

    path: Path
    frames_acquired: int  #: frames that reached the ring
    frames_written: int  #: frames in the closed file
    frames_dropped: int  #: frames read from the camera but discarded (ring full, `drop` policy)
    frames_missed: int  #: frames the camera itself lost (reported by the driver)


class FrameStream:
    """Stream frames from `driver` into a new HDF5 file at `path` through a writer process.

    `open()` raises before any frame is taken if the file cannot be made. `wait_for(n, cb)`
    calls `cb(None)` once n frames are in the ring, or `cb(exc)` when the stream fails.
    `close()` stops the camera, lets the writer drain the ring and close the file, and returns
    a `StreamSummary`, or raises `StreamError` saying what was saved. `options` sizes the
    ring (all the memory a stream takes, however long it runs) and says how to write.
    With `regions` (a dict, maybe empty; None: no statistics) the writer computes every
    frame's statistics (`stats`), stores them in the file and reports them with the frames
    written: `frame_stats` has them by the time `wait_for` calls back. With `images` False
    the file gets every frame's number, timestamps and statistics but not the frame.
    """

    def __init__(
        self,
        driver: CameraDriver,
        path: str | os.PathLike,
        options: PipelineOptions | None = None,
        *,
        attrs: dict[str, Any] | None = None,
        on_progress: Callable[[FrameStream], None] | None = None,
        gated: bool = False,
        writer: WriterProcess | None = None,
        regions: dict[str, Region] | None = None,
        images: bool = True,
    ):
        self.driver = driver
        self.path = Path(path)
        self.options = options or PipelineOptions()
        self.attrs = dict(attrs or {})
        self._on_progress = on_progress
        self.ring: FrameRing | None = None
        self.writer = writer
        self._own_writer = writer is None  #: started here, ended by `close`
        self._base = 0  #: frames the ring had passed before this run, for slot numbers
        self._written = 0
        self._identity = (-1, -1)  #: (device, inode) of the file, once made
        self._stored: int | None = None  # frames whose statistics are in the file, if any
        self._heard = 0.0  # time.monotonic() of the writer's last status line
        self._stalled: float | None = None  # seconds the writer was silent before its kill
        #: why acquisition ended before the run did (the camera failed): the file says so
        self._ended_early: str | None = None
        self.frames_acquired = 0
        self.frames_dropped = 0
        self.frames_missed = 0
        self.error: StreamError | None = None
        self._lock = threading.Lock()
        self._waiters: list[tuple[int, Callable[[BaseException | None], None]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._opened = threading.Event()
        self._closed = threading.Event()  #: the writer closed the file, or failed
        self._finished = False  #: the writer closed the file (not failed)
        # With a gate, only frames `allow()`ed are recorded; the rest (a free-running camera
        # between triggers) are read and skipped, so the camera never overflows.
        self._gate: int | None = 0 if gated else None
        #: without a gate (a software trigger's frames), the frames taken once those asked for
        #: have come: the camera owes frames until then
        self._asked = 0
        self._last_frame_at = time.monotonic()  #: when the camera last sent a frame owed
        #: a flush a waiter asked for, sent with the frame that brings the file to it
        self._flush_with_frame = 0
        self._file_frames = 0  #: frames sent to the file (after cuts)
        self._info: deque[tuple[int, float]] = deque(maxlen=INFO_KEPT)
        self._first_info: tuple[int, float] | None = None  #: the first frame recorded's
        self.regions = regions
        self.images = images
        self._stats = KeptStats()
        self.run: str | None = None  #: the run the frames are of, once told (`record_run`)
        self._truncated = threading.Condition()
        self._truncated_to: int | None = None  # the writer's last TRUNCATE acknowledgement

    # -- state readable from any thread ---------------------------------------------------
    @property
    def frames_written(self) -> int:
        """Frames in the file and flushed: they survive even a killed writer."""
        return self._written

    @property
    def frames_readable(self) -> int:
        """Frames written whose statistics, if the file has any, are in it too (the
        writer stores statistics less often than it flushes frames): what a page of a
        movie, whose statistics are columns of the file, may point at."""
        return self._written if self._stored is None else min(self._written, self._stored)

    @property
    def ring_fill(self) -> float:
        """Fraction of ring slots holding frames the writer has not finished with."""
        if self.ring is None:
            return 0.0
        in_ring = self._base + self.frames_acquired - self.ring.released
        return in_ring / self.ring.spec.n_slots

    # -- lifecycle ----------------------------------------------------------------------------
    def open(self, timeout: float = 30) -> None:
        """Create the file (never an existing one), start the writer and the camera.

        Raises before any frame is taken if the file, the ring, the writer or the camera
        cannot be had; then nothing is left behind: no file, no ring, no process.
        """
        frame_bytes = int(np.prod(self.driver.frame_shape)) * np.dtype(self.driver.dtype).itemsize
        space, reason = room(self.path, 0)
        if space < frame_bytes:  # a full disk: fail now, not with an empty file
            raise no_room(reason, f"a new run's file {self.path}")
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise FileExistsError(
                f"{self.path} exists; ophyd-scmos never overwrites a file"
            ) from None
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            needed = f"a new run's file {self.path}"
            raise no_room(errno.ENOSPC, needed, self.path.parent) from None
        try:
            self._identity = file_identity(fd)
        finally:
            os.close(fd)
        try:
            self._start(timeout)
        except BaseException:
            self._abandon()
            raise

    def _start(self, timeout: float) -> None:
        if self.writer is None:
            self.writer = WriterProcess()
        shape, dtype = self.driver.frame_shape, np.dtype(self.driver.dtype)
        self.ring = self.writer.ring_for(shape, dtype, self.options.slots_for(shape, dtype))
        self._base = self.ring.released
        self.ring.header[Header.ACQUIRED : Header.WRITTEN + 1] = 0  # this run's counts
        self.ring.header[Header.RUN_BASE] = self._base
        config = WriterConfig(
            str(self.path),
            self.ring.spec,
            self.options,
            self.attrs,
            self.regions,
            self.images,
        )
        self.writer.open_file(config, self._on_writer_status)
        deadline = time.monotonic() + timeout
        while not self._opened.wait(0.05):
            if self.writer.ended.is_set() or time.monotonic() > deadline:
                message = self.writer.last.get("error", "writer did not start in time")
                raise OSError(f"cannot write {self.path}: {message}")
        threading.Thread(target=self._watch_writer, name="scmos-writer-watch", daemon=True).start()
        if self._gate is None:
            self._start_camera()

    def _start_camera(self) -> None:
        """Start the camera and the thread that reads it. A gated stream does this when the
        first frames are allowed, so a movie's frame numbers start at 0 with its first frame."""
        self._last_frame_at = time.monotonic()
        self.driver.start()
        self._thread = threading.Thread(target=self._acquire, name="scmos-acquire", daemon=True)
        self._thread.start()

    def _abandon(self) -> None:
        """Undo a failed `open`: no frame was taken, so the file goes too, and the writer
        that had it open (a caller that lent it replaces it)."""
        if self.writer is not None:
            self.writer.kill()
            self.writer.file_done()
            if self._own_writer:
                self.writer.shutdown()
        self.ring = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def close(self, timeout: float = 60, keep: int | None = None) -> StreamSummary:
        """Stop the camera, write what is in the ring, close the file. Safe to call twice.

        `keep` cuts the file to its first `keep` frames (those a run recorded in events).
        If the writer died, the file is recovered so plain readers open it again.
        """
        writer = self._require_writer()
        self.stop_acquiring(timeout)
        if not self._closed.is_set():
            with contextlib.suppress(OSError):  # a writer that died: its listener says why
                writer.send(Op.DROPPED, self.frames_dropped)
                writer.send(Op.MISSED, self.frames_missed)
                writer.send(Op.FINISH, -1 if keep is None else keep)
            if not self._closed.wait(timeout):
                writer.kill()
                self._closed.wait(timeout)
                self._fail(StreamError(f"writer did not finish {self.path} in {timeout} s"))
        writer.file_done()
        if self._ended_early is not None and self._finished:
            # The writer closed the file as whole; it is not: the camera stopped short.
            self._record_early_end(self.frames_written, self._ended_early)
        if self._own_writer:
            writer.shutdown()
        self.ring = None  # the writer's now: another run may use it
        summary = StreamSummary(
            self.path,
            self.frames_acquired,
            self.frames_written,
            self.frames_dropped,
            self.frames_missed,
        )
        if self.error is not None:
            raise self.error
        return summary

    def _recover(self, why: str) -> int | None:
        """After the writer failed: clear the open-for-write flag so plain readers open the
        file and return how many frames it holds. If the writer died without a word (killed),
        record that in the file; one that reported an error (disk full) already closed what
        it could, so the file is not written again. None if the path no longer names the
        file (deleted, moved away, replaced): nothing there is touched."""
        if not names_file(self.path, self._identity):
            return None
        with contextlib.suppress(ValueError, OSError):
            clear_open_flags(self.path)
            finish_close(self.path)  # killed while closing it
        try:
            with h5py.File(self.path, "r") as f:
                saved = layout.stored_frames(f)
                measured = layout.measured_frames(f)
        except H5PY_FAILURES:  # a file the writer left unreadable (a disk full as it made it)
            return 0
        # What the file holds is what a last collect may point at: a writer that failed
        # closed it with frames written since its last status line (a disk full).
        self._written = max(self._written, saved)
        if self._stored is not None and measured is not None:
            self._stored = max(self._stored, measured)
        assert self.writer is not None
        if self.writer.died:
            self._record_early_end(saved, why)
        return saved

    def _record_early_end(self, saved: int, why: str) -> None:
        """Record in the closed file that it ended early, and why, on disk (best effort: the
        run's error says it too)."""
        outcome = layout.Outcome(
            saved, self.frames_dropped, self.frames_missed, False, why, run=self.run
        )
        with contextlib.suppress(Exception):
            outcome.store(self.path)
            fsync_path(self.path)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Stop the camera now; frames already in the ring are still written by `close`."""
        self._stop.set()
        with contextlib.suppress(CameraError):
            self.driver.stop()

    def stop_acquiring(self, timeout: float = 60) -> None:
        """`stop`, and wait for the frames already read from the camera to be in the ring."""
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def frames_taken(self) -> int:
        """Frames the camera took: in the ring, dropped, or lost by the camera itself."""
        return self.frames_acquired + self.frames_dropped + self.frames_missed

    def record_run(self, uid: str) -> None:
        """Keep in the file's outcome that its frames are of run `uid` (its start's uid):
        `recover` finds the run by it, wherever the file was moved."""
        self.run = uid
        with contextlib.suppress(OSError):  # a writer that died: its listener says why
            self._require_writer().send_run(uid)

    def allow(self, frames: int) -> int:
        """Take the next `frames` frames for one point (a gated stream records just those);
        returns the acquisition index of the first, for `frame_info`."""
        if not self._owes_frames():  # frames owed from now on
            self._last_frame_at = time.monotonic()
        if self._gate is None:
            self._asked = max(self._asked, self.frames_taken) + frames
            return self.frames_acquired
        first = max(self._gate, self.frames_acquired)
        self._gate = first + frames
        if self._thread is None and not self.stopped:
            self._start_camera()
        return first

    @property
    def frame_interval(self) -> float | None:
        """The median seconds between recent frames of consecutive numbers, on the camera's
        clock (None before two): what the camera did, whatever it was asked."""
        if len(self._info) < 2:
            return None
        numbers, times = np.array(self._info).T
        consecutive = np.diff(numbers) == 1
        return float(np.median(np.diff(times)[consecutive])) if consecutive.any() else None

    def end_at(self, frames: int) -> int:
        """Take no frame past the first `frames` (or past those taken already): a timed
        movie's time is up, and what its camera lost meanwhile counts up to there. Returns
        the frames it ends at."""
        with self._lock:
            self._gate = max(frames, self.frames_taken)
            return self._gate

    def covers(self, seconds: float) -> bool:
        """Whether the frames read reach `seconds` past the first one recorded, on the
        camera's clock or by its counter at its frame interval: a timed movie's frames are
        then all in the ring or counted lost (a camera counts a loss at the next frame), also
        those it buffered while writing fell behind."""
        if self._first_info is None or not self._info:
            return False
        (first, first_at), (last, last_at) = self._first_info, self._info[-1]
        interval = self.driver.settings.frame_interval
        return last_at - first_at >= seconds - 1.5 * interval or (
            (last - first + 1) * interval >= seconds - 0.5 * interval
        )

    def frame_info(self, index: int) -> tuple[int, float]:
        """(camera frame number, camera timestamp) of the `index`-th frame recorded."""
        first = self.frames_acquired - len(self._info)
        if not first <= index < self.frames_acquired:
            raise IndexError(f"frame {index} is not among the last {len(self._info)} recorded")
        return self._info[index - first]

    def frame_stats(self, start: int, stop: int) -> np.ndarray:
        """Statistics of the file's frames [start, stop): (frames, regions, `stats.STATS`),
        the whole frame's region first. Only frames already reported written."""
        with self._lock:
            return self._stats.get(start, stop, self.path)

    def truncate(self, frames: int, timeout: float = 30) -> None:
        """Cut the file to its first `frames` frames now; returns once the writer has.

        Only while no frames are on their way (the camera idle): later frames follow on.
        """
        writer = self._require_writer()
        if self.error is not None:
            raise self.error
        with self._truncated:
            self._truncated_to = None
            try:
                writer.send(Op.TRUNCATE, frames)
            except OSError:  # the writer is gone: its listener says why, once it has seen it
                writer.ended.wait(timeout)
                raise self.error or StreamError(f"the writer of {self.path} is gone") from None
            if not self._truncated.wait_for(
                lambda: self._truncated_to == frames or self.error, timeout
            ):
                raise StreamError(f"writer did not cut {self.path} to {frames} frames")
        with self._lock:
            self._file_frames = min(frames, self._file_frames)
            # The cut frames' statistics go too: a frame retaken at the same index is waited
            # for until its own are known, never answered with those of the frame it replaced.
            self._stats.cut(frames)
        if self.error is not None:
            raise self.error

    def wait_settled(self, timeout: float) -> None:
        """After `stop`: return once every frame in the ring is in the file, with its
        statistics (a cut file's count: frames cut off by `truncate` never will be). After a
        camera failure the writer goes on, so its frames are waited for too (a movie's last
        page then points at them), before the failure is raised."""
        deadline = time.monotonic() + timeout
        target = self._file_frames
        self._ask_flush(target, Op.SETTLE)
        while self.frames_readable < target and self._writing():
            if time.monotonic() > deadline:
                raise StreamError(
                    f"only {self.frames_readable} of {target} frames reached "
                    f"{self.path} with their statistics in {timeout} s"
                )
            time.sleep(0.01)
        if self.error is not None:
            raise self.error

    # -- waiting for frames -------------------------------------------------------------------
    def wait(self, count: int, timeout: float | None = None) -> None:
        """Block until `wait_for(count)` would call back: raise its error, or TimeoutError."""
        done = threading.Event()
        errors: list[BaseException | None] = []

        def called_back(error: BaseException | None) -> None:
            errors.append(error)
            done.set()

        self.wait_for(count, called_back)
        if not done.wait(timeout):
            raise TimeoutError(
                f"{self.frames_written} of {count} frames in {self.path} after {timeout} s"
            )
        if errors[0] is not None:
            raise errors[0]

    def wait_for(self, count: int, callback: Callable[[BaseException | None], None]) -> None:
        """Call `callback(None)` once the camera has taken `count` frames and those that were
        not lost are in the file and flushed, so they survive even a killed writer (the
        caller checks the loss counters), or `callback(error)` when the stream fails first."""
        with self._lock:
            if self.error is None and self._settled < count:
                self._waiters.append((count, callback))
                target = count - self.frames_dropped - self.frames_missed
                if self._file_frames < target:
                    # Sent with the frame that brings the file to it: one write, one wake-up
                    # of the writer.
                    self._flush_with_frame = max(target, self._flush_with_frame)
                else:
                    self._ask_flush(target)
                return
            error = self.error
        callback(error if self._settled < count else None)

    @property
    def _settled(self) -> int:
        """Frames taken whose fate is known: flushed to the file (and measured), dropped or
        missed."""
        return min(
            self.frames_written + self.frames_dropped + self.frames_missed, self.frames_taken
        )

    def _notify(self) -> None:
        taken = self._settled
        with self._lock:
            done = [w for w in self._waiters if w[0] <= taken]
            self._waiters = [w for w in self._waiters if w[0] > taken]
        for _, callback in done:
            callback(None)

    def _fail(self, error: StreamError) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
            waiters, self._waiters = self._waiters, []
        self.stop()
        for _, callback in waiters:
            callback(self.error)

    # -- the two threads ----------------------------------------------------------------------
    def _watch_writer(self) -> None:
        """Until the file is closed: kill a writer that says nothing for `stall_timeout`
        seconds while frames wait for it (stopped, or writing to a disk that does not
        answer), which would hold every trigger, and so the plan, for ever. The run then
        fails as for any writer that died, saying why."""
        timeout = self.options.stall_timeout
        self._heard = time.monotonic()
        while not self._closed.wait(min(1.0, timeout / 4)):
            waiting = self._file_frames > self._written  # sent to the file, not flushed
            if waiting and time.monotonic() - self._heard > timeout and self.error is None:
                self._stalled = timeout
                self._require_writer().kill()
                return

    def _on_writer_status(self, status: WriterStatus) -> None:
        self._heard = time.monotonic()
        if "stats" in status:  # before the waiters for these frames are woken
            assert self.regions is not None  # a writer measures only a file with them
            values = decode_stats(status["stats"], 1 + len(self.regions))
            with self._lock:
                self._stats.keep(status["stats_from"], values)
        self._written = status.get("written", self._written)
        self._stored = status.get("stored", self._stored)
        if self.ring is not None:
            self.ring.header[Header.WRITTEN] = self._written
        # Progress is told before the waiters are woken: a waiter (a RunEngine's next step)
        # then runs on without this thread's bookkeeping beside it.
        if self._on_progress is not None:
            self._on_progress(self)
        if status["state"] == State.OPEN:
            self._opened.set()
        elif status["state"] == State.CLOSED:
            self._finished = True
            self._closed.set()
            self._notify()
        elif status["state"] == State.ERROR:
            why = status["error"]
            if self._stalled is not None:
                why = (
                    f"writer process (pid {self._require_writer().pid}) said nothing for "
                    f"{self._stalled:g} s while frames waited for it (stopped, or its disk "
                    "does not answer) and was killed"
                )
            saved = self._recover(why)
            acquired = self.frames_acquired
            held = (
                f"{self.path} holds the first {saved} frames of {acquired} acquired"
                if saved is not None
                else f"Nothing at {self.path} is this run's file any more; {self._written} of "
                f"the {acquired} frames acquired were written into it"
            )
            self._fail(StreamError(f"{why}. {held}."))
        else:
            self._notify()
        if status["state"] == State.ERROR:
            self._closed.set()
        if "truncated" in status or status["state"] == State.ERROR:
            with self._truncated:
                self._truncated_to = status.get("truncated")
                self._truncated.notify_all()

    def _acquire(self) -> None:
        ring, writer = self.ring, self._require_writer()
        assert ring is not None  # open() made it before starting this thread
        n_slots, header = ring.spec.n_slots, ring.header
        unrecorded = -1  #: the slot of the last frame read and not recorded
        try:
            while not self._stop.is_set():
                passed = self._base + self.frames_acquired  # frames through the ring so far
                room = passed - ring.released < n_slots
                if not room and self.options.overflow == "block" and self._recording():
                    time.sleep(0.0005)  # the camera buffers (or misses) meanwhile
                    # Not read meanwhile, the camera is not silent: the writer is behind.
                    self._last_frame_at = time.monotonic()
                    continue
                slot = passed % n_slots
                # A frame that may not be recorded lands beside the last one that was not,
                # while a live view watches: that one stays whole for the view meanwhile.
                target = slot if room else ring.preview
                if target == unrecorded and room and ring.watched and not self._recording():
                    target = ring.preview
                try:
                    info = ring.land(target, lambda out: self.driver.read_into(out, 0.1))
                except TimeoutError:
                    if self._owes_frames() and self.silent_for > self._silence_limit():
                        self.camera_silent()
                    continue
                # Decide once the frame is here: a gate opened while we waited counts.
                if not self._recording():
                    unrecorded = target
                    continue
                if unrecorded < 0:  # frames lost between triggers were never to be recorded
                    # Those the gate's count still takes: lost within it. Where they fill it,
                    # this frame came after it, as a movie of N frames takes N frames.
                    room_in_gate = 2**62 if self._gate is None else self._gate - self.frames_taken
                    self.frames_missed += min(info.missed_before, room_in_gate)
                    header[Header.MISSED] = self.frames_missed
                    if not self._recording():
                        unrecorded = target
                        continue
                self._last_frame_at = time.monotonic()  # kept or dropped: the camera sends
                if not room:
                    self.frames_dropped += 1
                    header[Header.DROPPED] = self.frames_dropped
                    self._notify()
                    continue
                if target != slot:  # it landed in the preview slot as the gate opened
                    ring.landing(slot)
                    ring.slot(slot)[...] = ring.slot(target)
                    ring.landed(slot, info.frame_number, info.camera_timestamp)
                unrecorded = -1
                self._info.append((info.frame_number, info.camera_timestamp))
                if self._first_info is None:
                    self._first_info = self._info[-1]
                with self._lock:
                    self.frames_acquired += 1
                    self._file_frames += 1
                    flush = 0
                    if 0 < self._flush_with_frame <= self._file_frames:
                        flush, self._flush_with_frame = self._flush_with_frame, 0
                header[Header.ACQUIRED] = self.frames_acquired
                writer.send_frame(slot, flush)
        except CameraError as exc:
            if not self._stop.is_set():
                self._ended_early = f"camera failed: {exc}"
                self._fail(StreamError(f"{self._ended_early}. {self._kept()}"))
        except OSError as exc:  # the writer's pipe broke: it died; its listener says why
            if not self._stop.is_set():
                writer.ended.wait(5)
                self._fail(StreamError(f"writer lost ({exc}). {self._saved()}"))
        except Exception as exc:  # any other fault here (a driver's bug): no one waits forever
            self._ended_early = f"acquisition failed: {exc!r}"
            self._fail(StreamError(f"{self._ended_early}. {self._kept()}"))

    @property
    def silent_for(self) -> float:
        """Seconds since the camera last sent a frame to record (or since frames were first
        owed: the camera started, a point triggered), or since a full ring last kept it
        from being read."""
        return time.monotonic() - self._last_frame_at

    def _silence_limit(self) -> float:
        """How long a camera owing frames may send none before it counts as stopped: one
        on an external trigger waits for its pulses; others send one a frame interval."""
        settings = self.driver.settings
        if TriggerMode.coerce(settings.trigger_mode) is TriggerMode.EXTERNAL:
            return float("inf")
        return SILENCE_SECONDS + 20 * settings.frame_interval

    def camera_silent(self) -> None:
        """Fail the stream: the camera stopped sending frames without a word (restarted, or
        its link lost the stream), where frames are owed; the writer keeps those taken."""
        self._ended_early = (
            f"the camera sent no frame for {self.silent_for:.1f} s while it owed frames (it "
            f"sends one every {self.driver.settings.frame_interval:g} s): it stopped "
            "sending (restarted, or its link lost the stream)"
        )
        self._fail(StreamError(f"{self._ended_early}. {self._kept()}"))

    def _ask_flush(self, frames: int, op: Op = Op.FLUSH) -> None:
        """Have the writer flush once the file holds `frames` frames (someone waits)."""
        with contextlib.suppress(OSError):  # a writer that died: its listener says why
            self._require_writer().send(op, frames)

    def _require_writer(self) -> WriterProcess:
        if self.writer is None:
            raise StreamError(f"the stream of {self.path} was never opened")
        return self.writer

    def _writing(self) -> bool:
        """The writer still takes what the ring holds: no failure, or the camera's."""
        return self.error is None or (self._ended_early is not None and not self._closed.is_set())

    def _recording(self) -> bool:
        """Frames are still to be taken for the gate: those dropped or missed count as
        taken, as they do for `complete` (no frame past a movie's count is taken)."""
        return self._gate is None or self.frames_taken < self._gate

    def _owes_frames(self) -> bool:
        """The camera owes frames: the gate's are still to come, or without one (a software
        trigger's), those asked for. A camera asked for none may send none for as long as a
        plan waits between its points."""
        if self._gate is None:
            return self.frames_taken < self._asked
        return self._recording()

    def _kept(self) -> str:
        """The writer goes on: every frame taken reaches the file."""
        return f"{self.path} keeps the {self.frames_acquired} frames taken before"

    def _saved(self) -> str:
        return f"{self.path} holds {self.frames_written} of {self.frames_acquired} frames"


class KeptStats:
    """Frames' statistics as the writer reported them: the blocks its status lines carried,
    (frames, regions, `stats.STATS`) each, from file index `first`, back to at least the
    STATS_KEPT most recent frames. A point's frames came in one line (a step scan flushes
    for each point), so their statistics are one block's rows: a view, no copy."""

    def __init__(self) -> None:
        self._blocks: deque[tuple[int, np.ndarray]] = deque()  #: (first, values)

    def _end(self) -> int:
        first, values = self._blocks[-1]
        return first + len(values)

    def keep(self, start: int, values: np.ndarray) -> None:
        """Keep the statistics of frames from file index `start` on: after a truncation,
        they replace those of the frames cut at the same indices; after a gap (a writer
        that restarted its reports), they start afresh."""
        self.cut(start)
        if self._blocks and self._end() != start:
            self._blocks.clear()
        self._blocks.append((start, values))
        while len(self._blocks) > 1 and self._end() - self._blocks[1][0] >= STATS_KEPT:
            self._blocks.popleft()  # the rest hold enough

    def cut(self, frames: int) -> None:
        """Forget those of the frames from file index `frames` on."""
        blocks = self._blocks
        while blocks and blocks[-1][0] >= frames:
            blocks.pop()
        if blocks and self._end() > frames:
            first, values = blocks[-1]
            blocks[-1] = (first, values[: frames - first])

    def get(self, start: int, stop: int, path: object) -> np.ndarray:
        """Those of frames [start, stop), or IndexError naming the file at `path`."""
        pieces = []
        end = self._end() if self._blocks else 0
        if stop <= end:
            for first, values in reversed(self._blocks):
                if first < stop:
                    pieces.append(values[max(start - first, 0) : stop - first])
                if first <= start:
                    return stats.joined(pieces[::-1])
        known = f"{self._blocks[0][0]}..{end - 1}" if self._blocks else "none"
        raise IndexError(
            f"statistics of frames {start}..{stop - 1} of {path} are not known (known: {known})"
        )
