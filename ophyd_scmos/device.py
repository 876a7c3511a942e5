"""`SCMOSCamera`: the ophyd Device that wires a camera driver to the frame pipeline.

Each staged run gets one new HDF5 file written by a separate process. Step scans (`count`,
`scan`) record `frames_per_point` frames per trigger, each event pointing at its frames with
a Datum (``AD_HDF5``, as areaDetector's HDF5 plugin), so databroker, area-detector-handlers
and Tiled read the runs back. Fly scans (`kickoff`/`complete`/`collect`) record a
free-running camera at full rate with StreamResource/StreamDatum.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import Status

from ophyd_scmos.documents import AssetDocs
from ophyd_scmos.drivers.base import ROI, CameraDriver, CameraSettings, TriggerMode
from ophyd_scmos.files import DEFAULT_TEMPLATE, check_template, next_file, prepare_dir
from ophyd_scmos.pipeline import layout
from ophyd_scmos.pipeline.compression import check_compression
from ophyd_scmos.pipeline.ring import check_ring_size
from ophyd_scmos.pipeline.stream import OVERFLOW_POLICIES, FrameStream, StreamError
from ophyd_scmos.pipeline.writeback import check_write_limit
from ophyd_scmos.status import FrameStatus

ASSET_STYLES = ("resource", "stream")


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
    file is an error), `ring_mb` or `ring_frames` (shared memory between camera and writer,
    in megabytes, default 256, or in frames), `overflow` (`block` waits for the writer,
    `drop` discards and counts), `compression`, `write_limit_mb_s` (cap on the writer's disk
    bandwidth, to share a disk), and
    `asset_docs` for step scans (`resource`: AD_HDF5 Resource/Datum, read by databroker and
    Tiled; `stream`: StreamResource/StreamDatum, read by Tiled only).

    Trigger modes in step scans: `software` takes a burst of `frames_per_point` frames per
    trigger; `internal` free-runs from stage and records the first `frames_per_point` frames
    after each trigger (the frames between triggers are read and skipped; to record them all,
    fly: `ophyd_scmos.plans.movie`); `external` records the frames the camera's trigger input
    produces after each trigger.
    """

    exposure_time = Cpt(Setting, value=0.01, kind="config", doc="seconds")
    acquire_period = Cpt(Setting, value=0.0, kind="config", doc="seconds; 0: exposure-limited")
    roi = Cpt(Setting, value=(0, 0, 0, 0), kind="config", doc="(x, y, width, height), sensor px")
    binning = Cpt(Setting, value=1, kind="config")
    bit_depth = Cpt(Setting, value=16, kind="config")
    trigger_mode = Cpt(Setting, value="software", kind="config")
    frames_per_point = Cpt(Setting, value=1, kind="config", doc="frames per trigger")
    num_frames = Cpt(Setting, value=0, kind="config", doc="fly scans: frames; 0 = no limit")
    duration = Cpt(Setting, value=0.0, kind="config", doc="fly scans: seconds; 0 = no limit")
    model = Cpt(Signal, value="", kind="config")
    file_path = Cpt(Signal, value="", kind="config", doc="the file of the current run")

    image = Cpt(Signal, value="", kind="normal", doc="datum id of this point's frames")
    frame_number = Cpt(Signal, value=-1, kind="normal", doc="camera's number of the 1st frame")
    frame_time = Cpt(Signal, value=0.0, kind="normal", doc="camera clock, s, of that frame")
    frames_dropped = Cpt(Signal, value=0, kind="normal")
    frames_missed = Cpt(Signal, value=0, kind="normal")
    frames_written = Cpt(Signal, value=0, kind="omitted")
    ring_fill = Cpt(Signal, value=0.0, kind="omitted", doc="fraction of the ring in use")

    def __init__(
        self,
        prefix: str = "",
        *,
        name: str,
        driver: CameraDriver | None = None,
        write_dir: str | os.PathLike | None = None,
        file_template: str = DEFAULT_TEMPLATE,
        ring_mb: float | None = None,
        ring_frames: int | None = None,
        overflow: str = "block",
        compression: str | None = None,
        write_limit_mb_s: float | None = None,
        asset_docs: str = "resource",
        **kwargs: Any,
    ):
        if driver is None:
            from ophyd_scmos.drivers.simulated import SimulatedSCMOS

            driver = SimulatedSCMOS()
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow={overflow!r} is not one of {OVERFLOW_POLICIES}")
        if asset_docs not in ASSET_STYLES:
            raise ValueError(f"asset_docs={asset_docs!r} is not one of {ASSET_STYLES}")
        self.driver = driver
        self.write_dir = Path(write_dir) if write_dir is not None else default_write_dir()
        self.file_template = check_template(file_template)
        self.ring_mb, self.ring_frames = check_ring_size(ring_mb, ring_frames)
        self.overflow = overflow
        self.compression = check_compression(compression)
        self.write_limit_mb_s = check_write_limit(write_limit_mb_s)
        self.asset_docs = asset_docs
        self._stream: FrameStream | None = None
        self._docs: AssetDocs | None = None
        self._lock = threading.Lock()
        self._statuses: list[FrameStatus] = []
        self._reported_error: StreamError | None = None
        self._flying = False
        super().__init__(prefix, name=name, **kwargs)
        driver.open()
        self._sync_settings_from_driver()
        self.model.put(driver.model)
        if asset_docs == "stream":
            self.image.kind = "omitted"  # a STREAM: key is never in read()

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
        if attr in ("frames_per_point", "num_frames"):
            least = 1 if attr == "frames_per_point" else 0
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"{attr} must be an integer >= {least}, got {value!r}")
            return
        if attr == "duration":
            if not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"duration must be finite seconds >= 0, got {value!r}")
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

    @property
    def settings(self) -> CameraSettings:
        return self.driver.settings

    @property
    def _mode(self) -> TriggerMode:
        return TriggerMode(self.trigger_mode.get())

    @property
    def _k(self) -> int:
        return int(self.frames_per_point.get())

    # -- staging: one file and one writer process per run -----------------------------------
    def stage(self) -> list[object]:
        if self._staged.name == "yes":  # ophyd would only say RedundantStaging
            raise RuntimeError(f"{self.name} is already staged; unstage it first")
        write_dir = prepare_dir(self.write_dir)
        path = next_file(write_dir, self.file_template, self.name)
        stream = FrameStream(
            self.driver,
            path,
            ring_mb=self.ring_mb,
            ring_frames=self.ring_frames,
            overflow=self.overflow,
            compression=self.compression,
            write_limit_mb_s=self.write_limit_mb_s,
            attrs=self._file_attrs(),
            on_progress=self._on_progress,
            gated=self._mode is not TriggerMode.SOFTWARE,
        )
        stream.open()
        self._stream = stream
        self._docs = AssetDocs(path, write_dir)
        self._reported_error = None
        self._points = 0  # points triggered; point p holds file frames [p*k, (p+1)*k)
        self._recorded_points: int | None = None  # points a RunEngine recorded (collected)
        self._collected = 0  # fly scans: frames covered by StreamDatum so far
        self._flying = False
        for sig in (self.frames_written, self.frames_dropped, self.frames_missed):
            sig.put(0)
        self.file_path.put(str(path))
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
            "trigger_mode": self._mode.value,
            "frames_per_point": self._k,
            "start_time": time.time(),
        }

    def unstage(self) -> list[object]:
        try:
            self._finish_stream()
        finally:
            result = super().unstage()
        return result

    def _finish_stream(self) -> None:
        """Close the file, keeping exactly the frames a run recorded.

        Frames of a trigger whose event never came (abort, stop, Ctrl-C) are cut. Without a
        RunEngine collecting documents (or in a fly scan), every frame is kept.
        """
        stream, self._stream = self._stream, None
        if stream is None:
            return
        keep = None
        if self._recorded_points is not None and not self._flying:
            keep = self._recorded_points * self._k
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
        settled = stream.frames_stored + stream.frames_dropped + stream.frames_missed
        with self._lock:
            self._statuses = [s for s in self._statuses if not s.done]
            statuses = list(self._statuses)
        for status in statuses:
            status.update(settled)

    def _frame_status(self, initial: int, target: int) -> FrameStatus:
        status = FrameStatus(self, initial=initial, target=target)
        with self._lock:
            self._statuses.append(status)
        return status

    def _require_stream(self, action: str) -> FrameStream:
        if self._stream is None:
            raise RuntimeError(f"{self.name} must be staged before {action}")
        return self._stream

    # -- step scans ------------------------------------------------------------------------
    def trigger(self) -> FrameStatus:
        """Take this point's frames; done when they are in the file."""
        stream = self._require_stream("trigger()")
        if self._flying:
            raise RuntimeError(f"{self.name} is flying; trigger() is for step scans")
        k, point = self._k, self._points
        self._points += 1
        first = stream.allow(k)
        status = self._frame_status(initial=point * k, target=(point + 1) * k)
        if self.asset_docs == "resource":
            self.image.put(self._docs.datum(point, k))
        else:
            self._docs.stream({self.image.name: layout.DATA}, k)
            self._docs.stream_datum(point, point + 1)

        def done(error: BaseException | None) -> None:
            self._on_progress(stream)
            lost = stream.frames_dropped + stream.frames_missed
            if error is None and lost:
                error = StreamError(
                    f"{self.name} lost {lost} frame(s) ({stream.frames_missed} missed by the "
                    f"camera, {stream.frames_dropped} dropped from a full ring) because writing "
                    f"fell behind; each event must hold its own frames, so the scan stops. "
                    f"{stream.path} keeps the {stream.frames_stored} frames stored. "
                    "Use a larger ring_mb, compression, or a longer exposure."
                )
            if error is not None:
                self._reported_error = error
                status.set_exception(error)
                return
            number, timestamp = stream.frame_info(first)
            self.frame_number.put(number)
            self.frame_time.put(timestamp)
            status.set_finished()

        if self._mode is TriggerMode.SOFTWARE:
            self.driver.software_trigger(k)
        stream.wait_for((point + 1) * k, done)
        return status

    def pause(self) -> None:
        """RunEngine pause: let a step scan's triggered frames land, so `resume` knows the
        file. A fly scan pauses at once (its complete status lasts the whole movie)."""
        with self._lock:
            pending = [] if self._flying else [s for s in self._statuses if not s.done]
        for status in pending:
            with contextlib.suppress(Exception):  # a failure is the plan's to report
                status.wait(timeout=30)
        super().pause()

    def resume(self) -> None:
        """RunEngine resume: cut frames of points whose events never came (the plan rewinds
        and takes them again), so point numbers keep matching the file."""
        recorded = self._recorded_points or 0
        if self._stream is not None and not self._flying and self._points > recorded:
            self._stream.truncate(recorded * self._k)
            self._docs.drop_datums_from(recorded)
            self._points = recorded
        super().resume()

    def collect_asset_docs(self, index: int | None = None) -> Iterator[tuple[str, dict]]:
        if self._docs is None:
            return
        if self._flying:
            stop = self.get_index() if index is None else min(index, self.get_index())
            self._docs.stream_datum(self._collected, stop)
            self._collected = max(self._collected, stop)
        elif self._recorded_points is None:
            self._recorded_points = 0
        for name, doc in self._docs.drain():
            if name == "datum":
                self._recorded_points = doc["datum_kwargs"]["point_number"] + 1
            elif name == "stream_datum" and not self._flying:
                self._recorded_points = doc["indices"]["stop"]
            yield name, doc

    def describe(self) -> dict[str, dict]:
        description = super().describe()
        description[self.image.name] = self._image_key(per_point=True)
        return description

    def _image_key(self, *, per_point: bool) -> dict[str, Any]:
        rows, cols = self.driver.frame_shape
        stream_style = not per_point or self.asset_docs == "stream"
        k = self._k if per_point else 1
        shape = [rows, cols] if k == 1 and stream_style else [k, rows, cols]
        return {
            "source": f"{self.driver.model}:{self.name}",
            "dtype": "array",
            "dtype_numpy": np.dtype(self.driver.dtype).str,
            "shape": shape,
            "external": "STREAM:" if stream_style else "FILESTORE:",
        }

    def stop(self, *, success: bool = False) -> None:
        """Stop the camera at once; the file is closed by unstage, which the RunEngine calls."""
        if self._stream is not None:
            self._stream.stop()
        super().stop(success=success)

    # -- fly scans -------------------------------------------------------------------------
    def kickoff(self) -> Status:
        """Start recording every frame of a free-running (or externally triggered) camera.

        Stages the camera if no plan did; `complete` then closes the file again.
        """
        if self._mode is TriggerMode.SOFTWARE:
            raise ValueError(
                f"{self.name}.trigger_mode is 'software'; fly scans record a free-running "
                "camera: set it to 'internal' (or 'external') first"
            )
        self._staged_by_kickoff = self._staged.name != "yes"
        if self._staged_by_kickoff:
            self.stage()
        stream = self._require_stream("kickoff()")
        if self._points:
            raise RuntimeError(f"{self.name} took step-scan points in this staging")
        self._flying = True
        n = int(self.num_frames.get())
        stream.allow(n if n else 2**62)
        self._docs.stream(
            {
                self.image.name: layout.DATA,
                self.frame_number.name: layout.FRAME_NUMBER,
                self.frame_time.name: layout.TIMESTAMP,
            },
            frames_per_point=1,
        )
        status = Status(self)
        status.set_finished()
        return status

    def complete(self) -> FrameStatus:
        """Done when `num_frames` frames (or `duration` seconds) are recorded and in the file."""
        stream = self._require_stream("complete()")
        if not self._flying:
            raise RuntimeError(f"{self.name}.complete() needs kickoff() first")
        n, seconds = int(self.num_frames.get()), float(self.duration.get())
        expected = n or round(seconds / self.driver.settings.frame_interval)
        status = self._frame_status(initial=0, target=expected)
        started = time.monotonic()

        def finish() -> None:
            try:
                while not stream.error and not stream.stopped:  # stopped: RE stop/abort
                    taken = stream.frames_acquired + stream.frames_dropped + stream.frames_missed
                    if (n and taken >= n) or (seconds and time.monotonic() - started >= seconds):
                        break
                    time.sleep(0.01)
                stream.stop()
                stream.wait_settled(timeout=60)
                status.target = stream.frames_acquired + stream.frames_dropped
                status.update(status.target)
                if self._staged_by_kickoff:
                    self.unstage()
                status.set_finished()
            except Exception as exc:
                self._reported_error = exc
                status.set_exception(exc)

        threading.Thread(target=finish, name=f"{self.name}-complete", daemon=True).start()
        return status

    def describe_collect(self) -> dict[str, dict]:
        return {
            self.image.name: self._image_key(per_point=False),
            self.frame_number.name: {
                "source": f"{self.driver.model}:{self.name}",
                "dtype": "integer",
                "dtype_numpy": "<i8",
                "shape": [],
                "external": "STREAM:",
            },
            self.frame_time.name: {
                "source": f"{self.driver.model}:{self.name}",
                "dtype": "number",
                "dtype_numpy": "<f8",
                "shape": [],
                "external": "STREAM:",
            },
        }

    def get_index(self) -> int:
        """Frames in the file that a collect may point at (bluesky's WritesStreamAssets)."""
        if self._stream is not None:
            return self._stream.frames_stored
        return int(self.frames_written.get())  # after the file closed: all of it
