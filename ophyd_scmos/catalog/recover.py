"""Closing a run whose acquiring process died, from its cameras' files
(``ophyd-scmos recover --catalog``).

When the acquiring process dies, the catalog holds the run's start, descriptors and what was
written of it: with `CatalogWriter`, its events and images up to a second before; with a
plain TiledWriter, which keeps them in memory until the stop (or until 10,000 pile up),
none. It has no stop, and shows the run "running" forever. Each camera's file survives it
(its writer closes it; `ophyd-scmos recover` clears the mark of one that could not), and
records its run (`layout.Outcome.run`) where the camera was told it before it closed, which
holds wherever the file was moved since; failing that, the descriptor names it: the camera's
``file_path`` is part of its configuration. `close_run`
registers the frames of each file as the images the descriptor announced, the way
TiledWriter would have, and writes the stop, naming each camera's file under
``recovered_from``: a camera's file recovered later still finds the run. The events not yet
written, with the readings of every other device, are in the run's journal where
`CatalogWriter` kept one (`ophyd_scmos.catalog.journal.replay` writes them first); without
one they died with the process: they are not made up.

A run that died before its first event has no descriptor (bluesky writes it with the first
event); its file records its run if the camera was triggered. If not (the run died before
its first point), the run is recognised by its start, which names the camera among its
``detectors`` and was written close to the file's start, and only if no other unfinished run
fits as well. Either way it is closed with no images.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ophyd_scmos.catalog.embedded import PathLike, keeps_streams
from ophyd_scmos.catalog.summary import (
    FILE_PATH_SIGNAL,
    IMAGE_RUN,
    configured_files,
    node_files,
)
from ophyd_scmos.files import local_path

if TYPE_CHECKING:
    from event_model.documents import RunStart

__all__ = ["UnfinishedRun", "close_journaled_run", "close_run", "find_unfinished_run"]

#: the stop document's record of the files `close_run` registered, by camera: a run closed by
#: recovery (rather than by its own process) still takes the files of its other cameras
RECOVERED_FROM = "recovered_from"
#: a recovered stop's record of the stop a run's journal held (the run ended, but the catalog
#: did not take its end) while the run's images are not all registered: a camera's file
#: recovered later makes the run whole, and the run's own stop is then written
ENDED_AS = "ended_as"
#: how long before a file was started its run may have started (a run staging its camera
#: late), and after (a plan staging its camera before it opens its run)
EARLIER, LATER = 24 * 3600.0, 600.0
#: how far apart a file's start and the start of a run without descriptors may be for the
#: file to be that run's: a camera is staged just before its run opens, or just after
NO_DESCRIPTOR_WINDOW = 60.0


@dataclass
class UnfinishedRun:
    """A run without a stop document (or one `close_run` wrote), and the image of it that a
    camera file holds: none (`stream` and `key` None) if the run ended before its first
    event, none either (`key` None) where the camera saved no images, only statistics."""

    run: Any  #: the run's client
    device: str  #: the camera
    path: Path  #: its file
    stream: str | None = None  #: the stream whose descriptor names the file
    key: str | None = None  #: the image's data key in that stream
    #: its description: ``external`` (FILESTORE: or STREAM:), shape
    data_key: dict[str, Any] = field(default_factory=dict)

    @property
    def uid(self) -> str:
        return str(self.run.metadata["start"]["uid"])

    @property
    def recovered(self) -> bool:
        """Whether the run's stop names the file: a recovery registered it already."""
        stop = self.run.metadata.get("stop") or {}
        return _same_file(stop.get(RECOVERED_FROM, {}).get(self.device), self.path)


def cameras_files(run: Any) -> list[Path]:
    """The files of `run`'s cameras that its descriptors name (each camera's ``file_path``
    configuration), that are there and not yet recovered into it."""
    recovered = (run.metadata.get("stop") or {}).get(RECOVERED_FROM, {})
    cameras = _cameras(run)
    files: dict[str, Path] = {}
    for device, path in configured_files(run):
        if (
            device in cameras
            and os.path.isfile(path)
            and not _same_file(recovered.get(device), path)
        ):
            files.setdefault(os.path.realpath(path), Path(path))
    return list(files.values())


def find_unfinished_run(
    catalog: Any,
    path: PathLike,
    device: str,
    started: float,
    *,
    uid: str | None = None,
    recorded: str | None = None,
) -> UnfinishedRun:
    """The unfinished run whose camera `device` was writing `path`, a file it started writing
    at UNIX time `started`; a run a recovery closed counts as unfinished. That is the newest
    run, started around then, whose descriptor configures `device` with that file; failing
    that, the one run without a descriptor for `device` whose start names it among its
    detectors and was written within `NO_DESCRIPTOR_WINDOW` of `started`. `uid` names the
    run instead (still refused if it contradicts the file). `recorded`, the run the file
    records (its outcome's `run`), is its run wherever the file is now (moved since its
    descriptor named it). Raises LookupError if there is none, or several.
    """
    from tiled.queries import Key

    if recorded is not None:
        if uid not in (None, recorded):
            raise LookupError(f"{path} records that its frames are of run {recorded}, not {uid}")
        uid = recorded
    if uid is not None:
        try:
            runs = [catalog[uid]]
        except KeyError:
            raise LookupError(f"no run {uid} in the catalog") from None
    else:
        nearby = catalog.search(Key("start.time") >= started - EARLIER).search(
            Key("start.time") <= started + LATER
        )
        runs = list(reversed(list(nearby.values())))
    signal = f"{device}_{FILE_PATH_SIGNAL}"
    no_descriptor = []
    for run in runs:
        if not unfinished(run):
            continue
        recovered = (run.metadata.get("stop") or {}).get(RECOVERED_FROM, {})
        names_a_file = device in recovered
        for stream in run:
            descriptor = run[stream].metadata
            config = descriptor.get("configuration", {}).get(device, {}).get("data", {})
            names_a_file = names_a_file or signal in config
            named = config.get(signal)  # where the file was written (moved since: recorded)
            if not (
                _same_file(named, path)
                or (recorded is not None and named is not None)
                or (uid is not None and _moved_here(named, path))
            ):
                continue
            for key, info in descriptor.get("data_keys", {}).items():
                if (
                    info.get("object_name") == device
                    and info.get("external")
                    and len(info.get("shape") or ()) >= 2
                ):
                    return UnfinishedRun(run, device, Path(path), stream, key, dict(info))
            return UnfinishedRun(run, device, Path(path), stream)  # a camera saving no images
        found = UnfinishedRun(run, device, Path(path))
        if found.recovered:  # closed, before its first event, from this very file
            return found
        start = run.metadata["start"]
        if not names_a_file and (
            uid is not None
            or (
                device in start.get("detectors", ())
                and abs(start["time"] - started) <= NO_DESCRIPTOR_WINDOW
            )
        ):
            no_descriptor.append(found)
    if len(no_descriptor) == 1:
        return no_descriptor[0]
    if no_descriptor:
        uids = ", ".join(found.uid for found in no_descriptor)
        raise LookupError(
            f"{path} records no run, and several unfinished runs of {device} that ended "
            f"before their first point started when it did: {uids}; name the file's run "
            "with `ophyd-scmos recover --run UID`"
        )
    if uid is not None:
        stop = runs[0].metadata.get("stop") or {}
        if not unfinished(runs[0]):
            raise LookupError(
                f"run {uid} has ended (exit_status {stop.get('exit_status')!r}), its images as "
                "its own process documented them: recover closes runs left unfinished"
            )
        raise LookupError(f"run {uid} names another file of {device}, not {path}")
    raise LookupError(
        f"no unfinished run in the catalog names {path} as the file of {device} "
        f"(configuration {signal}), and none that ended before its first event names "
        f"{device} among its detectors; finished runs are left as they are"
    )


def unfinished(run: Any) -> bool:
    """Whether `run` has no stop, or one a recovery wrote (it still takes cameras' files)."""
    stop = run.metadata.get("stop")
    return not stop or RECOVERED_FROM in stop


def _moved_here(named: Any, path: PathLike) -> bool:
    """Whether `path` may be the file `named` moved: none is there now, and it has its name
    (a file that records no run, moved before its recovery: its run is named by hand)."""
    return (
        isinstance(named, str) and not os.path.exists(named) and Path(named).name == Path(path).name
    )


def _same_file(recorded: Any, path: PathLike) -> bool:
    return isinstance(recorded, str) and os.path.realpath(recorded) == os.path.realpath(path)


def close_run(
    files: Sequence[tuple[UnfinishedRun, Iterable[tuple[str, dict[str, Any]]]]],
    *,
    end_time: float,
    ended: Mapping[str, Any] | None = None,
) -> list[tuple[int, ...] | None]:
    """Register the images of the camera files of one run, each from the asset documents
    that point at it (a Resource and a Datum per point, or a StreamResource and
    StreamDatum, as the device would have emitted them), then write the stop document once
    (``exit_status`` "fail", the reason naming the files; `end_time` or later; the run's own
    stop `ended`, from its journal, where the run ended and every camera's file is
    registered: `_write_stop`). A run a recovery closed before keeps its stop, which then
    names these files too. Returns each image's shape as the catalog now replays it (None
    for a file of a run that ended before its first event, or of a camera that saved no
    images).

    The documents go through bluesky-tiled-plugins' `RunNormalizer` and consolidators, as
    in TiledWriter, so the images read back exactly as those of a run that ended well. An
    image node registered before the process died (a long run's first batches) is replaced
    by one covering the whole file.
    """
    runs = {found.uid for found, _ in files}
    if len(runs) != 1:
        raise ValueError(f"close_run closes one run at a time, not {sorted(runs)}")
    run = files[0][0].run
    nodes = []
    for found, asset_docs in files:
        if found.key is not None:
            nodes.extend(_register_images(found, asset_docs, end_time))
    _write_stop(run, {found.device: found.path for found, _ in files}, end_time, ended)
    streams = dict.fromkeys(found.stream for found, _ in files if found.stream is not None)
    _tell_followers(run, itertools.chain(nodes, (run[name].base for name in streams)))
    return [
        None if found.key is None else tuple(run[found.stream][found.key].shape)
        for found, _ in files
    ]


def close_journaled_run(
    run: Any, *, end_time: float, ended: Mapping[str, Any] | None = None
) -> None:
    """Close `run`, whose journal's events were written into it (`journal.replay`), with no
    camera file named (a motor scan, say): write its stop (``exit_status`` "fail", at
    `end_time`: its journal's last change; or the run's own, `ended`, from its journal,
    where it has no camera: `_write_stop`), which later takes a camera's file all the same
    (`close_run`, "added to run")."""
    _write_stop(run, {}, end_time, ended)
    _tell_followers(run, (run[name].base for name in run))


def _tell_followers(run: Any, nodes: Iterable[Any]) -> None:
    """Tell the catalog that `nodes` of `run`, and the run, ended, where it keeps streams for
    followers (not the embedded catalog: `keeps_streams`)."""
    if keeps_streams(run.context):
        for node in (*nodes, run):
            node.close_stream()


def _register_images(
    found: UnfinishedRun, asset_docs: Iterable[tuple[str, dict[str, Any]]], time: float
) -> list[Any]:
    """Register the image of `found`'s file; return its nodes."""
    from bluesky_tiled_plugins.writing.consolidators import consolidator_factory

    stream = found.run[found.stream].base
    descriptor = dict(stream.metadata)
    resources, datums = _stream_documents(found, descriptor, asset_docs, time)
    nodes = []
    for resource in resources:
        consolidator = consolidator_factory(resource, descriptor)
        for datum in datums:
            if datum["stream_resource"] == resource["uid"]:
                consolidator.consume_stream_datum(datum)
        source = consolidator.get_data_source()
        if consolidator.data_key in stream:
            _forget_partial_image(stream, consolidator.data_key, resource["uri"])
        node = stream.new(
            key=consolidator.data_key,
            structure_family=source.structure_family,
            data_sources=[source],
            metadata={**consolidator.metadata, IMAGE_RUN: found.uid},
            specs=[],
        )
        nodes.append(node)
    return nodes


def _write_stop(
    run: Any, files: dict[str, Path], end_time: float, ended: Mapping[str, Any] | None
) -> None:
    """Write the run's stop naming the `files` of its cameras (added to those of a stop a
    recovery wrote). A run that ended (its journal held its stop, `ended`, which the
    catalog did not take) gets that stop once the catalog holds all of the run: its events
    (the journal's) and every camera's images (its file); until then "fail", keeping it
    (`awaits_files`)."""
    import event_model
    from tiled.client.metadata_update import DELETE_KEY

    stop = run.metadata.get("stop")
    recovered = {
        **(stop[RECOVERED_FROM] if stop else {}),
        **{device: str(path.absolute()) for device, path in files.items()},
    }
    ended = ended or (stop or {}).get(ENDED_AS)
    if ended is not None and _cameras(run) <= recovered.keys():
        note = (
            "the catalog did not take the run's end; written by ophyd-scmos recover from the "
            "run's journal"
            + (f", its images from {', '.join(recovered.values())}" if recovered else "")
        )
        reason = f"{ended['reason']} ({note})" if ended.get("reason") else note
        doc = {**ended, "reason": reason, RECOVERED_FROM: recovered}
        # Tiled merges an update into what is there: the keys of the stop written before
        # (`ENDED_AS`, its event counts) are deleted.
        stale = {key: DELETE_KEY for key in stop or {} if key not in doc}
        run.update_metadata(metadata={"stop": {**doc, **stale}}, drop_revision=True)
        return
    reason = (
        "the run was not closed in the catalog (its acquiring process ended, or the catalog "
        "did not take its end); closed by ophyd-scmos recover from "
        + (
            f"{', '.join(recovered.values())}: its images are the files' frames, its events "
            "those the catalog had or the run's journal kept"
            if recovered
            else "its journal: its events are those the catalog had or the journal kept; no "
            "camera file was named"
        )
    )
    counts = _event_counts(run)
    if stop:
        doc = {**stop, "reason": reason, "time": max(stop["time"], end_time), "num_events": counts}
    else:
        start = cast("RunStart", dict(run.metadata["start"]))
        # ComposeStop reports a counter less one, as bluesky's counters start at 1
        counters = {name: count + 1 for name, count in counts.items()}
        doc = dict(
            event_model.ComposeStop(start=start, event_counters=counters, poison_pill=[])(
                exit_status="fail", reason=reason, time=end_time
            )
        )
    if ended is not None:
        doc[ENDED_AS] = dict(ended)
        doc["reason"] += (
            f"; the run itself ended with exit_status {ended['exit_status']!r}, which its stop "
            "takes once every camera's file is recovered into it"
        )
    run.update_metadata(metadata={"stop": {**doc, RECOVERED_FROM: recovered}}, drop_revision=True)


def _event_counts(run: Any) -> dict[str, int]:
    """The events each stream of `run` holds in the catalog: the rows of its events' table,
    or, for a stream of files' columns only (a movie's, StreamDatum), of those columns. (A
    step scan's images registered from a file do not count: their events may have died.)"""
    counts = {}
    for name in run:
        stream = run[name].base
        data_keys = stream.metadata.get("data_keys", {}).values()
        if all(data_key.get("external") for data_key in data_keys):
            counts[name] = max((stream[key].shape[0] for key in stream), default=0)
        elif "internal" in stream:
            counts[name] = len(stream["internal"].read(columns=["seq_num"]))
        else:
            counts[name] = 0
    return counts


def awaits_files(run: Any) -> bool:
    """Whether `run` ended, but its own stop waits for a camera's file to be recovered into
    it (`_write_stop`)."""
    return ENDED_AS in (run.metadata.get("stop") or {})


def cameras_not_recovered(run: Any) -> list[str]:
    """The cameras of `run`, closed by a recovery, whose files are not yet recovered into it
    (their images are what the catalog had, maybe in part); none for a run that ended on its
    own, or that no recovery closed."""
    stop = run.metadata.get("stop") or {}
    if RECOVERED_FROM not in stop:
        return []
    return sorted(_cameras(run) - stop[RECOVERED_FROM].keys())


def _cameras(run: Any) -> set[str]:
    """The devices whose data in `run` are in files (images: external data keys)."""
    return {
        str(data_key.get("object_name"))
        for name in run
        for data_key in run[name].base.metadata.get("data_keys", {}).values()
        if data_key.get("external")
    }


def _stream_documents(
    found: UnfinishedRun,
    descriptor: dict[str, Any],
    asset_docs: Iterable[tuple[str, dict[str, Any]]],
    time: float,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The StreamResources and StreamDatums TiledWriter would make of `asset_docs`.

    Its normalizer turns a Datum into a StreamDatum when an event points at it: each Datum
    gets an event holding only the image's reference (the events' other readings are lost;
    these events are not stored).
    """
    from bluesky_tiled_plugins.writing.tiled_writer import RunNormalizer

    out: list[tuple[str, dict[str, Any]]] = []
    normalizer = RunNormalizer()
    normalizer.subscribe(lambda name, doc: out.append((name, doc)))
    normalizer("descriptor", {**descriptor, "name": found.stream, "run_start": found.uid})
    key = found.key
    for name, doc in asset_docs:
        normalizer(name, doc)
        if name == "datum":
            normalizer(
                "event",
                {
                    "uid": str(uuid.uuid4()),
                    "descriptor": descriptor["uid"],
                    "seq_num": doc["datum_kwargs"]["point_number"] + 1,
                    "time": time,
                    "data": {key: doc["datum_id"]},
                    "timestamps": {key: time},
                    "filled": {key: False},
                },
            )
    resources = [doc for name, doc in out if name == "stream_resource"]
    return resources, [doc for name, doc in out if name == "stream_datum"]


def _forget_partial_image(stream: Any, key: str, uri: str) -> None:
    """Drop the catalog's record of an image (or a movie's column) registered in part (not
    the file), from this file, or from where it was before it was moved."""
    recorded, path = node_files(stream[key]), str(local_path(uri))
    if recorded != [path] and not all(_moved_here(named, path) for named in recorded):
        raise RuntimeError(
            f"{key} of this run already points at {', '.join(recorded)}, not at "
            f"{local_path(uri)}: not replaced"
        )
    stream[key].delete()
