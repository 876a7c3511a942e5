"""Closing a run whose acquiring process died, from the camera's file
(``ophyd-scmos recover --catalog``).

TiledWriter keeps a run's events and image references in memory until the stop document (or
until 10,000 have piled up): when the acquiring process dies, the catalog holds the run's
start and descriptors, but no images and no stop, and shows the run "running" forever. The
camera's file survives it (its writer closes it; `ophyd-scmos recover` clears the mark of
one that could not), and the descriptor names it: the camera's ``file_path`` is part of its
configuration. `close_run` registers the frames of the file as the images the descriptor
announced, the way TiledWriter would have, and writes the stop. The events themselves, with
the readings of every other device, died with the process: they are not made up.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ophyd_scmos.catalog.embedded import PathLike
from ophyd_scmos.catalog.summary import local_path, node_files

if TYPE_CHECKING:
    from event_model.documents import RunStart

__all__ = ["UnfinishedRun", "close_run", "find_unfinished_run"]

#: the camera's configuration signal that names its file (`SCMOSCamera.file_path`)
FILE_PATH_SIGNAL = "file_path"
#: how long before a file was started its run may have started (a run staging its camera
#: late), and after (a plan staging its camera before it opens its run)
EARLIER, LATER = 24 * 3600.0, 600.0


@dataclass
class UnfinishedRun:
    """A run without a stop document, and the image of it that a camera file holds."""

    run: Any  #: the run's client
    stream: str  #: the stream whose descriptor names the file
    key: str  #: the image's data key in that stream
    data_key: dict[str, Any]  #: its description: ``external`` (FILESTORE: or STREAM:), shape

    @property
    def uid(self) -> str:
        return str(self.run.metadata["start"]["uid"])


def find_unfinished_run(catalog: Any, path: PathLike, device: str, started: float) -> UnfinishedRun:
    """The unfinished run whose camera `device` was writing `path`, a file it started writing
    at UNIX time `started`: the newest run, started around then, whose descriptor configures
    `device` with that file. Raises LookupError if there is none.
    """
    from tiled.queries import Key

    nearby = catalog.search(Key("start.time") >= started - EARLIER).search(
        Key("start.time") <= started + LATER
    )
    signal = f"{device}_{FILE_PATH_SIGNAL}"
    for run in reversed(list(nearby.values())):
        if run.metadata.get("stop"):
            continue
        for stream in run:
            descriptor = run[stream].metadata
            configured = descriptor.get("configuration", {}).get(device, {}).get("data", {})
            if not _same_file(configured.get(signal), path):
                continue
            for key, info in descriptor.get("data_keys", {}).items():
                if (
                    info.get("object_name") == device
                    and info.get("external")
                    and len(info.get("shape") or ()) >= 2
                ):
                    return UnfinishedRun(run, stream, key, dict(info))
    raise LookupError(
        f"no unfinished run in the catalog names {path} as the file of {device} "
        f"(configuration {signal}); finished runs are left as they are"
    )


def _same_file(recorded: Any, path: PathLike) -> bool:
    return isinstance(recorded, str) and os.path.realpath(recorded) == os.path.realpath(path)


def close_run(
    unfinished: UnfinishedRun,
    asset_docs: Iterable[tuple[str, dict[str, Any]]],
    *,
    reason: str,
    end_time: float,
) -> tuple[int, ...]:
    """Register the image `asset_docs` point at (a Resource and a Datum per point, or a
    StreamResource and StreamDatum, as the device would have emitted them), then write a
    stop document (``exit_status`` "fail", `reason`). Returns the image's shape as the
    catalog now replays it.

    The documents go through bluesky-tiled-plugins' `RunNormalizer` and consolidators, as
    in TiledWriter, so the image reads back exactly as that of a run that ended well. An
    image node registered before the process died (a long run's first batches) is replaced
    by one covering the whole file.
    """
    import event_model
    from bluesky_tiled_plugins.writing.consolidators import consolidator_factory

    run = unfinished.run
    stream = run[unfinished.stream].base
    descriptor = dict(stream.metadata)
    resources, datums = _stream_documents(unfinished, descriptor, asset_docs, end_time)
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
            metadata={},
            specs=[],
        )
        if consolidator.metadata:
            node.update_metadata(metadata=consolidator.metadata, drop_revision=True)
        nodes.append(node)
    start = cast("RunStart", dict(run.metadata["start"]))
    stop = event_model.ComposeStop(start=start, event_counters={}, poison_pill=[])(
        exit_status="fail", reason=reason, time=end_time
    )
    run.update_metadata(metadata={"stop": dict(stop)}, drop_revision=True)
    for node in (*nodes, stream, run):  # tell followers of the run that it ended
        node.close_stream()
    return tuple(run[unfinished.stream][unfinished.key].shape)


def _stream_documents(
    unfinished: UnfinishedRun,
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
    normalizer("descriptor", {**descriptor, "name": unfinished.stream, "run_start": unfinished.uid})
    key = unfinished.key
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
    """Drop the catalog's record of an image registered in part (not the file)."""
    recorded = node_files(stream[key])
    if recorded != [str(local_path(uri))]:
        raise RuntimeError(
            f"{key} of this run already points at {', '.join(recorded)}, not at "
            f"{local_path(uri)}: not replaced"
        )
    stream[key].delete()
