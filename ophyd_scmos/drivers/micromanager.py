"""Micro-Manager cameras through pymmcore-plus: one driver for most sCMOS cameras in labs.

Micro-Manager's device adapters already speak to Hamamatsu (DCAM), Andor (SDK3), PCO and
Teledyne Photometrics (PVCAM) cameras, so this driver reaches them all through MMCore's sequence
acquisition: the adapter's thread fills MMCore's circular buffer and `read_into` pops frames
from it.

Frame numbers come from MMCore's per-sequence ``ImageNumber`` tag. When a slow reader lets the
circular buffer fill, MMCore raises its overflow flag and the adapter clears the buffer and
carries on (we never ask it to stop on overflow); the frames cleared away leave a gap in the
image numbers, and that gap is what `FrameInfo.missed_before` reports. An adapter that stops
at overflow instead ends the acquisition: `read_into` then raises `CameraError` naming the flag.

Software trigger mode runs one finite sequence per `software_trigger(n)` call (queued while the
previous one drains, because starting a sequence clears the buffer). Camera timestamps are the
adapter's ``ElapsedTime-ms`` (time since its sequence started) plus when that sequence started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ._common import DriverBase, MissingLibrary
from .base import ROI, CameraError, CameraLimits, CameraSettings, FrameInfo, TriggerMode

__all__ = ["MicroManagerCamera", "list_cameras"]

INSTALL = (
    "the Micro-Manager driver needs pymmcore-plus: pip install 'ophyd-scmos[micromanager]', "
    "then device adapters for your camera: `mmcore install` (or set MICROMANAGER_PATH to a "
    "Micro-Manager folder)"
)
_BINNINGS = (1, 2, 4)
_BIT_DEPTHS = (12, 16)
# s; MMCore reports no bound on a sequence's interval (and many adapters ignore it).
MAX_PERIOD = 3600.0
_POLL = 0.0005  # s between looks at the circular buffer (MMCore has no blocking pop)
_CAMERA_DEVICE_TYPE = 2  # MM::CameraDevice
# Micro-Manager's library of virtual devices: its "Multi Camera" is a camera device that
# combines other cameras, not a camera of its own.
_UTILITIES_LIBRARY = "Utilities"
_PLAUSIBLE_ELAPSED = 86400.0  # s; a larger ElapsedTime-ms is MMCore's clock, not the camera's


def _core_class() -> Any:
    # Importing pymmcore-plus sets the root logger to DEBUG: every library in the session
    # would then make a record of each debug line (each RunEngine message, each ophyd put),
    # and whoever keeps records keeps the objects they name. Its own log keeps its detail.
    root = logging.getLogger()
    level = root.level
    try:
        from pymmcore_plus import CMMCorePlus
    except ImportError as exc:
        raise MissingLibrary(f"{INSTALL} ({exc})") from exc
    if root.level != level:
        own = logging.getLogger("pymmcore-plus")
        if own.level == logging.NOTSET:
            own.setLevel(root.level)
        root.setLevel(level)
    return CMMCorePlus


@dataclass
class _Sequence:
    """One MMCore sequence acquisition: frame `base + ImageNumber` of the run."""

    base: int
    size: int | None  #: frames asked for; None for a continuous (free-run) sequence
    started: float  #: seconds since `start` when the sequence was started
    received: int = 0  #: 1 + the last ImageNumber popped
    offset: float | None = None  #: add to ElapsedTime-ms (in s) for seconds since `start`


class MicroManagerCamera(DriverBase):
    """A camera behind a Micro-Manager device adapter, with the `CameraDriver` interface.

    Say which camera in one of three ways: `device` as ``"Library:Device"`` (one adapter
    device, e.g. ``"HamamatsuHam:HamamatsuHam_DCAM"``, ``"DemoCamera:DCam"``), `config` (a
    Micro-Manager hardware configuration file; its camera is used, or the one named `label`),
    or `core` (a `CMMCorePlus` you already set up, e.g. napari-micromanager's; its current
    camera or `label`). `buffer_mb` sizes MMCore's circular buffer; `adapter_paths` overrides
    where adapters are searched (default: pymmcore-plus's `find_micromanager()`).

    At `open` the camera is set to 16-bit mono pixels, binning 1 and the full sensor; the
    exposure is kept. Frames are uint16; cameras that only deliver 8 or 32-bit pixels are
    refused with a CameraError. `missed_frames` counts the gaps in MMCore's image numbers.
    """

    def __init__(
        self,
        device: str | None = None,
        *,
        config: str | os.PathLike | None = None,
        label: str | None = None,
        core: Any = None,
        buffer_mb: int | None = None,
        adapter_paths: list[str | os.PathLike] | None = None,
    ) -> None:
        if sum(x is not None for x in (device, config, core)) > 1:
            raise ValueError("give one of device, config or core, not several")
        if device is not None and device.count(":") != 1:
            raise ValueError(
                f"device must be 'Library:Device', e.g. 'DemoCamera:DCam'; got {device!r}"
            )
        if buffer_mb is not None and buffer_mb < 1:
            raise ValueError(f"buffer_mb must be >= 1; got {buffer_mb!r}")
        super().__init__(f"Micro-Manager camera {device or config or label or ''}".strip())
        self._core_cls = _core_class()
        self._device = device
        self._config = os.fspath(config) if config is not None else None
        self._label = label
        self._given_core = core
        self._buffer_mb = buffer_mb
        self._adapter_paths = [os.fspath(p) for p in adapter_paths] if adapter_paths else None
        self._core: Any = None
        self._bit_depth_prop: str | None = None
        self._binning_values: dict[int, str] = {}
        self._t0 = 0.0
        self._seq: _Sequence | None = None
        self._owed = 0  # software-triggered frames waiting for the current sequence to drain
        self._requested = 0
        self._next_number = 0

    # -- description -------------------------------------------------------------------------

    @property
    def label(self) -> str | None:
        """The camera's device label in MMCore."""
        return self._label

    @property
    def core(self) -> Any:
        """The `CMMCorePlus` in use (None before `open`)."""
        return self._core

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Load (or find) the camera and put it in 16-bit, binning 1, full-sensor mode."""
        with self._lock:
            if self._core is not None:
                return
            core = self._given_core or self._core_cls()
            try:
                if self._adapter_paths:
                    core.setDeviceAdapterSearchPaths(self._adapter_paths)
                if self._config is not None:
                    core.loadSystemConfiguration(self._config)
                elif self._device is not None:
                    library, name = self._device.split(":")
                    self._label = self._label or "Camera"
                    core.loadDevice(self._label, library, name)
                    core.initializeDevice(self._label)
                self._label = self._label or core.getCameraDevice()
                if not self._label:
                    raise CameraError("the Micro-Manager core has no camera device")
                core.setCameraDevice(self._label)
                if self._buffer_mb is not None:
                    core.setCircularBufferMemoryFootprint(self._buffer_mb)
                self._core = core
                self._prepare()
            except RuntimeError as exc:  # pymmcore raises RuntimeError for MMCore errors
                self._core = None
                self._release(core)
                if isinstance(exc, CameraError):
                    raise
                where = self._device or self._config or self._label
                raise CameraError(f"cannot open Micro-Manager camera {where!r}: {exc}") from exc

    def _prepare(self) -> None:
        core, label = self._core, self._label
        props = set(core.getDevicePropertyNames(label))
        if "PixelType" in props and "16bit" in core.getAllowedPropertyValues(label, "PixelType"):
            core.setProperty(label, "PixelType", "16bit")
        if "BitDepth" in props:
            allowed = core.getAllowedPropertyValues(label, "BitDepth")
            if "16" in allowed:
                core.setProperty(label, "BitDepth", "16")
            self._bit_depth_prop = "BitDepth"
        if "Binning" in props:
            for value in core.getAllowedPropertyValues(label, "Binning"):
                b = int(value.split("x")[0]) if value.split("x")[0].isdigit() else 0
                if b in _BINNINGS and value in (str(b), f"{b}x{b}"):
                    self._binning_values[b] = value
            core.setProperty(label, "Binning", self._binning_values.get(1, "1"))
        else:
            self._binning_values = {1: "1"}
        core.clearROI()
        if core.getBytesPerPixel() != 2 or core.getNumberOfComponents() != 1:
            raise CameraError(
                f"camera {label!r} delivers {core.getBytesPerPixel() * 8}-bit pixels with "
                f"{core.getNumberOfComponents()} component(s); ophyd-scmos needs 16-bit mono"
            )
        exposure_ms = (1e-3, 1e7)
        if core.hasPropertyLimits(label, "Exposure"):
            lo = max(core.getPropertyLowerLimit(label, "Exposure"), 1e-3)
            exposure_ms = (lo, core.getPropertyUpperLimit(label, "Exposure"))
        self._limits = CameraLimits(
            exposure_range=(exposure_ms[0] / 1e3, exposure_ms[1] / 1e3),
            period_range=(0.0, MAX_PERIOD),
            binnings=tuple(sorted(self._binning_values)),
            bit_depths=self._bit_depths(),
            refused_trigger_modes={
                TriggerMode.EXTERNAL: "has no standard switch in Micro-Manager: set the "
                f"camera's own trigger property on {label!r} (e.g. Hamamatsu 'TRIGGER SOURCE', "
                "Andor 'TriggerMode') and use 'internal', whose sequence then waits for the "
                "pulses"
            },
        )
        self._sensor = (core.getImageHeight(), core.getImageWidth())
        self._model = (
            f"{core.getDeviceDescription(label)} "
            f"({core.getDeviceLibrary(label)}:{core.getDeviceName(label)} via Micro-Manager)"
        )
        self._settings = CameraSettings(
            exposure_time=core.getExposure() / 1e3, bit_depth=core.getImageBitDepth()
        )

    def _close(self) -> None:
        """Unload the devices this driver loaded."""
        core, self._core = self._core, None
        if core is not None:
            self._release(core)

    def _release(self, core: Any) -> None:
        """Unload what this driver loaded: all of a core it made, nothing of one it was given."""
        if self._given_core is None:
            with contextlib.suppress(RuntimeError):
                core.unloadAllDevices()

    def _bit_depths(self) -> tuple[int, ...]:
        if self._bit_depth_prop is None:
            native = self._core.getImageBitDepth()
            return tuple(d for d in _BIT_DEPTHS if d == native)
        allowed = self._core.getAllowedPropertyValues(self._label, self._bit_depth_prop)
        return tuple(d for d in _BIT_DEPTHS if str(d) in allowed)

    def _apply(self, s: CameraSettings, roi: ROI) -> CameraSettings:
        core, label, b = self._core, self._label, s.binning
        if "Binning" in core.getDevicePropertyNames(label):
            core.setProperty(label, "Binning", self._binning_values[b])
        core.clearROI()
        if roi != ROI.full(self._sensor):
            core.setROI(label, *roi.binned(b))
        if self._bit_depth_prop is not None:
            core.setProperty(label, self._bit_depth_prop, str(s.bit_depth))
        core.setExposure(label, s.exposure_time * 1e3)
        shape = (core.getImageHeight(), core.getImageWidth())
        expected = (roi.height // b, roi.width // b)
        if shape != expected:
            raise RuntimeError(
                f"the camera made {shape[1]}x{shape[0]} frames, not {expected[1]}x{expected[0]}"
            )
        # Cameras round the exposure to their line time: record what the camera will use.
        return replace(s, exposure_time=core.getExposure(label) / 1e3)

    def _start(self) -> None:
        core = self._core
        self._set_back_changes()
        self._t0 = time.monotonic()
        self._seq = None
        self._owed = self._requested = self._next_number = 0
        try:
            core.clearCircularBuffer()  # frames left from an earlier run are not this run's
            if self._settings.trigger_mode is TriggerMode.INTERNAL:
                core.startContinuousSequenceAcquisition(self._settings.acquire_period * 1e3)
                self._seq = _Sequence(base=0, size=None, started=0.0)
        except RuntimeError as exc:
            raise CameraError(f"camera {self._label!r} did not start: {exc}") from exc

    def _set_back_changes(self) -> None:
        """A core shared with another program (a GUI such as napari-micromanager) may have
        changed the camera since `configure`: set back, and said, so that the run takes what
        its documents record."""
        core, label, s = self._core, self._label, self._settings
        roi, b = self._roi_of(s), s.binning
        binned = "Binning" in core.getDevicePropertyNames(label)
        depth = self._bit_depth_prop
        now = {
            "exposure": f"{core.getExposure(label):g} ms",
            "roi": tuple(core.getROI(label)),
            "binning": core.getProperty(label, "Binning") if binned else None,
            "bit depth": core.getProperty(label, depth) if depth else None,
        }
        recorded = {
            "exposure": f"{s.exposure_time * 1e3:g} ms",
            "roi": roi.binned(b),
            "binning": self._binning_values[b] if binned else None,
            "bit depth": str(s.bit_depth) if depth else None,
        }
        self._set_back(repr(label), now, recorded)

    def _stop(self) -> None:
        self._seq = None
        self._owed = 0
        if self._core is not None:
            try:
                if self._core.isSequenceRunning(self._label):
                    self._core.stopSequenceAcquisition(self._label)
            except RuntimeError as exc:  # the camera may be gone already
                raise CameraError(f"camera {self._label!r} failed to stop: {exc}") from exc

    # -- acquisition -------------------------------------------------------------------------

    def software_trigger(self, frames: int = 1) -> None:
        """Ask for `frames` more frames: a sequence now, or once the current one has drained."""
        with self._lock:
            self._check_trigger(frames, TriggerMode.SOFTWARE, "software_trigger")
            self._owed += frames
            if self._seq is None:
                self._start_sequence()

    def _start_sequence(self) -> None:
        """Start a finite sequence for the frames owed (lock held, no sequence active)."""
        if not self._owed:
            return
        try:
            self._core.startSequenceAcquisition(
                self._label, self._owed, self._settings.acquire_period * 1e3, False
            )
        except RuntimeError as exc:
            raise CameraError(f"camera {self._label!r} did not start a sequence: {exc}") from exc
        started = time.monotonic() - self._t0
        self._seq = _Sequence(base=self._requested, size=self._owed, started=started)
        self._requested += self._owed
        self._owed = 0

    def _read(self, out: np.ndarray, timeout: float) -> FrameInfo:
        """Pop the next frame from MMCore's circular buffer into `out` (uint16, `frame_shape`)."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            with self._lock:
                popped = self._try_pop()
            if popped is not None:
                break
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no frame within {timeout} s")
            time.sleep(_POLL)
        image, number, stamp, missed = popped
        if image.shape != out.shape:
            raise CameraError(
                f"camera {self._label!r} delivered a {image.shape} frame, expected {out.shape}: "
                "were its settings changed outside ophyd-scmos?"
            )
        np.copyto(out, image, casting="no")
        return FrameInfo(number, stamp, missed)

    def _try_pop(self) -> tuple[np.ndarray, int, float, int] | None:
        """One look at the buffer (lock held): a frame, or None; CameraError if acquisition died."""
        core = self._require_open()
        if not self._running:
            raise CameraError("camera stopped")
        seq = self._seq
        if seq is None:
            return None
        try:
            # In this order: a sequence seen stopped has put all its frames in the buffer.
            running = core.isSequenceRunning(self._label)
            popped = core.popNextImageAndMD() if core.getRemainingImageCount() else None
        except (RuntimeError, SystemError) as exc:  # SystemError: the buffer vanished mid-pop
            raise CameraError(
                f"Micro-Manager camera {self._label!r} is gone or failed mid-acquisition ({exc})"
            ) from exc
        if popped is None:
            if not running:
                self._sequence_ended(seq)
            return None
        image, md = popped
        number = seq.base + int(md["ImageNumber"])
        seq.received = number - seq.base + 1
        elapsed = float(md["ElapsedTime-ms"]) / 1e3
        if seq.offset is None:
            # Adapters count ElapsedTime-ms from the sequence start; where the adapter gave
            # none, MMCore wrote its absolute clock, so anchor that at this frame's arrival.
            now = time.monotonic() - self._t0
            seq.offset = seq.started if elapsed < _PLAUSIBLE_ELAPSED else now - elapsed
        stamp = seq.offset + elapsed
        missed = number - self._next_number
        self._next_number = number + 1
        self._missed_total += missed
        return image, number, stamp, missed

    def _sequence_ended(self, seq: _Sequence) -> None:
        """The sequence stopped and its frames are all read: next one, or the camera failed."""
        if seq.size is not None and seq.received >= seq.size:
            self._seq = None
            self._start_sequence()
            return
        overflowed = self._core.isBufferOverflowed()
        raise CameraError(
            f"Micro-Manager camera {self._label!r} stopped acquiring on its own after "
            f"{seq.received} of {seq.size or 'unlimited'} frames"
            + (
                " because MMCore's circular buffer overflowed: enlarge buffer_mb"
                if overflowed
                else ": the camera was disconnected or its adapter failed"
            )
        )

    # -- internals ---------------------------------------------------------------------------

    def _require_open(self) -> Any:
        if self._core is None:
            raise CameraError("camera is closed; call open() first")
        return self._core


def list_cameras(adapter_paths: list[str | os.PathLike] | None = None) -> list[tuple[str, str]]:
    """Camera devices offered by the Micro-Manager adapters found: ("Library:Device", description).

    Micro-Manager finds cameras per adapter, so this lists the camera adapters installed, not
    which cameras are plugged in; an adapter whose vendor SDK is missing is left out, and so
    are the Utilities library's virtual devices.
    """
    core = _core_class()()
    if adapter_paths:
        core.setDeviceAdapterSearchPaths([os.fspath(p) for p in adapter_paths])
    found = []
    for library in core.getDeviceAdapterNames():
        if library == _UTILITIES_LIBRARY:
            continue
        try:
            names = core.getAvailableDevices(library)
            types = core.getAvailableDeviceTypes(library)
            descriptions = core.getAvailableDeviceDescriptions(library)
        except RuntimeError:
            continue
        for name, kind, text in zip(names, types, descriptions, strict=True):
            if int(kind) == _CAMERA_DEVICE_TYPE:
                found.append((f"{library}:{name}", text))
    return found
