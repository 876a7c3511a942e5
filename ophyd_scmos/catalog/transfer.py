"""Runs out of a catalog as documents, and copied from one catalog into another.

A lab records into its embedded catalog and later copies finished runs to a facility's
server (`sync`, ``ophyd-scmos sync``): each run's documents go through a TiledWriter of the
target, so the target indexes it exactly as if it had been written there: a `CatalogWriter`
without a journal (the source keeps the run), which appends each event once where the
target's answer to an append is lost, and makes an image in one request.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ophyd_scmos.catalog.embedded import JSON_SEQ, JSON_SEQ_EXPORTER, PathLike, absolute_path
from ophyd_scmos.catalog.summary import FILE_PATH_SIGNAL, image_nodes, node_files, probe
from ophyd_scmos.files import file_uri, local_path

if TYPE_CHECKING:
    from tiled.client.container import Container

__all__ = ["SyncResult", "documents", "sync"]


def documents(run: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield a run's documents as ``(name, doc)`` pairs, to replay into any callback.

    The catalog rebuilds them from what it stored: start; each stream's descriptor and
    events; a StreamResource and StreamDatum for each image (TiledWriter turned the camera's
    Resource and Datum into these when it wrote the run); stop. Each is a plain dict of its
    own: callbacks such as TiledWriter change what they are given, and ``run.documents()``
    hands out read-only documents.
    """
    from tiled.client.utils import ClientError

    try:
        replaced: set[str] = set()  # descriptors whose events come from their table
        for name, exported in run.documents():
            doc = exported.to_dict()
            if name == "event" and doc["descriptor"] in replaced:
                continue
            yield name, doc
            if name == "descriptor" and (events := _events_of_a_point_taken_again(run, doc)):
                replaced.add(doc["uid"])
                for event in events:
                    yield "event", event
    except ClientError as err:
        if err.response.status_code != 406:
            raise
        raise RuntimeError(
            f"the catalog at {run.uri} does not export documents ({JSON_SEQ}); serve it "
            "with `ophyd-scmos serve`, or add to the Tiled server's configuration: "
            f"media_types: {{BlueskyRun: {{{JSON_SEQ}: {JSON_SEQ_EXPORTER}}}}}"
        ) from None


def _events_of_a_point_taken_again(run: Any, descriptor: dict[str, Any]) -> list[dict] | None:
    """The events of `descriptor`'s stream, one a row of its table, where a point was taken
    again (bluesky takes a point again after a pause, with its seq_num): the catalog's export
    keys events by seq_num, so it kept one of the two while the images kept both frames, and
    every later event met another point's frames. None where every seq_num is once."""
    stream = run[descriptor["name"]].base
    if "internal" not in stream:
        return None
    table = stream["internal"].read()
    if table["seq_num"].is_unique:
        return None
    if len(stream.metadata.get("descriptors", [descriptor])) > 1 or any(
        key not in table.columns
        for key, data_key in descriptor["data_keys"].items()
        if not data_key.get("external")
    ):
        raise RuntimeError(
            f"run {run.metadata['start']['uid']}: stream {descriptor['name']!r} holds a point "
            "taken again (two events of one seq_num), which the catalog's export cannot tell "
            "apart in a stream of several descriptors or of arrays outside its table"
        )
    keys = [key for key in table.columns if key not in ("seq_num", "time") and key[:3] != "ts_"]
    return [
        {
            "seq_num": int(row["seq_num"]),
            "time": float(row["time"]),
            "uid": f"event-{descriptor['uid']}-{i}",
            "descriptor": descriptor["uid"],
            "data": {key: _plain(row[key]) for key in keys},
            "timestamps": {key: float(row[f"ts_{key}"]) for key in keys},
        }
        for i, row in enumerate(table.to_dict(orient="records"))
    ]


def _plain(value: Any) -> Any:
    """A table's value as a document holds it (numpy's numbers and arrays as Python's)."""
    return value.tolist() if hasattr(value, "tolist") else value


@dataclass
class SyncResult:
    """What `sync` did with one run."""

    uid: str
    #: "copied"; "present" (the target had it); "running" (no stop yet: left); "incomplete"
    #: (the target has it half-copied: left); "replaced" (it had it half-copied: copied anew,
    #: `replace_incomplete`); "missing" (a file to copy is gone: not copied); "conflict" (a
    #: different file has a file's name where it is copied to: not copied); "partial" (closed
    #: by a recovery still missing a camera's file: not copied); "failed" (copying a file
    #: failed, a full disk: not copied)
    status: str
    files: list[str] = field(default_factory=list)  #: data files the target's run points at
    error: str | None = None  #: what is wrong with the run there, and what to do, if anything


def sync(
    source: Container,
    target: Container,
    uids: Iterable[str] | None = None,
    *,
    copy_data_to: PathLike | None = None,
    on_result: Callable[[SyncResult], None] | None = None,
    replace_incomplete: bool = False,
) -> list[SyncResult]:
    """Copy finished runs from `source` to `target` (a lab's embedded catalog to a facility
    server), skipping those the target has; all runs, oldest first, unless `uids` are given.

    Each run's `documents` go through a TiledWriter of the target, so the target indexes the
    run exactly as if it had been written there. The data files stay where they are and the
    target's run points at them: the target must read that path (a shared disk). With
    `copy_data_to`, each file is first copied into that directory (one the target reads)
    and the run points at the copy. Each result says whether the target can read the
    images (it reads the last frame): if not, extend the server's readable storage and the
    run reads at once, with nothing to sync again.

    A run the target holds without a stop document (a sync interrupted half-way: the
    source's run is finished, and its uid is its own) is left "incomplete", with an error
    saying so, or with `replace_incomplete` deleted there and copied anew ("replaced"); with
    `copy_data_to`, a run whose file is gone is "missing", and one whose file's name is taken
    there by a different file is a "conflict" (nothing written to the target). A run a
    recovery closed without every camera's file is "partial", not copied until they are (a
    copy would keep the images the catalog had of the others). The other runs go on either
    way.
    """

    from ophyd_scmos.catalog.recover import cameras_not_recovered

    results = []
    for key in source if uids is None else uids:
        run = source[key]
        uid = run.metadata["start"]["uid"]
        stop = run.metadata.get("stop")
        if not stop:
            result = SyncResult(uid, "running")
        elif waiting := cameras_not_recovered(run):
            why = (
                f"closed by ophyd-scmos recover without the files of {', '.join(waiting)}, whose "
                "images are what the catalog had: recover them into it first (ophyd-scmos "
                "recover --catalog SOURCE FILE), then sync"
            )
            result = SyncResult(uid, "partial", error=why)
        elif uid in target:
            there = target[uid]
            if there.metadata.get("stop"):
                result = SyncResult(uid, "present", _run_files(there))
            elif replace_incomplete:
                there.delete(recursive=True, external_only=False)  # its files stay
                result = _copy(run, uid, target, copy_data_to)
                result.status = "replaced" if result.status == "copied" else result.status
            else:
                result = SyncResult(
                    uid,
                    "incomplete",
                    _run_files(there),
                    "in the target without a stop document: from an earlier copy that did "
                    "not finish, or one still under way (another sync); once no other sync "
                    "runs, sync again replacing it (ophyd-scmos sync --replace-incomplete; "
                    "replace_incomplete=True)",
                )
        else:
            result = _copy(run, uid, target, copy_data_to)
        if result.status in ("copied", "present", "replaced"):
            result.error = _unreadable(target[uid])
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _copy(run: Any, uid: str, target: Container, copy_data_to: PathLike | None) -> SyncResult:
    """Write `run` into `target` through a TiledWriter, its files first copied into
    `copy_data_to` if given; a file to copy that is gone leaves the run "missing", with
    nothing written."""
    from bluesky_tiled_plugins.writing.tiled_writer import RunNormalizer
    from tiled.client.utils import ClientError

    from ophyd_scmos.catalog.writing import CatalogWriter

    docs = list(documents(run))
    resources = [
        doc for name, doc in docs if name == "stream_resource" and doc["uri"].startswith("file:")
    ]
    if copy_data_to is not None:
        named = _cameras_files(docs, resources)
        paths = _unique(
            [*(str(local_path(doc["uri"])) for doc in resources), *(p for *_, p in named)]
        )
        gone = [path for path in paths if not Path(path).exists()]
        if gone:
            return SyncResult(
                uid, "missing", gone, f"no such file to copy (moved or deleted?): {gone[0]}"
            )
        try:
            copies = {path: _copy_file(Path(path), copy_data_to) for path in paths}
        except FileExistsError as err:  # another run's file of that name: never overwritten
            why = f"{err}: this run not copied; copy it into another directory"
            return SyncResult(uid, "conflict", paths, why)
        except OSError as err:  # a full disk, a name too long there
            return SyncResult(uid, "failed", paths, f"copying its file failed: {err}")
        for doc in resources:  # a movie's file holds several streams
            doc["uri"] = file_uri(copies[str(local_path(doc["uri"]))])
        for descriptor, device, path in named:  # where the target's run finds the file
            config = descriptor["configuration"][device]["data"]
            config[f"{device}_{FILE_PATH_SIGNAL}"] = str(copies[path])
        files = [str(copy) for copy in copies.values()]
    else:
        files = _unique(str(local_path(doc["uri"])) for doc in resources)
    writer = CatalogWriter(target, journal=False, normalizer=RunNormalizer)
    try:
        with warnings.catch_warnings():  # event_model's guess at why a start failed, misleading
            warnings.filterwarnings("ignore", "The callback .* when RunRouter passed it")
            for name, doc in docs:
                writer(name, doc)
    except ClientError as err:
        if err.response.status_code != 409 or uid not in target:
            raise
        # Made there as this copy began: by another sync of the same runs at the same time.
        there = target[uid]
        if there.metadata.get("stop"):
            return SyncResult(uid, "present", _run_files(there))
        why = (
            "another sync is copying it (it appeared in the target as this copy began): "
            "sync again once that one has ended, to check it"
        )
        return SyncResult(uid, "incomplete", _run_files(there), why)
    return SyncResult(uid, "copied", files)


def _cameras_files(
    docs: list[tuple[str, dict[str, Any]]], resources: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], str, str]]:
    """(descriptor, camera, file) of each camera each descriptor configures: the file its
    images or columns are read from, or for a camera with none (statistics only, a step
    scan: its events hold each point's values, the file every frame's) the one its
    configuration names (``file_path``)."""
    descriptors = [doc for name, doc in docs if name == "descriptor"]
    read_from: dict[str, str] = {}  # camera: the file its data keys are read from
    for resource in resources:
        for descriptor in descriptors:
            data_key = descriptor["data_keys"].get(resource["data_key"], {})
            if "object_name" in data_key:
                read_from.setdefault(data_key["object_name"], str(local_path(resource["uri"])))
    return [
        (descriptor, device, read_from.get(device, path))
        for descriptor in descriptors
        for device, config in descriptor.get("configuration", {}).items()
        if isinstance(path := config.get("data", {}).get(f"{device}_{FILE_PATH_SIGNAL}"), str)
        and path
    ]


def _copy_file(path: Path, directory: PathLike) -> Path:
    """Copy `path` into `directory` under its own name; an identical copy already there is
    reused, a different file of that name is an error (never overwritten)."""
    target = absolute_path(directory) / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        if filecmp.cmp(path, target, shallow=False):
            return target
        raise FileExistsError(f"{target} exists and differs from {path}; not overwritten")
    # Under a name of its own (never too long, never another sync's), and gone if the copy
    # fails (a full disk): a reader never sees half a file under the real name.
    fd, name = tempfile.mkstemp(prefix=".", suffix=".partial", dir=target.parent)
    os.close(fd)
    partial = Path(name)
    try:
        shutil.copy2(path, partial)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


def _run_files(run: Any) -> list[str]:
    return _unique(path for _, _, node in image_nodes(run) for path in node_files(node))


def _unique(paths: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(paths))


def _unreadable(run: Any) -> str | None:
    """Why the catalog cannot read the run's images (it tries the last frame), or None."""
    for stream, key, node in image_nodes(run):
        try:
            probe(node)
        except Exception as err:
            files = node_files(node)
            gone = [path for path in files if not Path(path).exists()]
            why = (
                f"no such file here either (moved or deleted?): {gone[0]}"
                if gone
                else "a server refuses files outside its readable storage "
                "(ophyd-scmos serve --read DIR)"
            )
            return (
                f"unreadable there: {stream}/{key} ({', '.join(files)}): "
                f"{str(err).splitlines()[0]}; {why}"
            )
    return None
