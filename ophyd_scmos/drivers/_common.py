"""What every driver shares: one settings check and `DriverBase`.

SDKs disagree on what they refuse (Micro-Manager and Aravis both accept an exposure or a ROI
the camera cannot do, and quietly ignore or clamp it), so every driver, the simulated one too,
checks every value here, against the limits its camera reports, before anything reaches the
camera: a setting the simulator takes is one a real camera takes.
"""

from __future__ import annotations

import abc
import contextlib
import math
import threading
import warnings
from dataclasses import asdict, replace
from numbers import Integral, Real
from typing import Any

import numpy as np

from .base import ROI, CameraError, CameraLimits, CameraSettings, FrameInfo, TriggerMode


class MissingLibrary(ImportError):
    """A driver's SDK is not installed; the message says what to install."""


def _is_number(value: object) -> bool:
    """A real number; not a bool, which Python counts as one but no user means as one."""
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_settings(s: CameraSettings, sensor_shape: tuple[int, int], limits: CameraLimits) -> ROI:
    """Raise ValueError naming the first bad value; return the ROI (None means the full sensor).

    `s.trigger_mode` must already be a `TriggerMode` (see `TriggerMode.coerce`).
    """
    lo, hi = limits.exposure_range
    exp = s.exposure_time
    if not (_is_number(exp) and math.isfinite(exp) and exp > 0 and lo <= exp <= hi):
        raise ValueError(
            f"exposure_time must be a number of seconds > 0 within [{lo:g}, {hi:g}]; got {exp!r}"
        )
    lo, hi = limits.period_range
    per = s.acquire_period
    if not (_is_number(per) and math.isfinite(per) and (per == 0 or lo <= per <= hi)):
        raise ValueError(
            f"acquire_period must be 0 (as fast as the exposure allows) or a number of seconds "
            f"within [{lo:g}, {hi:g}] on this camera; got {per!r}"
        )
    if not (_is_integer(s.binning) and s.binning in limits.binnings):
        raise ValueError(
            f"binning must be one of {limits.binnings} on this camera; got {s.binning!r}"
        )
    if not (_is_integer(s.bit_depth) and s.bit_depth in limits.bit_depths):
        raise ValueError(
            f"bit_depth must be one of {limits.bit_depths} on this camera; got {s.bit_depth!r}"
        )
    why = limits.refused_trigger_modes.get(s.trigger_mode)
    if why is not None:
        raise ValueError(f"trigger_mode {s.trigger_mode.value!r} {why}")
    roi = s.roi if s.roi is not None else ROI.full(sensor_shape)
    if not isinstance(roi, ROI):
        raise ValueError(f"roi must be an ROI(x, y, width, height) or None; got {roi!r}")
    rows, cols = sensor_shape
    if not all(_is_integer(v) for v in roi.as_tuple()):
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


def _plain(s: CameraSettings, roi: ROI) -> tuple[CameraSettings, ROI]:
    """Checked settings as Python's own numbers: SDK bindings (SWIG's) refuse numpy's."""
    roi = ROI(*(int(v) for v in roi.as_tuple()))
    plain = replace(
        s,
        exposure_time=float(s.exposure_time),
        acquire_period=float(s.acquire_period),
        roi=None if s.roi is None else roi,
        binning=int(s.binning),
        bit_depth=int(s.bit_depth),
    )
    return plain, roi


class DriverBase(abc.ABC):
    """The parts of `CameraDriver` every driver does the same way, so a driver holds only what
    its camera needs.

    `configure`, `start`, `stop`, `close` and `read_into` are done here, in one order: the
    checks, then the driver's step (all but `read_into` under one lock, `_lock`). A driver
    supplies its camera's `CameraLimits` (in `_limits`: given to `__init__`, or set at `open`
    from what the SDK reports), `_apply` (settings onto the camera) and `_read` (one frame into
    the caller's buffer), and the SDK calls for `open`, `_start`, `_stop`, `_close`,
    `software_trigger` and `_require_open`. It keeps `_model`, `_sensor` current and counts
    `_missed_total` as frames go missing. See docs/drivers.md.
    """

    def __init__(
        self,
        model: str,
        sensor_shape: tuple[int, int] = (0, 0),
        limits: CameraLimits | None = None,
    ) -> None:
        self._model = model
        self._sensor = sensor_shape
        self._limits = limits
        self._settings = CameraSettings()
        self._running = False
        self._missed_total = 0
        # Reentrant: a step that calls back into the driver (close -> stop) holds it already.
        self._lock = threading.RLock()

    # -- description -------------------------------------------------------------------------

    @property
    def model(self) -> str:
        return self._model

    @property
    def sensor_shape(self) -> tuple[int, int]:
        return self._sensor

    @property
    def limits(self) -> CameraLimits:
        """What the camera can do; `configure` refuses anything else."""
        if self._limits is None:
            raise CameraError(f"{self._model}: its limits are read when it opens; call open()")
        return self._limits

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

    # -- the common work ---------------------------------------------------------------------

    def configure(self, settings: CameraSettings) -> None:
        """Check every value against `limits`, then apply; all or nothing: if the camera
        refuses part of it, the previous settings are applied again and ValueError says why."""
        with self._lock:
            self._require_stopped("cannot configure while acquiring")
            settings = replace(settings, trigger_mode=TriggerMode.coerce(settings.trigger_mode))
            roi = check_settings(settings, self._sensor, self.limits)
            settings, roi = _plain(settings, roi)
            previous = self._settings
            try:
                applied = self._apply(settings, roi)
            except RuntimeError as exc:  # SDK errors (MMCore's, GLib's) and CameraError
                with contextlib.suppress(RuntimeError):
                    self._apply(previous, self._roi_of(previous))
                raise ValueError(f"camera {self._model} refused {settings}: {exc}") from exc
            self._settings = applied

    def start(self) -> None:
        """Arm the camera: frame numbers restart at 0; in INTERNAL mode frames start coming."""
        with self._lock:
            self._require_stopped("camera already started")
            self._missed_total = 0
            self._start()
            self._running = True

    def stop(self) -> None:
        """Disarm: queued frames are dropped; a reader blocked in `read_into` gets CameraError."""
        with self._lock:
            self._running = False
            self._stop()

    def close(self) -> None:
        """Stop and release the camera; safe to call twice."""
        with self._lock:
            with contextlib.suppress(CameraError):  # a camera that is gone cannot be stopped
                self.stop()
            self._close()

    def read_into(self, out: np.ndarray, timeout: float) -> FrameInfo:
        """Block until the next frame, copy it into `out`; TimeoutError if none in `timeout` s,
        CameraError if the camera is stopped, closed or gone. Not under the lock: a reader
        waits while another thread triggers or stops the camera."""
        if not isinstance(out, np.ndarray) or out.dtype != np.uint16:
            raise ValueError(f"out must be a uint16 ndarray; got {getattr(out, 'dtype', out)!r}")
        if out.shape != self.frame_shape:
            raise ValueError(f"out must have shape {self.frame_shape}; got {out.shape}")
        if not out.flags.c_contiguous:
            raise ValueError("out must be C-contiguous, as a ring's slot is")
        return self._read(out, timeout)

    def _set_back(self, camera: str, now: dict[str, Any], recorded: dict[str, Any]) -> None:
        """Set the settings back where the camera's features (`now`) are not what they were
        set to (`recorded`), and say which: another program (a GUI sharing the SDK's handle,
        a tool) changed them since `configure`, and the run takes what its documents record."""
        changed = [
            f"{key} {now[key]} (set: {recorded[key]})" for key in now if now[key] != recorded[key]
        ]
        if changed:
            self._apply(self._settings, self._roi_of(self._settings))
            warnings.warn(
                f"camera {camera} was changed outside ophyd-scmos ({', '.join(changed)}): set "
                "back for this run, which records its settings; set them on the camera "
                "(cam.exposure_time.set(...)) to keep a change",
                RuntimeWarning,
                stacklevel=3,
            )

    # -- what a driver supplies --------------------------------------------------------------

    @abc.abstractmethod
    def open(self) -> None:
        """Connect to the camera (doing nothing if connected) and learn its sensor and limits."""

    @abc.abstractmethod
    def _apply(self, settings: CameraSettings, roi: ROI) -> CameraSettings:
        """Put checked `settings` on the camera (`roi`: theirs, the full sensor for None);
        return them as the camera took them (e.g. the exposure rounded to its clock). Raise
        RuntimeError (SDK errors mostly are) if the camera refuses: `configure` rolls back."""

    @abc.abstractmethod
    def _start(self) -> None:
        """Start acquiring with the current settings; frame numbers restart at 0."""

    @abc.abstractmethod
    def _stop(self) -> None:
        """Stop acquiring (`_running` is already False): wake a blocked `read_into`; also
        called on a stopped camera. Raise CameraError if the camera fails to stop."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release the stopped camera; also called on a closed one."""

    @abc.abstractmethod
    def software_trigger(self, frames: int = 1) -> None:
        """Ask for `frames` more frames (software trigger mode); see `_check_trigger`."""

    @abc.abstractmethod
    def _read(self, out: np.ndarray, timeout: float) -> FrameInfo:
        """`read_into` for a buffer that fits (uint16, `frame_shape`): take the lock only for
        the driver's bookkeeping, not while waiting for the frame."""

    @abc.abstractmethod
    def _require_open(self) -> Any:
        """The open camera's handle; CameraError if it is closed."""

    # -- helpers for drivers (lock held) -----------------------------------------------------

    def _roi_of(self, settings: CameraSettings) -> ROI:
        """The ROI `settings` ask for, the full sensor where they give None."""
        return settings.roi if settings.roi is not None else ROI.full(self._sensor)

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
