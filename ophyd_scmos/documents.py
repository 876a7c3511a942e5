"""Asset documents for one run file, composed with event_model.

Step scans get areaDetector's convention (a Resource of spec ``AD_HDF5`` and one Datum per
point), which databroker, area-detector-handlers and Tiled all read. Fly scans, and step
scans that ask for it, get StreamResource/StreamDatum: one StreamDatum per collected page,
read by Tiled as one growing (N, H, W) array.
"""

from __future__ import annotations

import inspect
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import event_model

from ophyd_scmos.files import file_uri
from ophyd_scmos.pipeline import layout, stats

HDF5_MIMETYPE = "application/x-hdf5"


def stat_prefixes(camera: str, regions: Iterable[str]) -> dict[str, str]:
    """The data key prefix of each region's statistics -> the region: ``<camera>_stats`` for
    the whole frame, ``<camera>_<region>`` for a named one (``<prefix>_<stat>`` each)."""
    return {f"{camera}_stats": stats.FRAME, **{f"{camera}_{r}": r for r in regions}}


#: the longest data key a catalog takes, in bytes: Tiled keeps a run's events in SQL tables, a
#: column per key, and refuses a name longer than PostgreSQL's identifiers (on SQLite too)
MAX_KEY_BYTES = 63


def check_key_lengths(keys: Iterable[str]) -> None:
    """ValueError naming the longest of `keys` if a catalog cannot keep it: Tiled would
    refuse the run's events at its first, after the camera had begun taking frames."""
    longest = max(keys, key=lambda key: len(key.encode()), default="")
    if len(longest.encode()) > MAX_KEY_BYTES:
        raise ValueError(
            f"data key {longest!r} is {len(longest.encode())} bytes: a catalog keeps each "
            f"key as a column, whose name ends at {MAX_KEY_BYTES} bytes; shorten the camera's "
            "or the region's name"
        )


def file_columns(camera: str, regions: Iterable[str]) -> dict[str, str]:
    """Data key -> dataset in its file of everything camera `camera` may document as a
    stream of its file: its images, and a movie's columns (frame numbers, the camera's and
    the computer's times, and the statistics of the frame and of each of `regions`)."""
    columns = {
        f"{camera}_image": layout.DATA,
        f"{camera}_frame_number": layout.FRAME_NUMBER,
        f"{camera}_frame_time": layout.TIMESTAMP,
        f"{camera}_host_time": layout.HOST_TIMESTAMP,
    }
    for prefix, region in stat_prefixes(camera, regions).items():
        for stat in stats.STATS:
            columns[f"{prefix}_{stat}"] = layout.stats_path(region, stat)
    return columns


RESOURCES = ("resource", "stream_resource")


class AssetDocs:
    """Queues the asset documents of one file until the RunEngine collects them, and keeps
    those collected until their event is known saved (`saved`).

    bluesky collects a device's documents when it reads it but emits them only with the
    event; an event never saved (a pause's rewind, a plan's drop) takes them with it. A
    Resource lost so would leave every later Datum pointing at nothing, so it is handed out
    again at the next collection.
    """

    def __init__(self, path: Path, root: Path):
        self.path, self.root = path, root
        self._queue: deque[tuple[str, dict]] = deque()
        self._unsaved: list[tuple[str, dict]] = []  #: collected, their event not yet saved
        self._compose_datum: event_model.ComposeDatum | None = None
        #: one composer per StreamResource
        self._stream_datums: list[event_model.ComposeStreamDatum] = []

    # -- AD_HDF5: one Resource, a Datum per point ------------------------------------------
    def datum(self, point: int, frames_per_point: int) -> str:
        """Queue the Datum of `point` (its frames are `point * k` on), return its id."""
        if self._compose_datum is None:
            # No start document: the RunEngine fills in the Resource's run_start.
            bundle = event_model.ComposeResource(start=None)(
                spec="AD_HDF5",
                root=str(self.root),
                resource_path=str(self.path.relative_to(self.root)),
                resource_kwargs={"frame_per_point": frames_per_point},
            )
            self._queue.append(("resource", dict(bundle.resource_doc)))
            self._compose_datum = bundle.compose_datum
        # Per-point documents are not schema-validated: their shape is fixed here (the
        # Resource's is, once), and validating each costs a fifth of a step's own pace.
        datum = self._compose_datum(datum_kwargs={"point_number": point}, validate=False)
        self._queue.append(("datum", dict(datum)))
        return datum["datum_id"]

    # -- streams: StreamResource per data key, StreamDatum per page ------------------------
    def stream(self, data_keys: dict[str, str], frames_per_point: int) -> None:
        """Queue one StreamResource per data key -> dataset, once per file."""
        if self._stream_datums:
            return
        for data_key, dataset in data_keys.items():
            parameters = {"dataset": dataset, "swmr": True}
            if dataset == layout.DATA and frames_per_point > 1:
                parameters["multiplier"] = frames_per_point
            bundle = event_model.ComposeStreamResource(start=None)(
                mimetype=HDF5_MIMETYPE,
                uri=file_uri(self.path),
                data_key=data_key,
                parameters=parameters,
            )
            self._queue.append(("stream_resource", dict(bundle.stream_resource_doc)))
            self._stream_datums.append(bundle.compose_stream_datum)

    def stream_datum(self, start: int, stop: int) -> None:
        """Queue the StreamDatum of rows [start, stop) for every stream of this file."""
        if stop > start:
            for compose in self._stream_datums:
                datum = compose(indices={"start": start, "stop": stop}, validate=False)
                self._queue.append(("stream_datum", dict(datum)))

    def drop_datums_from(self, point: int) -> None:
        """Forget queued Datums and StreamDatums of `point` and later: their events never
        came (a step scan's StreamDatum rows are its points)."""
        self._queue = deque(
            (name, doc)
            for name, doc in self._queue
            if (name != "datum" or doc["datum_kwargs"]["point_number"] < point)
            and (name != "stream_datum" or doc["indices"]["start"] < point)
        )

    def drain(self) -> list[tuple[str, dict]]:
        """The documents to hand the RunEngine now: Resources collected before whose event
        never came, then the queue. The Datums of such an event are dropped with it."""
        unsaved = [(name, doc) for name, doc in self._unsaved if name in RESOURCES]
        unsaved.extend(self._queue)
        self._queue.clear()
        self._unsaved = unsaved
        return list(unsaved)

    def saved(self) -> None:
        """The RunEngine saved the event of everything collected so far."""
        self._unsaved.clear()


def bundle_of_caller(depth: int = 12) -> tuple[str, str] | None:
    """The run (its start document's uid) and the stream (its name) of the event the caller
    is being read into, where a RunEngine's bundler is on the stack (it collects a device's
    documents as it reads it); None elsewhere. bluesky tells a device neither."""
    from bluesky.bundlers import RunBundler

    read = RunBundler.read.__code__  # compared first: a frame's locals cost ~3 us to look at
    frame = inspect.currentframe()
    for _ in range(depth):
        if frame is None:
            return None
        if frame.f_code is read and isinstance(bundler := frame.f_locals["self"], RunBundler):
            # bluesky's own attributes: were they renamed, scans go on without the check
            run, stream = (getattr(bundler, a, None) for a in ("_run_start_uid", "_bundle_name"))
            return None if run is None or stream is None else (str(run), str(stream))
        frame = frame.f_back
    return None


def stream_of_caller(depth: int = 12) -> str | None:
    """The stream a RunEngine's bundler collects the caller's documents into (`collect`),
    where it is on the stack and names one; None elsewhere."""
    from bluesky.bundlers import RunBundler

    collect = RunBundler.collect.__code__
    frame = inspect.currentframe()
    for _ in range(depth):
        if frame is None:
            return None
        if frame.f_code is collect:
            stream = frame.f_locals.get("stream_name")  # bluesky's own local
            return stream if isinstance(stream, str) else None
        frame = frame.f_back
    return None


def run_of_caller(depth: int = 12) -> str | None:
    """The run (its start document's uid) a RunEngine calls the caller for: where one of its
    runs' bundlers is among the locals on the stack (`RunEngine._kickoff` holds it), or where
    the RunEngine handles a message of an open run (`RunEngine._trigger`); None elsewhere.
    A frame's locals cost microseconds to look at: for once-a-run calls."""
    from bluesky.bundlers import RunBundler
    from bluesky.run_engine import RunEngine
    from bluesky.utils import Msg

    frame = inspect.currentframe()
    for _ in range(depth):
        if frame is None:
            return None
        local = frame.f_locals
        bundler = next((v for v in local.values() if isinstance(v, RunBundler)), None)
        engine, msg = local.get("self"), local.get("msg")
        if bundler is None and isinstance(engine, RunEngine) and isinstance(msg, Msg):
            bundler = getattr(engine, "_run_bundlers", {}).get(msg.run)  # bluesky's own
            if bundler is None:
                return None  # a message outside any open run
        if bundler is not None:
            run = getattr(bundler, "_run_start_uid", None)  # bluesky's own attribute
            return None if run is None else str(run)
        frame = frame.f_back
    return None


def engine_of_caller(depth: int = 12) -> Any:
    """The RunEngine calling the caller (staging or unstaging it); None elsewhere."""
    from bluesky import RunEngine

    frame = inspect.currentframe()
    for _ in range(depth):
        if frame is None:
            return None
        engine = frame.f_locals.get("self")
        if isinstance(engine, RunEngine):
            return engine
        frame = frame.f_back
    return None


class SavedEvents:
    """Calls `on_saved()` each time the RunEngine that staged a device emits an event holding
    one of its `keys`.

    bluesky tells a device nothing of which events it saved: it is found on the stack of the
    `stage()` call (the RunEngine calls `stage()` itself) and its documents are listened to
    until `close()`. The RunEngine holds a function that reaches this listener through a
    weak reference, not its bound method: bluesky drops a dead method from its registry in
    whichever thread collects the method's object, which races the RunEngine's own
    subscribing in its thread (a KeyError in `CallbackRegistry._remove_proxy`).
    """

    def __init__(self, engine: Any, keys: Iterable[str], on_saved: Callable[[], None]):
        self.engine, self.keys, self.on_saved = engine, frozenset(keys), on_saved
        listener = weakref.ref(self)

        def on_event(name: str, doc: dict) -> None:
            if (alive := listener()) is not None:
                alive._on_event(name, doc)

        self._token = engine.subscribe(on_event, "event")

    @classmethod
    def of_staging_engine(
        cls, keys: Iterable[str], on_saved: Callable[[], None], depth: int = 12
    ) -> SavedEvents | None:
        """Listen to the RunEngine staging the caller; None if no RunEngine is staging it."""
        engine = engine_of_caller(depth + 1)
        return None if engine is None else cls(engine, keys, on_saved)

    def _on_event(self, name: str, doc: dict) -> None:
        if not self.keys.isdisjoint(doc["data"]):
            self.on_saved()

    def close(self) -> None:
        self.engine.unsubscribe(self._token)
