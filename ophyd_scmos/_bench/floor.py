"""The floor under a step scan's pace: the least a device can do and keep our guarantee.

A step's trigger completes only once another process has written its frame into the run's
HDF5 file and flushed it for SWMR readers. `FloorDetector` does that and nothing else: its
trigger queues an AD_HDF5 Datum, as ours does, and asks its writer (``python -m
ophyd_scmos._bench.floor``, started at the first stage and kept across runs) for one more
frame; one thread completes the status on each answer. No camera, no ring, no frame copy, no
per-frame metadata, no statistics: `SCMOSCamera` beside it in one run shows what our
pipeline adds to what the guarantee itself costs on the machine.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from ophyd import Component, Device, Signal
from ophyd.status import DeviceStatus

from ophyd_scmos.documents import AssetDocs
from ophyd_scmos.pipeline import layout
from ophyd_scmos.pipeline.process import STATUS_THREAD

DTYPE = np.dtype("<u2")


def stored_frame(shape: tuple[int, int]) -> np.ndarray:
    """The one frame the floor's writer stores at every step (seeded)."""
    return np.random.default_rng(0).integers(100, 4000, shape, dtype=DTYPE)


class FloorDetector(Device):
    """An ophyd detector whose trigger waits for another process to write and flush a frame."""

    image = Component(Signal, value="", kind="normal")
    frame_number = Component(Signal, value=-1, kind="normal")

    def __init__(self, *, name: str, shape: tuple[int, int], write_dir: Path, **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.shape, self.write_dir = shape, Path(write_dir)
        self._writer: subprocess.Popen[bytes] | None = None
        self._listener: threading.Thread | None = None
        self._pending: deque[DeviceStatus] = deque()
        self._docs: AssetDocs | None = None
        self._runs = self._point = 0

    def stage(self) -> list[object]:
        if self._writer is None:
            self._writer = subprocess.Popen(
                [sys.executable, "-m", __name__, *map(str, self.shape)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
            )
            self._listener = threading.Thread(
                target=self._listen, args=(self._writer,), name=STATUS_THREAD
            )
            self._listener.start()
        self.write_dir.mkdir(parents=True, exist_ok=True)
        self._runs += 1
        path = self.write_dir / f"floor-{self._runs:05d}.h5"
        self._docs, self._point = AssetDocs(path, self.write_dir), 0
        self._send(f"open {path}")
        return super().stage()

    def unstage(self) -> list[object]:
        if self._docs is not None:
            self._send("close")
            self._docs = None
        return super().unstage()

    def destroy(self) -> None:
        if self._writer is not None and self._listener is not None:
            with self._writer:  # closes its pipes once it has ended
                assert self._writer.stdin is not None
                self._writer.stdin.close()
                self._listener.join()  # the writer's stdout ended: it has
            self._writer = None
        super().destroy()

    def trigger(self) -> DeviceStatus:
        assert self._docs is not None, "stage first"
        self.image.put(self._docs.datum(self._point, 1))
        self._point += 1
        status = DeviceStatus(self)
        self._pending.append(status)
        self._send("frame")
        return status

    def describe(self) -> dict[str, dict]:
        description = super().describe()
        description[self.image.name].update(
            dtype="array", dtype_numpy=DTYPE.str, shape=[1, *self.shape], external="FILESTORE:"
        )
        return description

    def collect_asset_docs(self) -> Any:
        if self._docs is not None:
            docs = self._docs.drain()
            self._docs.saved()  # no pause, no rewind here: every event is saved
            yield from docs

    def _send(self, line: str) -> None:
        assert self._writer is not None and self._writer.stdin is not None
        self._writer.stdin.write(f"{line}\n".encode())

    def _listen(self, writer: subprocess.Popen[bytes]) -> None:
        """Each answer is one more frame flushed: its trigger's status is done."""
        assert writer.stdout is not None
        for answer in writer.stdout:
            self.frame_number.put(int(answer))
            self._pending.popleft().set_finished()
        while self._pending:
            self._pending.popleft().set_exception(RuntimeError("the floor's writer ended"))


def main(rows: int, cols: int) -> None:
    """The writer: `open PATH`, then `frame` per step (answered with the frames flushed),
    `close`; stdin's end ends it."""
    import h5py

    shape = (rows, cols)
    chunk = stored_frame(shape).tobytes()
    file = data = None
    for line in sys.stdin:
        command, _, argument = line.rstrip("\n").partition(" ")
        if command == "open":
            file = h5py.File(argument, "x", libver="latest")
            data = file.create_dataset(
                layout.DATA, (0, *shape), DTYPE, chunks=(1, *shape), maxshape=(None, *shape)
            )
            file.swmr_mode = True
        elif command == "frame":
            assert file is not None and data is not None
            n = data.shape[0]
            data.resize(n + 1, axis=0)
            data.id.write_direct_chunk((n, 0, 0), chunk)
            file.flush()
            sys.stdout.write(f"{n + 1}\n")
            sys.stdout.flush()
        elif command == "close" and file is not None:
            file.close()
            file = data = None


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
