"""The writer process: slot indices in on stdin, frames out to one HDF5 file, status on stdout.

Run as ``python -m ophyd_scmos.pipeline.writer CONFIG_JSON`` (never through multiprocessing's
spawn, which would re-import the user's main script). Protocol:

* stdin: 16-byte records ``<q op, q arg>``: `FRAME` (arg: slot index) or `FINISH` (arg: frames
  the producer dropped). End of stdin without `FINISH` means the acquiring process is gone:
  write what was announced, close the file, exit.
* stdout: one JSON object per line: ``{"state": "open"|"progress"|"closed"|"error", ...}``
  with ``written`` (frames in the file and flushed) on every line.

The file is written in SWMR mode and flushed at least every `flush_interval` seconds, so a
reader (or a crash) always sees a consistent file holding every frame reported written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import sys
import time
from typing import Any, TextIO

import h5py
import numpy as np

from ophyd_scmos.pipeline import layout
from ophyd_scmos.pipeline.compression import dataset_options
from ophyd_scmos.pipeline.ring import FrameRing, RingSpec

RECORD = np.dtype([("op", "<i8"), ("arg", "<i8")])
FRAME, FINISH = 1, 2


class Writer:
    """Appends frames from ring slots to the file; owns nothing but the open file."""

    def __init__(self, config: dict[str, Any], status: TextIO):
        self.path = config["path"]
        self.ring = FrameRing.attach(RingSpec.from_json(config["ring"]))
        self.flush_interval = float(config.get("flush_interval", 0.5))
        self.status = status
        self.written = 0  # frames in the file
        self.flushed = 0  # frames in the file and flushed
        self.released = self.ring.released
        self.file = h5py.File(self.path, "w-", libver="latest")
        spec = self.ring.spec
        self.data = layout.create_layout(
            self.file,
            spec.frame_shape,
            spec.dtype,
            compression=dataset_options(config.get("compression")),
            attrs=config.get("attrs"),
        )
        self.meta = [
            self.file[p] for p in (layout.FRAME_NUMBER, layout.TIMESTAMP, layout.HOST_TIMESTAMP)
        ]
        self.direct = not config.get("compression")  # raw chunks: write the slot bytes as-is
        self.file.swmr_mode = True
        self.last_flush = time.monotonic()

    def report(self, state: str, **extra: Any) -> None:
        send(self.status, {"state": state, "written": self.flushed, **extra})

    def write_frames(self, slots: np.ndarray) -> None:
        """Append the frames in `slots` (in order), then hand the slots back to the producer.

        If a write fails (disk full), the datasets are cut back to the frames that made it, so
        the file never claims a frame it does not hold.
        """
        start = self.written
        self.data.resize(start + len(slots), axis=0)
        done = start
        try:
            for s in slots:
                if self.direct:
                    self.data.id.write_direct_chunk((done, 0, 0), self.ring.slot(s))
                else:
                    self.data[done] = self.ring.slot(s)
                done += 1
        finally:
            if done < start + len(slots):
                self.data.resize(done, axis=0)
            ring, good = self.ring, slots[: done - start]
            sources = (ring.frame_number, ring.camera_timestamp, ring.host_timestamp)
            for ds, source in zip(self.meta, sources, strict=True):
                if ds.shape[0] < done:
                    ds.resize(-(-done // layout.METADATA_STEP) * layout.METADATA_STEP, axis=0)
                ds[start:done] = source[good]
            self.written = done
            self.released += len(good)
            ring.release_to(self.released)

    def flush(self) -> None:
        """Make written frames visible to readers and safe from a crash of this process."""
        for ds in self.meta:
            ds.resize(self.written, axis=0)
        self.file.flush()
        self.flushed = self.written
        self.last_flush = time.monotonic()
        self.report("progress")

    def finish(self, dropped: int, complete: bool) -> None:
        self.flush()
        self.file.close()
        # Attributes cannot be created in SWMR mode: record the outcome after closing.
        with h5py.File(self.path, "r+") as f:
            entry = f[layout.ENTRY]
            entry.attrs["frames_written"] = self.written
            entry.attrs["frames_dropped"] = dropped
            entry.attrs["complete"] = complete
            entry.attrs["end_time"] = time.time()
        self.ring.close()
        self.report("closed", dropped=dropped, complete=complete)

    def run(self, commands: int) -> None:
        """Serve commands until FINISH or end of input."""
        self.report("open", path=self.path)
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
                self.finish(dropped=-1, complete=False)
                return
            pending += chunk
            whole = len(pending) // RECORD.itemsize * RECORD.itemsize
            records = np.frombuffer(pending[:whole], RECORD)
            pending = pending[whole:]
            finish = np.flatnonzero(records["op"] == FINISH)
            frames = records if not len(finish) else records[: finish[0]]
            if len(frames):
                self.write_frames(frames["arg"][frames["op"] == FRAME])
            if len(finish):
                self.finish(dropped=int(records["arg"][finish[0]]), complete=True)
                return
            if time.monotonic() - self.last_flush >= self.flush_interval:
                self.flush()


def send(status: TextIO, message: dict[str, Any]) -> None:
    """One status line to the acquiring process, if it still listens: the file is what matters."""
    with contextlib.suppress(BrokenPipeError, ValueError):
        status.write(json.dumps(message) + "\n")
        status.flush()


def describe_error(exc: BaseException, path: str, written: int) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "No space left" in str(exc):
        return f"disk full writing {path} after {written} frames: {exc}"
    return f"{type(exc).__name__} writing {path} after {written} frames: {exc}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = json.loads(argv[0])
    # Ctrl-C in a terminal reaches the whole process group: the acquiring process decides
    # when writing stops, so this process must not die of it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    status = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt status
    writer = None
    try:
        writer = Writer(config, status)
        writer.run(sys.stdin.fileno())
        return 0
    except BaseException as exc:  # report everything, then exit nonzero
        written = writer.flushed if writer else 0
        if writer is not None:
            with contextlib.suppress(Exception):  # keep what made it, without raising again
                writer.flush()
            written = writer.flushed
            with contextlib.suppress(Exception):
                writer.file.close()
        message = describe_error(exc, config["path"], written)
        send(status, {"state": "error", "written": written, "error": message})
        print(message, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
