"""`SCMOSCamera`: the ophyd Device that wires a camera driver to the frame pipeline.

Each staged run gets one new HDF5 file written by a separate process. Step scans (`count`,
`scan`) record `frames_per_point` frames per trigger, each event pointing at its frames with
a Datum (``AD_HDF5``, as areaDetector's HDF5 plugin), so databroker, area-detector-handlers
and Tiled read the runs back. Fly scans (`kickoff`/`complete`/`collect`) record a
free-running camera at full rate with StreamResource/StreamDatum.

Every frame's statistics (`ophyd_scmos.pipeline.stats`), over the whole frame and each named
region of `cam.rois`, are computed by the writer and stored in the file; in step scans they
are readings of the camera (``cam_stats_total``, ``cam_spot_centroid_x``, ...).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import logging
import os
import re
import threading
import time
import warnings
import weakref
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Kind, Signal
from ophyd.status import Status

from ophyd_scmos.documents import (
    AssetDocs,
    SavedEvents,
    bundle_of_caller,
    check_key_lengths,
    engine_of_caller,
    file_columns,
    run_of_caller,
    stat_prefixes,
    stream_of_caller,
)
from ophyd_scmos.drivers.base import ROI, CameraDriver, CameraSettings, TriggerMode
from ophyd_scmos.files import DEFAULT_TEMPLATE, check_template, create_next, prepare_dir
from ophyd_scmos.live.control import LiveControl
from ophyd_scmos.paths import default_write_dir
from ophyd_scmos.pipeline import layout, stats
from ophyd_scmos.pipeline.options import OverflowPolicy, PipelineOptions
from ophyd_scmos.pipeline.process import WriterProcess
from ophyd_scmos.pipeline.ring import FrameRing
from ophyd_scmos.pipeline.stream import (
    MAX_FRAMES_PER_POINT,
    SILENCE_SECONDS,
    FrameStream,
    StreamError,
)
from ophyd_scmos.status import FrameStatus

ASSET_STYLES = ("resource", "stream")
#: seconds a RunEngine's pause waits for a point's frames to land (`SCMOSCamera.pause`)
PAUSE_WAIT = 30.0
#: the pipeline keywords' defaults: `options=` replaces them all
_PIPELINE_KEYWORDS = dict(
    ring_mb=None, ring_frames=None, compression=None, overflow="block", write_limit_mb_s=None
)
#: a camera's name starts its data keys, which a document refuses with "." or "/", and which
#: a catalog keeps as its SQL tables' columns and in its URLs: none of what those take for
#: their own ("--" neither), and a letter or _ first
_CAMERA_NAME = re.compile(r"""[A-Za-z_][^./#?%'"`;\\()=+*\x00-\x1f]*""")

logger = logging.getLogger(__name__)

#: cameras with a run in progress, closed at interpreter exit (see `_close_runs_at_exit`)
_RUNNING: weakref.WeakSet[SCMOSCamera] = weakref.WeakSet()


def _close_runs_at_exit() -> None:
    """Close the runs a script left open, while the threads that talk to the writer still
    run: once the interpreter finalizes, those threads stop, and a later unstage could only
    wait and then kill.

    Ctrl-C in a plain script leaves its RunEngine paused with our camera staged. That
    RunEngine is aborted here, as a person at the prompt would (`RE.abort()`): the run gets
    its stop document and its file keeps exactly the frames of its events. Left to
    garbage collection, bluesky would unstage during finalization, with its callbacks
    (TiledWriter) already half torn down.
    """
    if not _RUNNING:
        return
    import gc

    from bluesky import RunEngine

    for engine in [obj for obj in gc.get_objects() if isinstance(obj, RunEngine)]:
        if engine.state == "paused":
            with contextlib.suppress(Exception):
                engine.abort(reason="the Python session ended while the run was paused")
    for camera in list(_RUNNING):
        path = camera.file_path.get()
        try:
            camera._finish_run()
        except Exception as exc:
            logger.warning("%s: closing %s at exit: %s", camera.name, path, exc)
        else:
            logger.warning(
                "%s: the run was still open at exit; %s is closed with %d frames",
                camera.name,
                path,
                camera.frames_written.get(),
            )


atexit.register(_close_runs_at_exit)  # where the hook below is not available


def _close_runs_first_at_exit() -> None:
    """Have `_close_runs_at_exit` run before the other hooks threading runs at exit, which
    include the shutdown of an in-process Tiled server (the embedded catalog) that the
    aborted run's stop document still has to reach. Those hooks run last-registered first,
    before `atexit`'s; so the hook moves to the end whenever a run starts."""
    hooks = getattr(threading, "_threading_atexits", None)
    if not isinstance(hooks, list) or (hooks and hooks[-1] is _close_runs_at_exit):
        return
    with contextlib.suppress(ValueError):
        hooks.remove(_close_runs_at_exit)
    hooks.append(_close_runs_at_exit)


@dataclass
class _Run:
    """One staging's state, made by `stage()` and dropped by `unstage()`: the stream and its
    file's documents, and how far the run has got."""

    stream: FrameStream
    docs: AssetDocs
    points: int = 0  #: points triggered; point p holds file frames [p*k, (p+1)*k)
    recorded_points: int | None = None  #: points a RunEngine recorded (None: no RunEngine)
    read_points: int = 0  #: points triggered when the RunEngine last read the camera
    saved_events: SavedEvents | None = None  #: word of the staging RunEngine's saved events
    collected: int = 0  #: fly scans: frames covered by StreamDatum so far
    bundle: tuple[str, str] | None = None  #: step scans: the run and stream of its events
    fly_stream: str | None = None  #: fly scans: the stream its frames are collected into
    refused: RuntimeError | None = None  #: why an event was refused: every later one is too
    cut_at_resume: int = 0  #: points cut as a paused plan resumed, to be triggered again
    flying: bool = False
    staged_by_kickoff: bool = False  #: `complete` unstages what `kickoff` staged
    ended_on_time: bool = False  #: a movie that took its frames or its time (not stopped)
    reported_error: BaseException | None = None  #: raised once, by the status that saw it
    #: a RunEngine pause came and no resume yet: an error a status took meanwhile reached no
    #: one (the plan waits for no status while paused), so the run's end raises it
    paused: bool = False
    statuses: list[FrameStatus] = field(default_factory=list)  #: not yet done
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_status(self, status: FrameStatus) -> FrameStatus:
        with self.lock:
            self.statuses.append(status)
        return status

    def pending(self) -> list[FrameStatus]:
        with self.lock:
            self.statuses = [s for s in self.statuses if not s.done]
            return list(self.statuses)


class Regions(MutableMapping[str, stats.Region]):
    """A camera's named regions of interest, (x, y, width, height) in frame pixels (after
    the camera's ROI and binning). Each is checked when set, against the frame the camera
    takes now, and all again at stage (the frame may have changed since); they cannot change
    while the camera is staged."""

    def __init__(self, camera: SCMOSCamera):
        self._camera = camera
        self._regions: dict[str, stats.Region] = {}

    def __getitem__(self, name: str) -> stats.Region:
        return self._regions[name]

    def __setitem__(self, name: str, value: Sequence[int]) -> None:
        with self._camera._changing("rois"):
            region = stats.check_region(name, value, self._camera.driver.frame_shape)
            stats.check_apart([*self._regions, name])
            check_key_lengths(file_columns(self._camera.name, [*self._regions, name]))
            self._regions[name] = region
            self._record()
        self._camera._announce()

    def __delitem__(self, name: str) -> None:
        with self._camera._changing("rois"):
            del self._regions[name]
            self._record()
        self._camera._announce()

    def replace(self, regions: Mapping[str, Sequence[int]]) -> None:
        """All of them at once: each checked, and none changed if one is refused."""
        with self._camera._changing("rois"):
            shape = self._camera.driver.frame_shape
            checked = stats.check_regions(regions, shape)
            check_key_lengths(file_columns(self._camera.name, checked))
            self._regions = checked
            self._record()
        self._camera._announce()

    def _record(self) -> None:
        """Where each region is, in the camera's configuration (`regions`, which each run's
        descriptor records): its statistics' names do not say, and a run without images has
        only them."""
        where = {name: list(region) for name, region in self._regions.items()}
        self._camera.regions.put(json.dumps(where))

    def __iter__(self) -> Iterator[str]:
        return iter(self._regions)

    def __len__(self) -> int:
        return len(self._regions)

    def __repr__(self) -> str:
        return f"Regions({self._regions!r})"


#: the settings the driver applies (the others are the camera's own)
DRIVER_SETTINGS = ("exposure_time", "acquire_period", "roi", "binning", "bit_depth", "trigger_mode")


class Setting(Signal):
    """A camera setting: checked and applied by the driver when set, so a bad value fails at
    `set()`, before any frame is taken, with the driver's message."""

    def put(self, value: Any, **kwargs: Any) -> None:
        camera = self.parent
        value = _plain(value)
        with camera._changing(self.attr_name):
            camera._apply_setting(self.attr_name, value)
            if self.attr_name not in DRIVER_SETTINGS:  # else `_apply_setting` put what it took
                super().put(value, **kwargs)
        camera._announce()

    def set(self, value: Any, **kwargs: Any) -> Status:
        self.put(value)
        status = Status(self)
        status.set_finished()
        return status

    def describe(self) -> dict[str, dict[str, Any]]:
        """ophyd's, with a flag (`save_images`) described as one, not as the integer a bool
        also is."""
        described = super().describe()
        if isinstance(self.get(), bool):
            described[self.name].update(dtype="boolean", dtype_numpy="|b1")
        return described


class ImageDatum(Signal):
    """The datum id of a point's frames: read with its camera, whose reading collects the
    documents that describe those frames; read alone, an event would point at frames that
    no document describes (and that the run then does not keep)."""

    def read(self) -> dict[str, dict[str, Any]]:
        if not self.parent._reading:
            raise RuntimeError(
                f"{self.name} is read with its camera ({self.parent.name}): read the camera "
                f"(bps.read({self.parent.name}), trigger_and_read([{self.parent.name}])), "
                "whose reading brings the documents of the frames it points at"
            )
        return dict(super().read())


class SCMOSCamera(Device):
    """An sCMOS camera that streams every frame of a run into one HDF5 file.

    Parameters beyond ophyd's: `driver` (default: a 2048x2048 `SimulatedSCMOS`), `write_dir`
    (created if missing), `file_template` (fields {name} {date} {uid} {counter}; an existing
    file is an error), `ring_mb` or `ring_frames` (shared memory between camera and writer,
    in megabytes, default 256, or in frames), `overflow` (`block` waits for the writer,
    `drop` discards and counts), `compression`, `write_limit_mb_s` (cap on the writer's disk
    bandwidth, to share a disk), or all of those as one `options` (`PipelineOptions`), and
    `asset_docs` for step scans (`resource`: AD_HDF5 Resource/Datum, read by databroker and
    Tiled; `stream`: StreamResource/StreamDatum, read by Tiled only), `rois` (named regions,
    see `rois`), `statistics` (False: none computed, no statistics readings), `stats_read`
    and `stats_hinted` (which statistics are readings, by default total, max and the
    centroids, and which of those are hinted for live plots and peak finding, the totals by
    default; the file keeps all nine of every frame whatever is read), `save_images` (False:
    the file keeps every frame's statistics, number and timestamps but not the frame; also a
    setting, `cam.save_images`).

    Statistics in step scans: one reading per region and statistic, ``<name>_stats_<stat>``
    for the whole frame and ``<name>_<region>_<stat>`` for a region. With `frames_per_point`
    k > 1 a point's statistics are those of its k frames summed into one image (total, mean,
    centroids and their sigmas); min, max and sigma are over all its frames' pixels.

    Trigger modes in step scans: `software` takes a burst of `frames_per_point` frames per
    trigger; `internal` free-runs from the first trigger (a fly scan: from kickoff, so a
    movie's frame numbers start at 0) and records the first `frames_per_point` frames read
    after each trigger (the frames between triggers are read and skipped; to record them all,
    fly: `ophyd_scmos.plans.movie`): a frame exposed while the trigger came, or still in the
    camera's buffer, is among them, so where a point's frames must begin after its trigger
    (after a motor's move), use `software`; `external` records the frames the camera's
    trigger input produces after each trigger.
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
    save_images = Cpt(Setting, value=True, kind="config", doc="False: statistics, no frames")
    model = Cpt(Signal, value="", kind="config")
    file_path = Cpt(Signal, value="", kind="config", doc="the file of the current run")
    regions = Cpt(Signal, value="{}", kind="config", doc="rois as JSON: {name: [x, y, w, h]}")

    image = Cpt(ImageDatum, value="", kind="normal", doc="datum id of this point's frames")
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
        overflow: OverflowPolicy = "block",
        compression: str | None = None,
        write_limit_mb_s: float | None = None,
        options: PipelineOptions | None = None,
        asset_docs: str = "resource",
        rois: Mapping[str, Sequence[int]] | None = None,
        statistics: bool = True,
        stats_read: Sequence[str] = stats.READ,
        stats_hinted: Sequence[str] | None = None,
        save_images: bool = True,
        **kwargs: Any,
    ):
        #: held by a change of settings or regions, and by stage and unstage: one at a time
        self._settings_lock = threading.RLock()
        given = dict(ring_mb=ring_mb, ring_frames=ring_frames, compression=compression)
        given.update(overflow=overflow, write_limit_mb_s=write_limit_mb_s)
        if options is None:
            options = PipelineOptions(**given)  # type: ignore[arg-type]
        elif given != _PIPELINE_KEYWORDS:
            raise ValueError("give the pipeline's options as options= or as keywords, not both")
        if not isinstance(name, str) or not _CAMERA_NAME.fullmatch(name) or "--" in name:
            raise ValueError(
                f"camera name {name!r} must be a valid document key: a letter or _ first, and "
                "none of . / # ? % ' \" ` ; \\ ( ) = + * nor -- (it names the data keys, which "
                "a catalog keeps as columns and in URLs, and the run files)"
            )
        check_key_lengths(file_columns(name, ()))
        if asset_docs not in ASSET_STYLES:
            raise ValueError(f"asset_docs={asset_docs!r} is not one of {ASSET_STYLES}")
        if driver is None:
            from ophyd_scmos.drivers.simulated import SimulatedSCMOS

            driver = SimulatedSCMOS()
        self.driver = driver
        self.write_dir = Path(write_dir) if write_dir is not None else default_write_dir()
        self.file_template = file_template
        self.options = options
        self.asset_docs = asset_docs
        self._run: _Run | None = None
        #: the writer process and its ring, started at the first stage and kept between runs
        self._writer: WriterProcess | None = None
        self._writer_finalizer: weakref.finalize | None = None
        #: a fly scan's run after `complete` closed its file, until `collect` documents it
        self._flown: _Run | None = None
        self._interrupted: FrameStream | None = None  #: see `_stop_interrupted`
        self._settings_after_run: dict[Signal, Any] = {}  #: see `restore_at_unstage`
        super().__init__(prefix, name=name, **kwargs)
        self._components = [getattr(self, name) for name in self.component_names]
        self._read_for: tuple[Kind, ...] = ()  #: the components' kinds `_read_signals` took
        self._read_components: list[Signal] = []
        driver.open()
        self._sync_settings_from_driver()
        self.model.put(driver.model)
        if asset_docs == "stream":
            self.image.kind = "omitted"  # a STREAM: key is never in read()
        self.statistics = statistics
        self.stats_read = stats_read
        if stats_hinted is None:  # the totals, where they are read
            stats_hinted = ("total",) if "total" in self.stats_read else ()
        self.stats_hinted = stats_hinted
        self.save_images.put(save_images)
        self._rois = Regions(self)
        self.rois = rois or {}
        #: the last point's statistics, (regions, `stats.STATS`), when they were known, and
        #: the reading keys (`_stat_keys`) they were recorded under
        self._point_stats: tuple[dict[str, tuple[int, int, str]], np.ndarray, float] | None = None
        self._reading = False  #: in `read`: the image's datum may be read (`ImageDatum`)
        #: the run (its start's uid) of the last staging within a run, and how the camera
        #: was described then: staged again in that run, it must be described alike
        self._described_in: tuple[str, dict[str, Any]] | None = None
        self._stat_keys_made_for: tuple | None = None
        self._stat_key_table: dict[str, tuple[int, int, str]] = {}
        self._destroyed = False
        self._live = LiveControl(name, driver, self._focus_ring)
        self._announce()

    # -- statistics ----------------------------------------------------------------------
    @property
    def file_template(self) -> str:
        """The name of each run's file in `write_dir` (fields {name} {date} {uid} {counter})."""
        return self._file_template

    @file_template.setter
    def file_template(self, template: str) -> None:
        self._file_template = check_template(template)

    @property
    def rois(self) -> Regions:
        """The named regions of interest (`Regions`): ``cam.rois["spot"] = (x, y, w, h)``;
        ``cam.rois = {...}`` replaces them all, each checked as when set one by one."""
        return self._rois

    @rois.setter
    def rois(self, regions: Mapping[str, Sequence[int]]) -> None:
        self._rois.replace(regions)

    @property
    def statistics(self) -> bool:
        """Whether every frame's statistics are measured, stored and read."""
        return self._statistics

    @statistics.setter
    def statistics(self, on: bool) -> None:
        with self._changing("statistics"):
            self._statistics = bool(on)

    @property
    def stats_read(self) -> tuple[str, ...]:
        """The statistics that are readings, of every region."""
        return self._stats_read

    @stats_read.setter
    def stats_read(self, names: Sequence[str]) -> None:
        read = stats.check_names("stats_read", names)
        with self._changing("stats_read"):
            unread = [name for name in getattr(self, "_stats_hinted", ()) if name not in read]
            if unread:
                raise ValueError(
                    f"stats_read={names!r} would leave stats_hinted {tuple(unread)} unread, and "
                    "so not plotted: set stats_hinted first"
                )
            self._stats_read = read

    @property
    def stats_hinted(self) -> tuple[str, ...]:
        """The statistics hinted (plotted live, searched for peaks), of every region."""
        return self._stats_hinted

    @stats_hinted.setter
    def stats_hinted(self, names: Sequence[str]) -> None:
        hinted = stats.check_names("stats_hinted", names)
        with self._changing("stats_hinted"):
            stats.check_hinted(names, self.stats_read)
            self._stats_hinted = hinted

    def _stat_keys(self) -> dict[str, tuple[int, int, str]]:
        """Data key -> (row, column) of its value in `stats.compute`'s values and its region
        in the file, of each reading; made again only when the camera's name, regions or
        statistics read change (every event reads them)."""
        made_for = (self.name, self.statistics, self.stats_read, tuple(self.rois))
        if self._stat_keys_made_for != made_for:
            prefixes = stat_prefixes(self.name, self.rois)
            columns = [stats.STATS.index(stat) for stat in self.stats_read]
            self._stat_key_table = {
                f"{prefix}_{stats.STATS[column]}": (row, column, region)
                for row, (prefix, region) in enumerate(prefixes.items() if self.statistics else ())
                for column in columns
            }
            self._stat_keys_made_for = made_for
        return self._stat_key_table

    def _stat_key(self, external: str | None = None) -> dict[str, Any]:
        key = {
            "source": f"{self.driver.model}:{self.name}:stats",
            "dtype": "number",
            "dtype_numpy": "<f8",
            "shape": [],
        }
        return key if external is None else {**key, "external": external}

    def read(self) -> dict[str, dict[str, Any]]:
        run = self._run
        if run is not None and run.statuses and not run.statuses[-1].done and not run.flying:
            raise RuntimeError(
                f"{self.name} was read before its trigger completed: that point's frames are "
                "not in the file yet, nor their statistics known, so its event would hold "
                f"another point's readings. Wait for the trigger: bps.trigger({self.name}, "
                "wait=True), or bps.wait() before reading (trigger_and_read does)"
            )
        self._reading = True
        try:
            readings = self._read_signals()
        finally:
            self._reading = False
        if not self._images:
            readings.pop(self.image.name, None)
        keys = self._stat_keys()
        point = self._point_stats
        if point is not None and point[0] is keys:
            table, timestamp = point[1].tolist(), point[2]
            for key, (row, column, _) in keys.items():
                readings[key] = {"value": table[row][column], "timestamp": timestamp}
        else:  # none measured yet, or under other names or regions than now
            for key in keys:
                readings[key] = {"value": float("nan"), "timestamp": 0.0}
        return readings

    def _read_signals(self) -> dict[str, dict[str, Any]]:
        """ophyd's `Device.read`, the components read found again only when a kind changed:
        ophyd tests every component's kind, flag by flag, at every read (35 us an event of
        this camera's twenty components)."""
        kinds = tuple(component.kind for component in self._components)
        if kinds != self._read_for:
            self._read_components = [
                component
                for component, kind in zip(self._components, kinds, strict=True)
                if kind & Kind.normal
            ]
            self._read_for = kinds
        readings: dict[str, dict[str, Any]] = {}
        for component in self._read_components:
            readings.update(component.read())
        return readings

    def subscribe(self, callback: Any, event_type: Any = None, run: bool = True) -> int:
        """ophyd's; a camera has no default subscription for a RunEngine's `monitor` to
        use, which then failed in ophyd's words: this says what to monitor instead."""
        if event_type is None:
            raise ValueError(
                f"{self.name} cannot be monitored: its frames are taken by triggers (count, "
                "scan) or a movie; monitor one of its signals instead "
                f"({self.name}.frames_written)"
            )
        return int(super().subscribe(callback, event_type, run))

    @property
    def hints(self) -> dict[str, list[str]]:
        fields = list(super().hints["fields"])
        hinted = self.stats_hinted
        fields += [
            key
            for key, (_, column, _) in self._stat_keys().items()
            if stats.STATS[column] in hinted
        ]
        return {"fields": fields}

    def destroy(self) -> None:
        """Give the camera back: end any run still staged (its file is kept), end the writer
        process, free its ring and close the driver (a vendor SDK may hold a camera until
        its handle is closed). Safe twice."""
        try:
            self._live.stop()
            if self._staged.name == "yes":
                self.unstage()
        finally:
            self._drop_writer()
            self.driver.close()
            self._destroyed = True
        super().destroy()

    def _refuse_driver_in_use(self) -> None:
        """One driver drives one run at a time: two cameras on one driver object staged
        together failed once the second started the driver, after the first had begun its
        run, in the first's words."""
        for other in list(_RUNNING):
            if other is not self and other.driver is self.driver:
                raise RuntimeError(
                    f"{self.name}'s driver drives {other.name}, staged with a run in "
                    f"progress: give each camera a driver of its own, or stage one at a time"
                )

    def _refuse_destroyed(self) -> None:
        if self._destroyed:
            raise RuntimeError(
                f"{self.name} was destroyed (its driver closed, its writer ended): make the "
                "camera anew, SCMOSCamera(...)"
            )

    # -- live view -------------------------------------------------------------------------
    def live(self, on: bool = True, *, host: str = "127.0.0.1", port: int = 0) -> str | None:
        """Watch the camera in a web page; returns its address (also printed). With no run
        staged the camera free-runs into no file (focus mode: internal trigger, at most 30
        frames/s, settings take effect at once); a run pauses focus mode and shows its own
        frames. `live(False)` stops both. The page is served on `host` (this computer only,
        by default) at `port` (0: a free one), to whoever has the token in its address."""
        if not on:
            with self._settings_lock:  # focus mode gives the user's settings back whole
                self._live.stop()
            return None
        self._refuse_destroyed()
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0 (any free one) to 65535, got {port!r}")
        with self._settings_lock:
            url = self._live.start(host, port)
        print(f"{self.name} live view: {url}")
        return url

    def _announce(self) -> None:
        """Tell the live view the camera's settings and regions (a no-op without one)."""
        live = getattr(self, "_live", None)  # settings are set while the camera is made
        if live is None:
            return
        settings = {
            attr: getattr(self, attr).get()
            for attr in (
                *("exposure_time", "acquire_period", "roi", "binning", "bit_depth"),
                *("trigger_mode", "frames_per_point"),
            )
        }
        live.announce(
            camera=self.name,
            model=self.driver.model,
            sensor_shape=list(self.driver.sensor_shape),
            settings={k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
            rois={name: list(region) for name, region in self.rois.items()},
        )

    def _focus_ring(self) -> FrameRing:
        """The writer's ring, fitting the camera's frames now: focus mode runs into it."""
        shape, dtype = self.driver.frame_shape, np.dtype(self.driver.dtype)
        return self._ensure_writer().ring_for(shape, dtype, self.options.slots_for(shape, dtype))

    def _ensure_writer(self) -> WriterProcess:
        """The camera's writer process: started at first need, replaced where it died or
        was stopped (between runs it holds no file: a run would wait for it in vain)."""
        if self._writer is not None and self._writer.alive and self._writer.stopped:
            warnings.warn(
                f"{self.name}'s writer process (pid {self._writer.pid}) was stopped (SIGSTOP, "
                "or a debugger): a new one writes from now on",
                RuntimeWarning,
                stacklevel=2,
            )
            self._writer.kill()
        if self._writer is None or not self._writer.alive:
            self._drop_writer()
            self._writer = writer = WriterProcess()
            # A camera dropped without destroy() still ends its writer and frees its ring.
            self._writer_finalizer = weakref.finalize(self, writer.shutdown)
        return self._writer

    def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            if self._writer_finalizer is not None:
                self._writer_finalizer.detach()
            writer.shutdown()

    # -- settings -------------------------------------------------------------------------
    def _sync_settings_from_driver(self) -> bool:
        """Set the setting signals to what the driver applies; returns whether one changed
        (the driver was configured directly, `cam.driver.configure(...)`)."""
        s = self.driver.settings
        applied = {
            "exposure_time": s.exposure_time,
            "acquire_period": s.acquire_period,
            "roi": (s.roi or ROI.full(self.driver.sensor_shape)).as_tuple(),
            "binning": s.binning,
            "bit_depth": s.bit_depth,
            "trigger_mode": TriggerMode.coerce(s.trigger_mode).value,
        }
        changed = False
        for attr in DRIVER_SETTINGS:
            signal, value = getattr(self, attr), applied[attr]
            if _plain(signal.get()) != value:
                Signal.put(signal, value)
                changed = True
        return changed

    @contextlib.contextmanager
    def _changing(self, setting: str) -> Iterator[None]:
        """Around a change of what lays out a run's file and documents (a setting, the
        regions, the statistics read): refused while staged (it waits for unstage), and one
        at a time with stage and unstage (`_settings_lock`), so that a change from another
        thread never lands mid-stage."""
        with self._settings_lock:
            if self._staged.name == "yes":
                raise RuntimeError(
                    f"{self.name}.{setting} cannot change while {self.name} is staged"
                )
            yield

    def _apply_setting(self, attr: str, value: Any) -> None:
        """Check `value` for setting `attr` and have the camera take it (inside
        `_changing`)."""
        if attr in ("frames_per_point", "num_frames"):
            least = 1 if attr == "frames_per_point" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{attr} must be an integer >= {least}, got {value!r}")
            if attr == "frames_per_point" and value > MAX_FRAMES_PER_POINT:
                raise ValueError(
                    f"frames_per_point must be at most {MAX_FRAMES_PER_POINT} (a point's frames "
                    f"are measured and numbered together), got {value}; record longer series "
                    "as a movie (ophyd_scmos.plans.movie)"
                )
            return
        if attr == "save_images":
            if not isinstance(value, bool):
                raise ValueError(f"save_images must be True or False, got {value!r}")
            return
        if attr == "duration":
            if not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"duration must be finite seconds >= 0, got {value!r}")
            return
        if attr == "roi" and value is not None:
            # The driver checks the values (integers, inside the sensor); here only the form.
            if (
                isinstance(value, (str, bytes))
                or not isinstance(value, Sequence)
                or len(value) != 4
            ):
                raise ValueError(
                    f"roi must be (x, y, width, height) in sensor pixels, got {value!r}"
                )
            value = ROI(*value)
        elif attr == "trigger_mode":
            value = TriggerMode.coerce(value)
        with self._live.settings_change():  # focus mode, if on, stopped: the user's settings
            self.driver.configure(dataclasses.replace(self.driver.settings, **{attr: value}))
            # what the camera took (an exposure rounded to its clock; roi None: the whole
            # sensor), and what it changed with it: the run records what the camera uses
            self._sync_settings_from_driver()

    @property
    def settings(self) -> CameraSettings:
        return self.driver.settings

    # The pipeline's options, as the keywords that gave them (read-only: set at creation).
    ring_mb = property(lambda self: self.options.ring_mb)
    ring_frames = property(lambda self: self.options.ring_frames)
    overflow = property(lambda self: self.options.overflow)
    compression = property(lambda self: self.options.compression)
    write_limit_mb_s = property(lambda self: self.options.write_limit_mb_s)

    @property
    def _mode(self) -> TriggerMode:
        return TriggerMode.coerce(self.trigger_mode.get())

    @property
    def _images(self) -> bool:
        return bool(self.save_images.get())

    @property
    def _k(self) -> int:
        return int(self.frames_per_point.get())

    # -- staging: one file and one writer process per run -----------------------------------
    def stage(self) -> list[object]:
        # A setting changed from another thread (a live view, a script) waits for the stage
        # to end, and is then refused: the run's file, documents and camera agree.
        with self._settings_lock:
            return self._stage()

    def _stage(self) -> list[object]:
        self._refuse_destroyed()
        if self._staged.name == "yes":  # ophyd would only say RedundantStaging
            raise RuntimeError(f"{self.name} is already staged; unstage it first")
        if not self.statistics and not self._images:
            raise ValueError(
                f"{self.name}: save_images=False with statistics=False would keep nothing of "
                "the frames; turn one of them on"
            )
        try:
            regions = (
                stats.check_regions(self.rois, self.driver.frame_shape) if self.statistics else None
            )
        except ValueError as exc:  # a region set before a new roi or binning
            raise ValueError(
                f"{self.name}: {exc}, as its roi and binning now make it: set the region "
                f"anew ({self.name}.rois[name] = (x, y, width, height)) or remove it "
                f"(del {self.name}.rois[name])"
            ) from None
        self._check_staged_alike(run_of_caller())
        self._refuse_driver_in_use()
        self._stop_interrupted()
        write_dir = prepare_dir(self.write_dir)
        self._live.run_staging()  # focus mode, if on, gives the camera to the run
        if self._sync_settings_from_driver():  # the driver configured directly since
            self._announce()
        self._warn_period_under_exposure()
        try:
            stream = self._open_stream(write_dir, regions)
        except BaseException:
            self._drop_writer()  # a failed stage leaves nothing: no process, no ring
            self._live.run_ended()
            raise
        assert stream.ring is not None
        self._live.run_started(stream.ring, str(stream.path))
        path = stream.path
        self._run, self._flown = _Run(stream, AssetDocs(path, write_dir)), None
        self._run.saved_events = SavedEvents.of_staging_engine(
            (self.image.name, self.frame_number.name), self._event_saved
        )
        _RUNNING.add(self)
        _close_runs_first_at_exit()
        for sig in (self.frames_written, self.frames_dropped, self.frames_missed):
            sig.put(0)
        self.file_path.put(str(path))
        self._point_stats = None
        try:
            return super().stage()
        except Exception:
            self._finish_run()
            self._live.run_ended()
            raise

    def _check_staged_alike(self, run: str | None) -> None:
        """Staged again within run `run` (a plan that unstages and stages its camera between
        points), the camera must be as it was at the run's first staging: the run's events
        are described and its configuration recorded once, a stream's images are read as one
        shape, and its statistics are of the same regions."""
        if run is None:
            return
        state = {
            **self.describe(),
            **{  # the regions too (`regions`)
                key: reading["value"]
                for key, reading in self.read_configuration().items()
                if key != self.file_path.name  # each staging's own file
            },
        }
        if self._described_in is not None and self._described_in[0] == run:
            before = self._described_in[1]
            changed = sorted(
                key for key in before.keys() | state.keys() if before.get(key) != state.get(key)
            )
            if changed:
                raise ValueError(
                    f"{self.name} was staged again within run {run} with other settings or "
                    f"regions ({', '.join(changed)}): a run's events are described, and its "
                    "configuration recorded, once, at its first staging; take these settings "
                    "in a run of their own"
                )
        self._described_in = (run, state)

    def _open_stream(self, write_dir: Path, regions: dict[str, stats.Region] | None) -> FrameStream:
        """This run's file, and the stream that fills it through the camera's writer.

        A warm writer killed just before this stage may not be seen as gone yet (its exit
        not yet reaped): the run then goes to a new writer, as it would a moment later.
        """
        kept = self._writer
        writer = self._ensure_writer()

        def open_stream(path: Path) -> FrameStream:
            stream = FrameStream(
                self.driver,
                path,
                self.options,
                attrs=self._file_attrs(),
                on_progress=self._on_progress,
                gated=self._mode is not TriggerMode.SOFTWARE,
                writer=writer,
                regions=regions,
                images=self._images,
            )
            stream.open()
            return stream

        try:
            return create_next(write_dir, self.file_template, self.name, open_stream)
        except OSError:
            if writer is not kept or not writer.ended.is_set():
                raise
        self._drop_writer()
        writer = self._ensure_writer()
        return create_next(write_dir, self.file_template, self.name, open_stream)

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
            "save_images": self._images,
            "compression": self.options.compression or "none",
            "start_time": time.time(),
        }

    def unstage(self) -> list[object]:
        staged_by = (
            None
            if self._run is None or self._run.saved_events is None
            else (self._run.saved_events.engine)
        )
        engine = engine_of_caller()
        if engine is not None and staged_by is not None and engine is not staged_by:
            # a plan's finalizing, its own stage refused: the run of the other goes on
            warnings.warn(
                f"{self.name} was not unstaged: another RunEngine staged it, whose run goes "
                "on (paused?) into its file",
                RuntimeWarning,
                stacklevel=2,
            )
            return []
        with self._settings_lock:  # the live view takes the camera back before any setting
            try:
                self._finish_run()
            finally:
                result = super().unstage()
                self._live.run_ended()
                self._give_settings_back()
        return result

    def restore_at_unstage(self, settings: Mapping[Signal, Any]) -> None:
        """Settings to give back once this camera is unstaged, however its run ends: a plan
        that changes them for one run (`movie`) cannot count on its own cleanup, which
        RE.halt() skips, and the RunEngine unstages the camera even then."""
        self._settings_after_run = dict(settings)

    def _give_settings_back(self) -> None:
        """`restore_at_unstage`'s settings; one refused (a camera gone) only warns: the
        error the user sees is why the run failed."""
        settings, self._settings_after_run = self._settings_after_run, {}
        for signal, value in settings.items():
            try:
                signal.put(value)
            except Exception as exc:
                warnings.warn(f"{signal.name} was not set back to {value!r}: {exc}", stacklevel=3)

    def _stop_interrupted(self) -> None:
        """Stop the camera of a run whose close was interrupted (Ctrl-C) before it stopped,
        and the frames it was still reading; its file stays with the writer, which closes it,
        with every frame, as never finished when the next run's opens."""
        stream, self._interrupted = self._interrupted, None
        if stream is not None:
            stream.stop_acquiring()

    def _finish_run(self) -> None:
        """Close the file, keeping exactly the frames a run recorded.

        Frames of a trigger whose event never came (abort, stop, Ctrl-C) are cut, also where
        no event came at all (stopped during the first point). Without a RunEngine staging
        the camera or collecting its documents (or in a fly scan), every frame is kept.
        """
        run, self._run = self._run, None
        _RUNNING.discard(self)
        if run is None:
            return
        if run.saved_events is not None:
            run.saved_events.close()
        if run.flying:
            self._flown = run
        stream = run.stream
        keep = None
        recording = run.recorded_points is not None or run.saved_events is not None
        if recording and not run.flying:
            keep = (run.recorded_points or 0) * self._k
        try:
            summary = stream.close(keep=keep)
        except StreamError as exc:
            self._update_signals(stream)
            if exc is not run.reported_error or run.paused:
                raise
            return
        except BaseException:  # Ctrl-C: the next stage stops what it left running
            self._interrupted = stream
            raise
        finally:
            self._warn_lost(stream)
            self._warn_period(stream)
            if self._writer is not None and not self._writer.alive:
                self._drop_writer()  # it died: free its ring now, start another next run
        self._update_signals(stream)
        self.frames_written.put(summary.frames_written)
        if (
            run.flying
            and not run.staged_by_kickoff
            and run.collected < summary.frames_written
            and run_of_caller() is None  # the run has ended: no collect comes after this
        ):
            warnings.warn(
                f"{self.name}: {summary.frames_written - run.collected} of the "
                f"{summary.frames_written} frames in {stream.path} were never collected into "
                "the run, which holds the first "
                f"{run.collected}: the camera recorded until it was unstaged, and no collect "
                f"came after them. Let complete({self.name}) end the recording, then collect; "
                "or collect before the run closes (ophyd_scmos.plans.movie does both)",
                RuntimeWarning,
                stacklevel=2,
            )
        if run.ended_on_time and stream.frames_taken == 0:
            warnings.warn(
                f"{self.name} recorded no frame: the movie ended before the camera delivered "
                "one (a duration shorter than the frame period, or no pulse at an external "
                f"trigger input); {stream.path} holds none",
                RuntimeWarning,
                stacklevel=2,
            )

    def _warn_lost(self, stream: FrameStream) -> None:
        if stream.frames_dropped or stream.frames_missed:
            warnings.warn(
                f"{self.name}: {stream.frames_missed} frame(s) missed by the camera and "
                f"{stream.frames_dropped} dropped from a full ring; {stream.path} records "
                "the counts (frames_missed, frames_dropped) and the gaps in frame_number",
                RuntimeWarning,
                stacklevel=3,
            )

    def _warn_period_under_exposure(self) -> None:
        """A free-run period shorter than the exposure is not kept: frames come an exposure
        apart. Said before the run, as its documents record the period asked."""
        s = self.driver.settings
        if s.trigger_mode is TriggerMode.INTERNAL and 0 < s.acquire_period < s.exposure_time:
            warnings.warn(
                f"{self.name}: acquire_period {s.acquire_period * 1e3:.3g} ms is shorter than "
                f"the exposure of {s.exposure_time * 1e3:.3g} ms: the camera takes a frame "
                f"every {s.frame_interval * 1e3:.3g} ms. The run records the period asked; set "
                f"{self.name}.acquire_period to 0 (as fast as the exposure allows) or to at "
                "least the exposure",
                RuntimeWarning,
                stacklevel=3,
            )

    def _warn_period(self, stream: FrameStream) -> None:
        """Free-running frames that did not keep the period asked (SDKs that ignore it, as
        many Micro-Manager adapters do): say so, as the file records the period asked."""
        s = self.driver.settings
        if s.trigger_mode is not TriggerMode.INTERNAL or s.acquire_period <= s.exposure_time:
            return  # as fast as the exposure allows: no period to keep
        measured = stream.frame_interval
        if measured is not None and not 0.8 <= measured / s.acquire_period <= 1.25:
            warnings.warn(
                f"{self.name}: frames came {measured * 1e3:.3g} ms apart, not the "
                f"acquire_period of {s.acquire_period * 1e3:.3g} ms asked: the camera (or its "
                f"SDK's adapter) does not keep it. {stream.path} records the period asked; "
                "its frame times are the camera's",
                RuntimeWarning,
                stacklevel=3,
            )

    def _update_signals(self, stream: FrameStream) -> None:
        """Put the stream's counts where they changed (each event asks, most often for none)."""
        for signal, value in (
            (self.frames_written, stream.frames_written),
            (self.frames_dropped, stream.frames_dropped),
            (self.frames_missed, stream.frames_missed),
            (self.ring_fill, stream.ring_fill),
        ):
            if signal.get() != value:
                signal.put(value)

    def _on_progress(self, stream: FrameStream) -> None:
        """The stream's progress (its writer's status thread): signals, then statuses."""
        self._update_signals(stream)
        run = self._run
        if run is None or run.stream is not stream:
            return
        settled = stream.frames_written + stream.frames_dropped + stream.frames_missed
        for status in run.pending():
            status.update(settled)

    def _require_run(self, action: str) -> _Run:
        if self._run is None:
            raise RuntimeError(
                f"{self.name} must be staged before {action}: plans stage their detectors "
                f"(count([{self.name}]), scan([{self.name}], ...)); a camera only in a "
                "baseline or among a plan's other devices is not"
            )
        return self._run

    # -- step scans ------------------------------------------------------------------------
    def trigger(self) -> FrameStatus:
        """Take this point's frames; done when they are in the file and their statistics
        are known."""
        run = self._require_run("trigger()")
        if run.flying:
            raise RuntimeError(f"{self.name} is flying; trigger() is for step scans")
        staged_by = run.saved_events.engine if run.saved_events is not None else None
        engine = engine_of_caller() if staged_by is not None else None
        if engine is not None and engine is not staged_by:  # before it touches that run
            raise RuntimeError(
                f"{self.name} is staged by another RunEngine, whose run (paused?) records into "
                f"{run.stream.path}: trigger it from that RunEngine, or once its run has ended"
            )
        stream, k, point = run.stream, self._k, run.points
        run.points += 1
        if point == 0 and stream.run is None:
            # Told with the first point, not its event: the file of a run killed during it
            # still names its run, which `recover` then closes without guessing.
            uid = run_of_caller()
            if uid is not None:
                stream.record_run(uid)
        first = stream.allow(k)
        status = run.add_status(FrameStatus(self, initial=point * k, target=(point + 1) * k))
        if not self._images:
            pass  # the file has no frames to point at
        elif self.asset_docs == "resource":
            self.image.put(run.docs.datum(point, k))
        else:
            run.docs.stream({self.image.name: layout.DATA}, k)
            run.docs.stream_datum(point, point + 1)

        def done(error: BaseException | None) -> None:
            self._update_signals(stream)
            lost = stream.frames_dropped + stream.frames_missed
            if error is None and lost:
                why, remedy = (
                    ("writing fell behind", "a larger ring_mb, compression, or a longer exposure")
                    if stream.frames_dropped
                    else (
                        "the camera did not deliver them (its buffer overflowed while reading "
                        "fell behind, or its link lost them)",
                        "a longer exposure or acquire_period (a networked camera's link: "
                        "docs/cameras.md)",
                    )
                )
                error = StreamError(
                    f"{self.name} lost {lost} frame(s) ({stream.frames_missed} missed by the "
                    f"camera, {stream.frames_dropped} dropped from a full ring): {why}; each "
                    "event must hold its own frames, so the scan stops. "
                    f"{stream.path} keeps the {stream.frames_written} frames written. "
                    f"Use {remedy}."
                )
            if error is None:
                # Called on the writer's listener thread: whatever fails here fails this
                # point, never that thread (every later status would wait forever).
                try:
                    if self.statistics:  # made readings in `read`, once
                        values = stats.combine(stream.frame_stats(point * k, (point + 1) * k))
                        self._point_stats = (self._stat_keys(), values, time.time())
                    number, timestamp = stream.frame_info(first)
                    self.frame_number.put(number)
                    self.frame_time.put(timestamp)
                except Exception as exc:
                    error = StreamError(f"{self.name}: {exc}")
            if error is not None:
                run.reported_error = error
                status.set_exception(error)
                return
            status.set_finished()

        # Waiting first asks the writer to flush these frames before they exist, so the
        # request is there when they arrive and the writer flushes them at once.
        stream.wait_for((point + 1) * k, done)
        if status.done:
            # Settled before its trigger: frames the camera reported lost since the last
            # point count as this one's, so it failed, and ophyd stopped the camera for it.
            return status
        if self._mode is TriggerMode.SOFTWARE and stream.error is None:  # else failed, saying why
            try:
                self.driver.software_trigger(k)
            except Exception:
                # The stream failed meanwhile (the camera lost on its thread) and stopped the
                # camera, which now refuses triggers: the status fails saying why it stopped.
                if stream.error is None:
                    raise
        return status

    def pause(self) -> None:
        """RunEngine pause (or a suspender's): let a step scan's triggered frames land, so
        `resume` knows the file. A movie records on through the pause, and its plan goes on
        from where it was when resumed: replayed from its checkpoint, it would kick the
        camera off again, which one staging's one movie refuses."""
        from bluesky.utils import NoReplayAllowed

        run = self._run
        for status in [] if run is None or run.flying else run.pending():
            with contextlib.suppress(Exception):  # a failure is the plan's to report
                status.wait(timeout=PAUSE_WAIT)
        super().pause()
        if run is not None:
            run.paused = True
        if run is not None and run.flying:
            raise NoReplayAllowed(f"{self.name} records a movie: it goes on through a pause")

    def resume(self) -> None:
        """RunEngine resume: cut frames of points whose events never came (the plan rewinds
        and takes them again), so point numbers keep matching the file. A RunEngine whose
        plan is not rewindable (`rewindable_wrapper(plan, False)`) goes on where it paused,
        with the point triggered before: nothing is cut."""
        run = self._run
        if run is not None:
            run.paused = False
        engine = run.saved_events.engine if run is not None and run.saved_events else None
        rewinds = engine is None or engine.rewindable
        if run is not None and not run.flying and rewinds:
            self._let_triggered_frames_land(run)
            recorded = run.recorded_points or 0
            if run.points > recorded:
                try:
                    run.stream.truncate(recorded * self._k)
                except StreamError:  # the writer died while paused: the run cannot go on,
                    pass  # and its next trigger ends it with the error (a resume that raised
                    # would leave the RunEngine paused)
                else:
                    run.docs.drop_datums_from(recorded)
                    run.cut_at_resume += run.points - recorded
                    run.points = recorded
        super().resume()

    def _let_triggered_frames_land(self, run: _Run) -> None:
        """Wait for frames triggered before the pause that are still coming (exposures
        longer than `pause` waits): cut before they land, they would be the first of the
        point taken again, and its own last frame cut. A camera silent meanwhile fails its
        stream, which ends the wait."""
        interval = self.driver.settings.frame_interval
        for status in run.pending():
            owed = max(0, status.target - run.stream.frames_taken)
            with contextlib.suppress(Exception):  # a failure is the plan's to report
                status.wait(timeout=owed * interval + SILENCE_SECONDS)

    def collect_asset_docs(self, index: int | None = None) -> Iterator[tuple[str, dict]]:
        run = self._run or self._flown
        if run is None:
            return
        if run.flying:
            self._check_fly_stream(run, stream_of_caller())
            stop = self.get_index() if index is None else min(index, self.get_index())
            run.docs.stream_datum(run.collected, stop)
            run.collected = max(run.collected, stop)
        else:
            if run.recorded_points is None:
                run.recorded_points = 0
            if run.refused is not None:  # what went wrong first, not a consequence of it
                raise run.refused
            try:
                self._check_event(run, bundle_of_caller())
            except RuntimeError as exc:
                run.refused = exc
                raise
            run.read_points = run.points
        docs = run.docs.drain()
        if run.flying or run.saved_events is None:
            # Saved at once (a fly scan's collect), or no word will come: count it saved.
            self._event_saved(run)
        yield from docs

    def _check_event(self, run: _Run, bundle: tuple[str, str] | None) -> None:
        """Refuse an event whose frames would not be the next rows of the one stream of the
        one run the camera's file serves: catalogs read a stream's images as the file's
        frames in order, from the first (`bundle`: the run and stream being read into)."""
        assert run.recorded_points is not None
        new = run.points - run.recorded_points
        if new == 0:
            since = "its last event" if run.points else "it was staged for this run"
            resumed = (
                "; its point triggered before the plan paused was cut as it resumed, for the "
                "plan to take it again from its last checkpoint, which comes after that "
                "trigger: put the checkpoint before the trigger (bluesky's plans do)"
                if run.cut_at_resume
                else ""
            )
            raise RuntimeError(
                f"{self.name} was read into an event with no trigger since {since}: an "
                "event's frames are those of the trigger before it (trigger_and_read), and "
                f"two events may not point at the same frames{resumed}"
            )
        if new > 1:
            raise RuntimeError(
                f"{self.name} was triggered {new} times since its last event: each trigger's "
                "frames must be read into an event of their own, in order (a stream's images "
                f"are the file's frames in order), and {new - 1} trigger(s) were never read "
                "into a saved event (or the event was dropped: bps.drop)"
            )
        if bundle is None:
            return
        if run.bundle is None:
            run.bundle = bundle
            run.stream.record_run(bundle[0])
        elif bundle[0] != run.bundle[0]:
            raise RuntimeError(
                f"{self.name} was staged once for two runs: its file is one run's; stage it "
                "within each run (bluesky's plans do: bpp.stage_decorator inside "
                "bpp.run_decorator)"
            )
        elif bundle[1] != run.bundle[1]:
            raise RuntimeError(
                f"{self.name}'s frames went to stream {run.bundle[1]!r} of this run, and now "
                f"to {bundle[1]!r}: a camera's file serves one stream per run (catalogs read a "
                "stream's images as the file's frames in order); take the other frames in a "
                "run of their own (darks, flats), or read the camera into one stream"
            )

    def _check_fly_stream(self, run: _Run, stream: str | None) -> None:
        """Refuse a movie's frames collected into a second stream: a stream's images are the
        file's frames in order, from the first, so each would hold them all."""
        if stream is None:
            return
        if run.fly_stream is None:
            run.fly_stream = stream
        elif stream != run.fly_stream:
            raise RuntimeError(
                f"{self.name}'s frames were collected into stream {run.fly_stream!r} of this "
                f"run, and now into {stream!r}: a camera's file serves one stream per run "
                "(catalogs read a stream's images as the file's frames in order); collect "
                "the camera into one stream"
            )

    def _event_saved(self, run: _Run | None = None) -> None:
        """The RunEngine saved an event holding the camera's last reading: the points read
        are recorded, and the documents collected with them are in the run."""
        run = run or self._run
        if run is not None:
            if not run.flying:
                run.recorded_points = run.read_points
            run.docs.saved()

    def describe(self) -> dict[str, dict]:
        description = super().describe()
        if self._images:
            description[self.image.name] = self._image_key(per_point=True)
        else:
            description.pop(self.image.name, None)
        for key in self._stat_keys():
            description[key] = self._stat_key()
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
        if self._run is not None:
            self._run.stream.stop()
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
        staged_here = self._staged.name != "yes"
        if staged_here:
            self.stage()
        run = self._require_run("kickoff()")
        if run.points:
            raise RuntimeError(f"{self.name} took step-scan points in this staging")
        if run.flying:
            raise RuntimeError(
                f"{self.name} was kicked off already in this staging: a staging records one "
                "movie, which its complete() ends; stage the camera again for another"
            )
        run.flying, run.staged_by_kickoff = True, staged_here
        uid = run_of_caller()
        if uid is not None:
            run.stream.record_run(uid)
        n = int(self.num_frames.get())
        run.stream.allow(n if n else 2**62)
        datasets = file_columns(self.name, self.rois)
        run.docs.stream({key: datasets[key] for key in self.describe_collect()}, 1)
        status = Status(self)
        status.set_finished()
        return status

    def complete(self) -> FrameStatus:
        """Done when `num_frames` frames (or `duration` seconds) are recorded and in the file."""
        run = self._require_run("complete()")
        if not run.flying:
            raise RuntimeError(f"{self.name}.complete() needs kickoff() first")
        stream = run.stream
        n, seconds = int(self.num_frames.get()), float(self.duration.get())
        expected = n or round(seconds / self.driver.settings.frame_interval)
        status = run.add_status(FrameStatus(self, initial=0, target=expected))
        started = time.monotonic()
        # A free-running camera silent at the end of a timed movie stopped sending (before
        # its driver could tell): the movie did not get its time's frames.
        free_running = self._mode is TriggerMode.INTERNAL
        quiet_limit = max(1.0, 5 * self.driver.settings.frame_interval)

        def finish() -> None:
            gate = None  #: a timed movie's frames, once its time is up
            try:
                while not stream.error and not stream.stopped:  # stopped: RE stop/abort
                    taken = stream.frames_taken
                    timed_out = seconds and time.monotonic() - started >= seconds
                    if timed_out and free_running and gate is None:
                        # A free-running camera buffers what a writer behind could not take
                        # yet: those frames, or the count of those it lost within the
                        # movie's time, come in first.
                        gate = stream.end_at(expected)
                    if timed_out and free_running and stream.silent_for > quiet_limit:
                        stream.camera_silent()  # its last seconds were never taken
                    elif (n and taken >= n) or (
                        timed_out and (gate is None or taken >= gate or stream.covers(seconds))
                    ):
                        run.ended_on_time = True
                        break
                    time.sleep(0.01)
                stream.stop()
                stream.wait_settled(timeout=60)
                # A timed movie's target was an estimate: the frames taken replace it.
                status.target = min(n, stream.frames_taken) if n else stream.frames_taken
                status.update(status.target)
                if run.staged_by_kickoff:
                    self.unstage()
                status.set_finished()
            except Exception as exc:
                run.reported_error = exc
                status.set_exception(exc)

        threading.Thread(target=finish, name=f"{self.name}-complete", daemon=True).start()
        return status

    def describe_collect(self) -> dict[str, dict]:
        """The frames, their numbers, their times on the camera's clock and on the computer's,
        and their statistics: one row per frame."""
        run = self._run
        stepping = self._mode is TriggerMode.SOFTWARE or (run is not None and run.points)
        if run is not None and not run.flying and stepping:
            raise RuntimeError(
                f"{self.name} is staged for a step scan (trigger_mode "
                f"{self._mode.value!r}, points read as events): collect takes a movie's frames; "
                f"record one with movie({self.name}, ...), or kickoff and complete with "
                "trigger_mode 'internal' or 'external'"
            )
        source = f"{self.driver.model}:{self.name}"
        stat_keys = {key: self._stat_key("STREAM:") for key in self._stat_keys()}
        images = {self.image.name: self._image_key(per_point=False)} if self._images else {}
        return {
            **images,
            self.frame_number.name: {
                "source": source,
                "dtype": "integer",
                "dtype_numpy": "<i8",
                "shape": [],
                "external": "STREAM:",
            },
            self.frame_time.name: {
                "source": source,
                "dtype": "number",
                "dtype_numpy": "<f8",
                "shape": [],
                "external": "STREAM:",
            },
            self._host_time_key: {
                "source": source,
                "dtype": "number",
                "dtype_numpy": "<f8",
                "shape": [],
                "units": "s",
                "external": "STREAM:",
            },
            **stat_keys,
        }

    @property
    def _host_time_key(self) -> str:
        """A movie's column of when each frame reached the computer (time.time()): one clock
        for all cameras, where each camera's own (`frame_time`) is its own."""
        return f"{self.name}_host_time"

    def get_index(self) -> int:
        """Frames in the file that a collect may point at (bluesky's WritesStreamAssets):
        flushed ones only, with their statistics, so a StreamDatum never claims a frame or a
        statistic a killed writer loses."""
        if self._run is not None:
            return self._run.stream.frames_readable
        return int(self.frames_written.get())  # after the file closed: all of it


def _plain(value: Any) -> Any:
    """`value` with numpy scalars (a value computed with numpy: ``np.int64(2)``, a ROI of
    them) as the Python numbers they hold: a run's documents and the writer's configuration
    are JSON, which takes no numpy scalar."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    return value
