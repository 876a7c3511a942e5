"""`SCMOSCamera`: the ophyd Device that wires a camera driver to the frame pipeline.

Each staged run gets one new HDF5 file written by a separate process; each event's image is a
Datum pointing at its frames in that file (Resource spec ``AD_HDF5``, as areaDetector's HDF5
plugin), so databroker, area-detector-handlers and Tiled read the runs back.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import event_model
import numpy as np
import platformdirs
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus, Status

from ophyd_scmos.drivers.base import ROI, CameraDriver, CameraSettings, TriggerMode
from ophyd_scmos.files import DEFAULT_TEMPLATE, check_template, next_file, prepare_dir
from ophyd_scmos.pipeline.compression import check_compression
from ophyd_scmos.pipeline.stream import OVERFLOW_POLICIES, FrameStream, StreamError


def default_write_dir() -> Path:
    return Path(platformdirs.user_data_dir("ophyd-scmos")) / "data"


class Setting(Signal):
    """A camera setting: checked and applied by the driver when set, so a bad value fails at
    `set()`, before any frame is taken, with the driver's message."""

    def put(self, value: Any, **kwargs: Any) -> None:
        self.parent._apply_setting(self.attr_name, value)
        super().put(value, **kwargs)

    def set(self, value: Any, **kwargs: Any) -> Status:
        self.put(value)
        status = Status(self)
        status.set_finished()
        return status


class SCMOSCamera(Device):
    """An sCMOS camera that streams every frame of a run into one HDF5 file.

    Parameters beyond ophyd's: `driver` (default: a 2048x2048 `SimulatedSCMOS`), `write_dir`
    (created if missing), `file_template` (fields {name} {date} {uid} {counter}; an existing
    file is an error), `ring_mb` (shared memory between camera and writer), `overflow`
    (`block` waits for the writer, `drop` discards and counts), `compression`.
    """

    exposure_time = Cpt(Setting, value=0.01, kind="config", doc="seconds")
    acquire_period = Cpt(Setting, value=0.0, kind="config", doc="seconds; 0: exposure-limited")
    roi = Cpt(Setting, value=(0, 0, 0, 0), kind="config", doc="(x, y, width, height), sensor px")
    binning = Cpt(Setting, value=1, kind="config")
    bit_depth = Cpt(Setting, value=16, kind="config")
    trigger_mode = Cpt(Setting, value="software", kind="config")
    frames_per_point = Cpt(Setting, value=1, kind="config", doc="frames per trigger")
    model = Cpt(Signal, value="", kind="config")
    file_path = Cpt(Signal, value="", kind="config", doc="the file of the current run")

    image = Cpt(Signal, value="", kind="normal", doc="datum id of this point's frames")
    frames_written = Cpt(Signal, value=0, kind="omitted")
    frames_dropped = Cpt(Signal, value=0, kind="normal")
    frames_missed = Cpt(Signal, value=0, kind="normal")
    ring_fill = Cpt(Signal, value=0.0, kind="omitted", doc="fraction of the ring in use")

    def __init__(
        self,
        prefix: str = "",
        *,
        name: str,
        driver: CameraDriver | None = None,
        write_dir: str | os.PathLike | None = None,
        file_template: str = DEFAULT_TEMPLATE,
        ring_mb: float = 256,
        overflow: str = "block",
        compression: str | None = None,
        **kwargs: Any,
    ):
        if driver is None:
            from ophyd_scmos.drivers.simulated import SimulatedSCMOS

            driver = SimulatedSCMOS()
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow={overflow!r} is not one of {OVERFLOW_POLICIES}")
        if not ring_mb > 0:
            raise ValueError(f"ring_mb must be positive, got {ring_mb}")
        self.driver = driver
        self.write_dir = Path(write_dir) if write_dir is not None else default_write_dir()
        self.file_template = check_template(file_template)
        self.ring_mb = ring_mb
        self.overflow = overflow
        self.compression = check_compression(compression)
        self._stream: FrameStream | None = None
        self._asset_docs: deque[tuple[str, dict]] = deque()
        self._compose_datum = None
        self._point = 0
        self._recorded_points: int | None = None  # points whose datum a RunEngine collected
        self._frames_requested = 0
        self._reported_error: StreamError | None = None
        super().__init__(prefix, name=name, **kwargs)
        driver.open()
        self._sync_settings_from_driver()
        self.model.put(driver.model)

    # -- settings -------------------------------------------------------------------------
    def _sync_settings_from_driver(self) -> None:
        s = self.driver.settings
        roi = s.roi or ROI.full(self.driver.sensor_shape)
        for attr, value in (
            ("exposure_time", s.exposure_time),
            ("acquire_period", s.acquire_period),
            ("roi", roi.as_tuple()),
            ("binning", s.binning),
            ("bit_depth", s.bit_depth),
            ("trigger_mode", TriggerMode(s.trigger_mode).value),
        ):
            Signal.put(getattr(self, attr), value)

    def _apply_setting(self, attr: str, value: Any) -> None:
        if self._staged.name == "yes":
            raise RuntimeError(f"{self.name}.{attr} cannot change while {self.name} is staged")
        if attr == "frames_per_point":
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"frames_per_point must be an integer >= 1, got {value!r}")
            return
        if attr == "roi":
            try:
                value = None if value is None else ROI(*(int(v) for v in value))
            except (TypeError, ValueError):
                raise ValueError(
                    f"roi must be (x, y, width, height) in sensor pixels, got {value!r}"
                ) from None
        elif attr == "trigger_mode":
            try:
                value = TriggerMode(value)
            except ValueError:
                allowed = [m.value for m in TriggerMode]
                raise ValueError(f"trigger_mode {value!r} is not one of {allowed}") from None
        self.driver.configure(dataclasses.replace(self.driver.settings, **{attr: value}))

    # -- staging: one file and one writer process per run -----------------------------------
    def stage(self) -> list[object]:
        if self._staged.name == "yes":  # ophyd would only say RedundantStaging
            raise RuntimeError(f"{self.name} is already staged; unstage it first")
        if TriggerMode(self.trigger_mode.get()) is not TriggerMode.SOFTWARE:
            raise ValueError(
                f"{self.name}.trigger_mode is {self.trigger_mode.get()!r}; step scans need "
                "'software' (free-running modes are recorded with kickoff/complete)"
            )
        write_dir = prepare_dir(self.write_dir)
        path = next_file(write_dir, self.file_template, self.name)
        k = int(self.frames_per_point.get())
        stream = FrameStream(
            self.driver,
            path,
            ring_mb=self.ring_mb,
            overflow=self.overflow,
            compression=self.compression,
            attrs=self._file_attrs(),
            on_progress=self._on_progress,
        )
        stream.open()
        self._stream = stream
        self._reported_error = None
        self._point = 0
        self._recorded_points = None
        self._frames_requested = 0
        for sig in (self.frames_written, self.frames_dropped, self.frames_missed):
            sig.put(0)
        self.file_path.put(str(path))
        bundle = event_model.compose_resource(
            spec="AD_HDF5",
            root=str(write_dir),
            resource_path=str(path.relative_to(write_dir)),
            resource_kwargs={"frame_per_point": k},
        )
        resource = dict(bundle.resource_doc)
        resource.pop("run_start", None)  # the RunEngine fills it in
        self._compose_datum = bundle.compose_datum
        self._asset_docs.clear()
        self._asset_docs.append(("resource", resource))
        try:
            return super().stage()
        except Exception:
            self._finish_stream()
            raise

    def _file_attrs(self) -> dict[str, Any]:
        return {
            "camera_model": self.driver.model,
            "device_name": self.name,
            "exposure_time": float(self.exposure_time.get()),
            "acquire_period": float(self.acquire_period.get()),
            "roi": list(self.roi.get()),
            "binning": int(self.binning.get()),
            "bit_depth": int(self.bit_depth.get()),
            "frames_per_point": int(self.frames_per_point.get()),
            "start_time": time.time(),
        }

    def unstage(self) -> list[object]:
        try:
            self._finish_stream()
        finally:
            result = super().unstage()
        return result

    def _finish_stream(self) -> None:
        """Close the file, keeping exactly the frames of the points a run recorded.

        Frames of a trigger whose event never came (abort, stop, Ctrl-C) are cut. Without a
        RunEngine collecting documents, every frame is kept.
        """
        stream, self._stream = self._stream, None
        if stream is None:
            return
        k = int(self.frames_per_point.get())
        keep = None if self._recorded_points is None else self._recorded_points * k
        try:
            summary = stream.close(keep=keep)
        except StreamError as exc:
            self._on_progress(stream)
            if exc is not self._reported_error:
                raise
            return
        finally:
            self._warn_lost(stream)
        self._on_progress(stream)
        self.frames_written.put(summary.frames_written)

    def _warn_lost(self, stream: FrameStream) -> None:
        if stream.frames_dropped or stream.frames_missed:
            warnings.warn(
                f"{self.name}: {stream.frames_missed} frame(s) missed by the camera and "
                f"{stream.frames_dropped} dropped from a full ring; {stream.path} records "
                "the counts (frames_missed, frames_dropped) and the gaps in frame_number",
                RuntimeWarning,
                stacklevel=3,
            )

    def _on_progress(self, stream: FrameStream) -> None:
        self.frames_written.put(stream.frames_written)
        self.frames_dropped.put(stream.frames_dropped)
        self.frames_missed.put(stream.frames_missed)
        self.ring_fill.put(stream.ring_fill)

    # -- step scans ------------------------------------------------------------------------
    def trigger(self) -> DeviceStatus:
        """Take `frames_per_point` frames; done when they are in the ring, not yet on disk."""
        stream = self._stream
        if stream is None:
            raise RuntimeError(f"{self.name} must be staged before trigger()")
        status = DeviceStatus(self)
        k = int(self.frames_per_point.get())
        self._frames_requested += k
        self.image.put(self._new_datum())

        def done(error: BaseException | None) -> None:
            self._on_progress(stream)
            lost = stream.frames_dropped + stream.frames_missed
            if error is None and lost:
                error = StreamError(
                    f"{self.name} lost {lost} frame(s) ({stream.frames_missed} missed by the "
                    f"camera, {stream.frames_dropped} dropped from a full ring) because writing "
                    f"fell behind; each event must hold its own frames, so the scan stops. "
                    f"{stream.path} keeps the {stream.frames_acquired} frames acquired. "
                    "Use a larger ring_mb, compression, or a longer exposure."
                )
            if error is None:
                status.set_finished()
            else:
                self._reported_error = error
                status.set_exception(error)

        self.driver.software_trigger(k)
        stream.wait_for(self._frames_requested, done)
        return status

    def _new_datum(self) -> str:
        datum = self._compose_datum(datum_kwargs={"point_number": self._point})
        self._point += 1
        self._asset_docs.append(("datum", dict(datum)))
        return datum["datum_id"]

    def collect_asset_docs(self) -> Iterator[tuple[str, dict]]:
        if self._recorded_points is None:
            self._recorded_points = 0
        while self._asset_docs:
            name, doc = self._asset_docs.popleft()
            if name == "datum":
                self._recorded_points = doc["datum_kwargs"]["point_number"] + 1
            yield name, doc

    def describe(self) -> dict[str, dict]:
        description = super().describe()
        rows, cols = self.driver.frame_shape
        description[self.image.name] = {
            "source": f"{self.driver.model}:{self.name}",
            "dtype": "array",
            "dtype_numpy": np.dtype(self.driver.dtype).str,
            "shape": [int(self.frames_per_point.get()), rows, cols],
            "external": "FILESTORE:",
        }
        return description

    def stop(self, *, success: bool = False) -> None:
        """Stop the camera at once; the file is closed by unstage, which the RunEngine calls."""
        if self._stream is not None:
            self._stream.stop()
        super().stop(success=success)

    @property
    def settings(self) -> CameraSettings:
        return self.driver.settings
