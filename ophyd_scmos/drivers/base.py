"""The camera driver contract: what the pipeline and the Device need from any camera.

A driver knows its sensor and its SDK, nothing of HDF5 or ophyd. It reads frames INTO buffers
the caller owns (a shared-memory ring slot), so a frame is copied at most once on its way to
disk.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


class TriggerMode(str, enum.Enum):
    """How the camera decides when to take a frame."""

    SOFTWARE = "software"  #: one frame per requested trigger (``software_trigger(n)``)
    INTERNAL = "internal"  #: free run at the acquire period until stopped
    EXTERNAL = "external"  #: one frame per pulse on the camera's trigger input

    @classmethod
    def coerce(cls, value: object) -> TriggerMode:
        """The mode `value` names: a `TriggerMode` or its string value, as users type it."""
        try:
            return cls(value)
        except ValueError:
            allowed = [mode.value for mode in cls]
            raise ValueError(f"trigger_mode {value!r} is not one of {allowed}") from None


@dataclass(frozen=True)
class ROI:
    """A region of interest in unbinned sensor pixels: origin (x, y) and size (width, height)."""

    x: int
    y: int
    width: int
    height: int

    @classmethod
    def full(cls, sensor_shape: tuple[int, int]) -> ROI:
        return cls(0, 0, sensor_shape[1], sensor_shape[0])

    @classmethod
    def centered(cls, sensor_shape: tuple[int, int], height: int, width: int) -> ROI:
        rows, cols = sensor_shape
        return cls((cols - width) // 2, (rows - height) // 2, width, height)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.width, self.height)

    def binned(self, binning: int) -> tuple[int, int, int, int]:
        """(x, y, width, height) in binned pixels, as camera SDKs count a region."""
        return (self.x // binning, self.y // binning, self.width // binning, self.height // binning)


@dataclass(frozen=True)
class CameraSettings:
    """Everything that shapes the frames a camera delivers; drivers validate it in `configure`."""

    exposure_time: float = 0.01  #: seconds
    acquire_period: float = 0.0  #: seconds between frame starts; 0 means as fast as exposure allows
    roi: ROI | None = None  #: None means the full sensor
    binning: int = 1  #: square binning factor (1, 2, 4)
    bit_depth: int = 16  #: 12 or 16 significant bits, stored in uint16
    trigger_mode: TriggerMode = TriggerMode.SOFTWARE

    @property
    def frame_interval(self) -> float:
        """Seconds between frames in free run: the period, but never shorter than the exposure."""
        return max(self.exposure_time, self.acquire_period)


@dataclass(frozen=True)
class CameraLimits:
    """What one camera can do, as its SDK reports it: `configure` refuses anything else before
    a value reaches the camera (SDKs tend to clamp or ignore what they cannot do)."""

    exposure_range: tuple[float, float]  #: seconds, inclusive
    period_range: tuple[float, float]  #: seconds, inclusive; an acquire_period of 0 is always taken
    binnings: tuple[int, ...]  #: among 1, 2, 4
    bit_depths: tuple[int, ...]  #: among 12, 16
    #: trigger modes this camera cannot take, each with why, shown after "trigger_mode 'mode' "
    refused_trigger_modes: Mapping[TriggerMode, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FrameInfo:
    """What a camera says about one frame it delivered."""

    frame_number: int  #: the camera's counter since `start`; a gap means missed frames
    camera_timestamp: float  #: seconds since `start` on the camera's clock
    missed_before: int = field(default=0)  #: frames the camera lost just before this one


class CameraError(RuntimeError):
    """The camera failed or disappeared during acquisition."""


@runtime_checkable
class CameraDriver(Protocol):
    """A camera the pipeline can drive. Implementations: `SimulatedSCMOS`, SDK adapters."""

    @property
    def model(self) -> str:
        """Maker and model, recorded in each run's configuration."""
        ...

    @property
    def sensor_shape(self) -> tuple[int, int]:
        """(rows, columns) of the full, unbinned sensor."""
        ...

    @property
    def settings(self) -> CameraSettings: ...

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(rows, columns) of delivered frames, after ROI and binning."""
        ...

    @property
    def dtype(self) -> np.dtype: ...

    def open(self) -> None: ...

    def close(self) -> None:
        """Release the camera; safe to call twice."""
        ...

    def configure(self, settings: CameraSettings) -> None:
        """Apply settings, or raise ValueError naming the bad value, before any frame is taken."""
        ...

    def start(self) -> None:
        """Arm the camera: frame numbers restart at 0."""
        ...

    def stop(self) -> None: ...

    def software_trigger(self, frames: int = 1) -> None:
        """Ask for `frames` more frames (software trigger mode)."""
        ...

    def read_into(self, out: np.ndarray, timeout: float) -> FrameInfo:
        """Block until the next frame, copy it into `out` (C-contiguous, `frame_shape`,
        uint16); TimeoutError if none in `timeout` s."""
        ...
