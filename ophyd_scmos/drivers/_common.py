"""What every driver shares: one settings check, one buffer check, and `DriverBase`.

SDKs disagree on what they refuse (Micro-Manager and Aravis both accept an exposure or a ROI
the camera cannot do, and quietly ignore or clamp it), so every driver, the simulated one too,
checks every value here, against the limits its camera reports, before anything reaches the
camera: a setting the simulator takes is one a real camera takes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from numbers import Integral, Real
from typing import Any

import numpy as np

from .base import ROI, CameraSettings, TriggerMode


class MissingLibrary(ImportError):
    """A driver's SDK is not installed; the message says what to install."""


def coerce_trigger_mode(settings: CameraSettings) -> CameraSettings:
    """Accept the string value of a `TriggerMode` ("software"), as `SimulatedSCMOS` does."""
    if isinstance(settings.trigger_mode, TriggerMode):
        return settings
    try:
        return replace(settings, trigger_mode=TriggerMode(settings.trigger_mode))
    except ValueError:
        allowed = [m.value for m in TriggerMode]
        raise ValueError(
            f"trigger_mode must be one of {allowed}; got {settings.trigger_mode!r}"
        ) from None


def check_settings(
    s: CameraSettings,
    sensor_shape: tuple[int, int],
    *,
    exposure_range: tuple[float, float],
    binnings: tuple[int, ...],
    bit_depths: tuple[int, ...],
) -> ROI:
    """Raise ValueError naming the first bad value; return the ROI (None means the full sensor).

    `exposure_range` is in seconds; `binnings` and `bit_depths` are what this camera can do
    among those the package supports.
    """
    lo, hi = exposure_range
    exp = s.exposure_time
    if not (isinstance(exp, Real) and math.isfinite(exp) and exp > 0 and lo <= exp <= hi):
        raise ValueError(f"exposure_time must be > 0 and within [{lo:g}, {hi:g}] s; got {exp!r}")
    per = s.acquire_period
    if not (isinstance(per, Real) and math.isfinite(per) and per >= 0):
        raise ValueError(f"acquire_period must be finite and >= 0 s; got {per!r}")
    if s.binning not in binnings:
        raise ValueError(f"binning must be one of {binnings} on this camera; got {s.binning!r}")
    if s.bit_depth not in bit_depths:
        raise ValueError(
            f"bit_depth must be one of {bit_depths} on this camera; got {s.bit_depth!r}"
        )
    roi = s.roi if s.roi is not None else ROI.full(sensor_shape)
    rows, cols = sensor_shape
    if not all(isinstance(v, Integral) for v in roi.as_tuple()):
        raise ValueError(f"roi values must be integers; got {roi.as_tuple()}")
    if roi.x < 0 or roi.y < 0:
        raise ValueError(f"roi origin must be >= 0; got x={roi.x}, y={roi.y}")
    if roi.width < 1 or roi.height < 1:
        raise ValueError(f"roi size must be positive; got {roi.width}x{roi.height}")
    if roi.x + roi.width > cols or roi.y + roi.height > rows:
        raise ValueError(
            f"roi {roi.as_tuple()} (x, y, width, height) exceeds the {cols}x{rows} sensor: "
            f"need x + width <= {cols} and y + height <= {rows}"
        )
    # Cameras place a binned ROI in binned pixels, so its origin must fall on a bin too.
    b = s.binning
    off = [f"{name}={v}" for name, v in asdict(roi).items() if v % b]
    if off:
        raise ValueError(
            f"roi {roi.as_tuple()} (x, y, width, height) must be divisible by binning {b} "
            f"on this camera; {', '.join(off)} {'is' if len(off) == 1 else 'are'} not"
        )
    return roi


def check_out(out: np.ndarray, frame_shape: tuple[int, int]) -> None:
    """The caller's buffer must take one frame as it is: uint16, `frame_shape`."""
    if not isinstance(out, np.ndarray) or out.dtype != np.uint16:
        raise ValueError(f"out must be a uint16 ndarray; got {getattr(out, 'dtype', out)!r}")
    if out.shape != frame_shape:
        raise ValueError(f"out must have shape {frame_shape}; got {out.shape}")


class DriverBase:
    """The parts of `CameraDriver` every driver does the same way, so a driver holds only what
    its camera needs.

    Subclasses keep `_model`, `_sensor` and `_settings` current (the SDK drivers learn them at
    `open`), set `_running` in `start`/`stop`, count `_missed_total`, and define
    `_require_open`. The `_require_*` and `_check_trigger` helpers run with the driver's lock
    held.
    """

    def __init__(self, model: str, sensor_shape: tuple[int, int] = (0, 0)) -> None:
        self._model = model
        self._sensor = sensor_shape
        self._settings = CameraSettings()
        self._running = False
        self._missed_total = 0

    @property
    def model(self) -> str:
        return self._model

    @property
    def sensor_shape(self) -> tuple[int, int]:
        return self._sensor

    @property
    def settings(self) -> CameraSettings:
        return self._settings

    @property
    def frame_shape(self) -> tuple[int, int]:
        roi = self._roi_of(self._settings)
        b = self._settings.binning
        return (roi.height // b, roi.width // b)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16)

    @property
    def missed_frames(self) -> int:
        """Frames the camera lost since the last `start` (see the driver for what counts)."""
        return self._missed_total

    def _roi_of(self, settings: CameraSettings) -> ROI:
        """The ROI `settings` ask for, the full sensor where they give None."""
        return settings.roi if settings.roi is not None else ROI.full(self._sensor)

    def _require_open(self) -> Any:
        """The open camera's handle; CameraError if it is closed."""
        raise NotImplementedError

    def _require_stopped(self, refusal: str) -> Any:
        """The open camera's handle, for `configure` and `start`; RuntimeError while acquiring."""
        handle = self._require_open()
        if self._running:
            raise RuntimeError(f"{refusal}; call stop() first")
        return handle

    def _check_trigger(self, frames: int, mode: TriggerMode, caller: str) -> None:
        """Refuse a request for `frames` triggered frames the camera cannot take now."""
        if frames < 0:
            raise ValueError(f"frames must be >= 0; got {frames!r}")
        self._require_open()
        if not self._running:
            raise RuntimeError(f"{caller} before start()")
        current = self._settings.trigger_mode
        if current is not mode:
            raise RuntimeError(
                f"{caller} needs trigger_mode {mode.value!r}; camera is in {current.value!r}"
            )
