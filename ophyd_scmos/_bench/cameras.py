"""The camera formats under test, and cameras whose frames are ready the moment they are asked."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from ophyd_scmos.drivers import CameraError, CameraSettings, FrameInfo, SimulatedSCMOS

#: exposure of the simulated frames: realistic counts, and the camera never the bottleneck
EXPOSURE = 0.001
BANK = 8  #: distinct frames a burst cycles through


@dataclass(frozen=True)
class Shape:
    """One camera format under test."""

    rows: int
    cols: int
    dtype: str  #: numpy dtype string
    label: str  #: which camera it stands for

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.cols * np.dtype(self.dtype).itemsize

    @property
    def name(self) -> str:
        return f"{self.rows}x{self.cols} {np.dtype(self.dtype).name}"


SHAPES = {
    "orca": Shape(2048, 2048, "u2", "Hamamatsu ORCA-Flash4.0 V3, 100 fps"),
    "kinetix8": Shape(3200, 3200, "u1", "Teledyne Kinetix 8-bit, 500 fps"),
}


class EightBitSCMOS:
    """SimulatedSCMOS frames as an 8-bit readout mode delivers them (values clipped at 255).

    Software trigger only, and frames are ready at once (a camera with on-board memory):
    the harness times the host side. Frame k is bank[k % BANK], drawn from the simulator.
    """

    model = "Simulated sCMOS, 8-bit mode"
    dtype = np.dtype(np.uint8)

    def __init__(self, shape: tuple[int, int], seed: int = 0):
        sim = SimulatedSCMOS(shape=shape, seed=seed)
        sim.open()
        sim.configure(CameraSettings(exposure_time=EXPOSURE))
        clipped = [np.minimum(sim.expected_frame(k), 255) for k in range(BANK)]
        self._bank = np.stack(clipped).astype(np.uint8)
        self._shape = shape
        self._cond = threading.Condition()
        self._queued = self._next = 0
        self._running = False
        self._t0 = 0.0
        self.settings = CameraSettings(exposure_time=EXPOSURE)

    @property
    def sensor_shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self._shape

    def open(self) -> None:
        """Nothing to open: the frames were drawn in __init__."""

    def close(self) -> None:
        self.stop()

    def configure(self, settings: CameraSettings) -> None:
        self.settings = settings

    def start(self) -> None:
        with self._cond:
            self._queued = self._next = 0
            self._running, self._t0 = True, time.monotonic()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()

    def software_trigger(self, frames: int = 1) -> None:
        with self._cond:
            self._queued += frames
            self._cond.notify_all()

    def read_into(self, out: np.ndarray, timeout: float) -> FrameInfo:
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._next < self._queued or not self._running, timeout
            ):
                raise TimeoutError(f"no frame within {timeout} s")
            if not self._running:
                raise CameraError("camera stopped")
            k = self._next
            self._next += 1
        np.copyto(out, self._bank[k % BANK])
        return FrameInfo(k, time.monotonic() - self._t0)

    def expected_frame(self, k: int) -> np.ndarray:
        return self._bank[k % BANK].copy()


def make_camera(shape: Shape, buffer_frames: int) -> SimulatedSCMOS | EightBitSCMOS:
    """A software-triggered camera whose on-board buffer holds the whole burst."""
    if shape.dtype == "u1":
        return EightBitSCMOS((shape.rows, shape.cols))
    cam = SimulatedSCMOS(
        shape=(shape.rows, shape.cols), seed=0, camera_buffer_frames=max(1, buffer_frames)
    )
    cam.open()
    cam.configure(CameraSettings(exposure_time=EXPOSURE))
    return cam


def bank_of(cam: SimulatedSCMOS | EightBitSCMOS) -> np.ndarray:
    """The frames a burst cycles through, for the writes that bypass the camera."""
    return np.stack([cam.expected_frame(k) for k in range(BANK)])
