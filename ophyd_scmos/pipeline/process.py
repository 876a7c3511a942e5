"""The acquiring process's side of a writer process: start it once, keep it warm, end it.

A camera keeps one `WriterProcess` for as long as it lives: the process start, its imports
and the first touch of a shared-memory ring are paid once, not at every run. Each run opens
its own file in it (`open_file`) and finishes it with `Op.FINISH`. A writer that died is not
reused: the next run starts another.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable

import numpy as np

from ophyd_scmos.pipeline.protocol import (
    Op,
    State,
    WriterConfig,
    WriterStatus,
    encode,
    encode_open,
    encode_run,
)
from ophyd_scmos.pipeline.ring import FrameRing

#: glibc malloc settings for the writer: every compressed chunk is a fresh frame-sized buffer,
#: which by default is a new mmap whose pages the kernel faults in and zeroes, a third of the
#: cost of compressing it. Kept in the heap, the same pages serve frame after frame.
#: BLAS on one thread: the statistics' products are small, and the writer's cores are the
#: compressors'; threaded BLAS spins up threads for each and is slower than one.
WRITER_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(2**28),
    **dict.fromkeys(("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"), "1"),
}

StatusHandler = Callable[[WriterStatus], None]
#: the name of the thread that reads a writer's status lines and completes what waits on them
STATUS_THREAD = "scmos-writer-status"

#: writer processes not yet shut down, ended at interpreter exit
_LIVE: weakref.WeakSet[WriterProcess] = weakref.WeakSet()


class WriterProcess:
    """A writer subprocess, the ring it reads, and the thread that listens to its status.

    Status lines go to the handler of the file being written (`open_file`). When the
    process ends without being asked to (killed, crashed), the handler gets an error
    status saying so, once the process is gone and the file with it.
    """

    def __init__(self) -> None:
        self._starter = os.getpid()  #: a forked child holds a copy: the writer is not its own
        self.ring: FrameRing | None = None
        self.bytes_sent = 0  #: all that crossed to the writer: slot indices, never frames
        #: threads send whole commands: a write longer than the pipe's atomic size could
        #: otherwise interleave with another's
        self._sending = threading.Lock()
        self.last: WriterStatus = {"state": State.CLOSED.value, "written": 0}
        self.died = False  #: ended while writing a file, or without saying why
        self.ended = threading.Event()
        self._handler: StatusHandler | None = None
        #: the file being opened, and its handler: lines before its open are an earlier
        #: file's (one whose close a Ctrl-C cut short), and go to no one
        self._opening: tuple[str, StatusHandler] | None = None
        self._closing = False  #: `shutdown` asked it to end
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ophyd_scmos.pipeline"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                close_fds=True,
                env={**os.environ, **WRITER_ENV},
            )
        except OSError as exc:  # out of file descriptors or processes: say what failed
            self._stderr.close()
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            raise OSError(
                exc.errno,
                f"cannot start the camera's writer process: {exc.strerror} (this process "
                f"may open {limit} files, `ulimit -n`)",
            ) from exc
        assert self.process.stdin is not None and self.process.stdout is not None
        self._stdin = self.process.stdin.fileno()
        self._listener = threading.Thread(target=self._listen, name=STATUS_THREAD, daemon=True)
        try:
            self._listener.start()  # from here on it reads, then closes, the process's output
            _LIVE.add(self)
        except BaseException:  # Ctrl-C too: no writer left running that no one holds
            self.process.kill()
            self.process.wait()
            self.process.stdin.close()
            self._stderr.close()
            if not self._listener.is_alive():
                self.process.stdout.close()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return not self.ended.is_set() and self.process.poll() is None

    @property
    def stopped(self) -> bool:
        """Stopped by a signal (SIGSTOP, SIGTSTP) or a debugger: it answers nothing until
        continued. Linux only (/proc); elsewhere False."""
        with contextlib.suppress(OSError), open(f"/proc/{self.process.pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] in ("T", "t")
        return False

    def ring_for(self, frame_shape: tuple[int, int], dtype: np.dtype, slots: int) -> FrameRing:
        """The ring for a run's frames: the one there is, or a new one if the frame shape,
        the dtype or the number of slots changed. Only between runs."""
        spec = self.ring.spec if self.ring is not None else None
        wanted = (tuple(frame_shape), np.dtype(dtype).str, slots)
        if spec is None or (spec.frame_shape, spec.dtype, spec.n_slots) != wanted:
            self.release_ring()  # the writer attaches to the new one when the file opens
            self.ring = FrameRing.create(frame_shape, dtype, slots)
        assert self.ring is not None
        return self.ring

    def open_file(self, config: WriterConfig, on_status: StatusHandler) -> None:
        """Start writing a run's file; its status lines go to `on_status` from now on."""
        self.last = {"state": "opening", "written": 0}
        self._handler = None
        self._opening = (config.path, on_status)
        self._send(encode_open(config))

    def file_done(self) -> None:
        """The run's file is closed: its status lines stop here."""
        self._handler = self._opening = None

    def send(self, op: Op, arg: int) -> None:
        self._send(encode(op, arg))

    def send_frame(self, slot: int, flush: int = 0) -> None:
        """A frame's slot, and with it a flush (of the file's first `flush` frames) where one
        is asked for: one write, so the writer wakes once for both."""
        self._send(encode(Op.FRAME, slot) + (encode(Op.FLUSH, flush) if flush else b""))

    def send_run(self, uid: str) -> None:
        """The run the file's frames are of, for the file's outcome."""
        self._send(encode_run(uid))

    def _send(self, data: bytes) -> None:
        with self._sending:
            self.bytes_sent += os.write(self._stdin, data)

    def _listen(self) -> None:
        """Pass status lines on; an error only once the process has gone (and its file with
        it), so whoever handles it may touch the file."""
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                try:
                    status: WriterStatus = json.loads(line)
                except ValueError:
                    continue
                opening = self._opening
                if opening is not None:
                    if status.get("path") != opening[0] and status["state"] != State.ERROR:
                        continue
                    self._handler, self._opening = opening[1], None
                self.last = status
                handler = self._handler
                if handler is not None and status["state"] != State.ERROR:
                    handler(status)
                # Between lines this thread holds no handler: its stream, and the camera
                # of that stream, are collected once dropped (a camera made anew in a session)
                handler = None
        self.process.wait()
        # One that reported an error (disk full) closed what it could and exited 1: its
        # own words stand, and its file is not touched again.
        writing = self.last["state"] not in (State.CLOSED, State.ERROR)
        reported = self.last["state"] == State.ERROR
        if writing or (self.process.returncode != 0 and not self._closing and not reported):
            self.died = True
            self.last = {
                "state": State.ERROR.value,
                "written": self.last.get("written", 0),
                "error": f"writer process (pid {self.pid}) died with exit code "
                f"{self.process.returncode}{self.stderr_tail()}",
            }
        handler = self._handler or (self._opening[1] if self._opening else None)
        if handler is not None and self.last["state"] == State.ERROR:
            handler(self.last)
        self.ended.set()

    def stderr_tail(self, limit: int = 2000) -> str:
        try:
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace").strip()
        except ValueError:  # closed: a start interrupted by Ctrl-C, after the listener's
            return ""
        return f"; its last words: {text[-limit:]}" if text else ""

    def shutdown(self, timeout: float = 30) -> None:
        """End the process (it closes a file still open with what it was handed) and free
        the ring. Safe to call twice. In a forked child (a camera dropped there, its exit)
        it does nothing: the writer and its ring are the parent's, and no thread of the child
        hears the writer end."""
        if os.getpid() != self._starter:
            return
        self._closing = True
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # type: ignore[union-attr]
        if not self.ended.wait(timeout):
            self.kill()
        if self.ended.is_set():  # else its listener still reads what it says
            self._stderr.close()
        self.release_ring()
        _LIVE.discard(self)

    def kill(self) -> None:
        if os.getpid() != self._starter:  # the parent's writer (see `shutdown`)
            return
        if self.process.poll() is None:
            self.process.kill()
        self.ended.wait(10)

    def release_ring(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None


@atexit.register
def _shut_down_writers() -> None:
    """At exit, end the writers still running, so their rings leave /dev/shm now."""
    for writer in list(_LIVE):
        writer.shutdown(timeout=10)
