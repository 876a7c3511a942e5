"""`ophyd-scmos recover`: open again a file whose writer never closed it (killed, power cut),
and close the run it belongs to.

A stream recovers its own file when its writer dies; this is for what no stream was left to
recover. HDF5 marks a file open for writing in its superblock; after a crash the mark stays
and readers refuse the file. Clearing it is what `h5clear -s` does (Debian's h5clear is too
old for these files). With `--catalog`, the run whose acquiring process died gets the
image references and the stop document that process never wrote
(`ophyd_scmos.catalog.recover`), so it replays the frames the file holds, and the events the
catalog had not yet taken, with every device's readings, from the run's journal
(`ophyd_scmos.catalog.journal`); with `--catalog` and no file, the runs whose processes
died (those their journals name) are closed with the files of their cameras that their
descriptors name, or from their journals alone (a run with no camera). Frame rings left
in /dev/shm by processes that are gone (killed with their process group) are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ophyd_scmos.cli import CommandError, opened_catalog
from ophyd_scmos.pipeline.recovery import writing_process

if TYPE_CHECKING:
    from ophyd_scmos.catalog import UnfinishedRun


def recover(args: argparse.Namespace) -> int:
    """Clear the open-for-writing mark of HDF5 files no process is writing; say what they
    hold; with --catalog, close the runs they belong to."""
    from ophyd_scmos.pipeline.ring import SHM_DIR, remove_orphan_rings

    removed = remove_orphan_rings()
    if removed:
        rings = ", ".join(str(SHM_DIR / name) for name in removed)
        print(f"removed the frame rings of processes that are gone: {rings}")
    files = list(args.files)
    if args.catalog and Path(args.catalog).is_file():
        # `--catalog FILE`: a catalog is a directory or a URL, so FILE is a file to recover.
        files.insert(0, Path(args.catalog))
        args.catalog = ""
    if not files and args.catalog is None:
        raise CommandError(
            "name the HDF5 files to recover (or give --catalog alone to close the runs whose "
            "journals are left)"
        )
    if args.run and args.catalog is None:
        raise CommandError("--run names a run of a catalog: give --catalog too")
    if args.catalog is None:
        return _recover_files(files, None, args)
    with opened_catalog(args.catalog or None, args.api_key) as catalog, _alone(args.journal):
        return _recover_files(files, catalog, args)


@contextlib.contextmanager
def _alone(journals: Path | None) -> Iterator[None]:
    """One recovery of a journal directory's runs at a time: two at once replayed one journal
    while the other removed it (a crash), or took each other for the run's process."""
    import fcntl

    from ophyd_scmos.catalog.journal import default_journal_dir

    directory = journals or default_journal_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".recover.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"another ophyd-scmos recover is closing the runs of {directory}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _recover_files(files: list[Path], catalog: Any, args: argparse.Namespace) -> int:
    """Recover `files`; with a `catalog`, close their runs in it, and those of the journals
    left."""
    import h5py

    from ophyd_scmos.catalog.journal import stop_of
    from ophyd_scmos.pipeline import layout
    from ophyd_scmos.pipeline.recovery import clear_open_flags, finish_close

    journaled: dict[str, Path] = {}
    closing_all = catalog is not None and not files  # `--catalog` alone: every run left
    if catalog is not None:
        # First the events the catalog lacks (and the streams: a killed process may not have
        # written a descriptor), from the journals: a file's run is found by its descriptor.
        journaled = _replay_journals(catalog, args.journal)
        if closing_all:
            files = _cameras_files(catalog, journaled)
    failed = 0
    runs: dict[str, list[_RunFile]] = {}  # the files of each run, closed together
    for path in files:
        holder = writing_process(path)
        try:
            if holder is not None:
                raise ValueError(f"{path} is open in process {holder}; recover it after it ends")
            cleared = clear_open_flags(path)
            finished = finish_close(path)
            with h5py.File(path, "r") as f:
                frames = layout.stored_frames(f)
                entry = dict(f[layout.ENTRY].attrs)
                last_frame = float(f[layout.HOST_TIMESTAMP][frames - 1]) if frames else None
                rows = _column_rows(f)
        except KeyError as exc:  # h5py's words for an object not there (a foreign file) or
            # damaged; they name no file
            print(
                f"ophyd-scmos recover: {path}: {exc.args[0] if exc.args else exc}", file=sys.stderr
            )
            failed += 1
            continue
        except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: h5py's words for
            # a damaged attribute heap
            print(f"ophyd-scmos recover: {exc}", file=sys.stderr)
            failed += 1
            continue
        done = [
            *(["cleared the open-for-writing mark"] if cleared else []),
            *(["finished the close its writer was killed in"] if finished else []),
        ]
        what = ", ".join(done) or "was not marked open"
        of_run = f" of run {entry['run']}" if "run" in entry else ""
        print(f"{path}: {what}; {frames} frames{of_run}")
        if catalog is None:
            continue
        end_time = last_frame if last_frame is not None else os.stat(path).st_mtime
        try:
            found = _find_run(catalog, path, entry, args.run)
        except (LookupError, ValueError) as exc:
            print(f"ophyd-scmos recover: {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        if found.recovered:
            print(f"{path}: already registered in run {found.uid}, closed by ophyd-scmos recover")
            continue
        runs.setdefault(found.uid, []).append(_RunFile(found, frames, end_time, rows))
    for uid, run_files in runs.items():
        journal = journaled.pop(uid, None)  # kept if the run could not be closed
        try:
            lines = _close_run(run_files, stop_of(journal) if journal is not None else None)
        except (RuntimeError, ValueError) as exc:
            for run_file in run_files:
                print(f"ophyd-scmos recover: {run_file.found.path}: {exc}", file=sys.stderr)
            failed += len(run_files)
            continue
        print("\n".join(lines))
        if journal is not None:
            _end_journal(journal, catalog[uid])
    if closing_all:
        if not (journaled or runs):
            print("no unfinished run to close from a journal")
        _close_journaled_runs(catalog, journaled)
        return 1 if failed else 0
    for uid, journal in journaled.items():
        print(
            f"{journal}: run {uid} stays open, as no file of its cameras was named; its "
            "journal is kept (`ophyd-scmos recover --catalog` alone closes the run)"
        )
    return 1 if failed else 0


def _cameras_files(catalog: Any, journaled: dict[str, Path]) -> list[Path]:
    """The files of the cameras of the runs whose journals were replayed, as their
    descriptors name them, where they are still there: recovered as if named."""
    from ophyd_scmos.catalog.recover import cameras_files

    files = []
    for uid in journaled:
        for path in cameras_files(catalog[uid]):
            print(f"{path}: the file of a camera of run {uid}")
            files.append(path)
    return files


def _replay_journals(catalog: Any, journals: Path | None) -> dict[str, Path]:
    """Write into each unfinished run of `catalog` whose process is gone the events its
    journal (in `journals`, or the default directory) has and the catalog lacks; return the
    journals of those runs by run uid. A run whose start never reached the catalog is made
    from its journal where the journal was written for this catalog. Those of runs still
    running are left, those of runs the catalog ended removed."""
    from ophyd_scmos.catalog.embedded import catalog_location, same_catalog
    from ophyd_scmos.catalog.journal import begin, catalog_of, default_journal_dir, read, replay
    from ophyd_scmos.catalog.recover import unfinished

    location = catalog_location(catalog)
    replayed = {}
    for path in sorted((journals or default_journal_dir()).glob("*.jsonl")):
        uid, holder = path.stem, writing_process(path)
        if holder is not None:
            print(f"{path}: run {uid} is running in process {holder}; left as it is")
            continue
        try:
            run = catalog[uid]
        except KeyError:
            written_for = catalog_of(path)
            if written_for is None or not same_catalog(written_for, location):
                kept = f"{path}: run {uid} is not in this catalog; its journal is kept"
                print(f"{kept} (it was written for {written_for})" if written_for else kept)
                continue
            run = begin(catalog, read(path))
            print(f"{path}: run {uid} had not reached the catalog; made from its journal")
        if not unfinished(run):
            print(f"{path}: run {uid} had ended in the catalog; its journal is removed")
            path.unlink()
            continue
        added = replay(run, read(path))
        print(f"{path}: {added} events the catalog lacked written into run {uid}")
        replayed[uid] = path
    return replayed


def _close_journaled_runs(catalog: Any, journaled: dict[str, Path]) -> None:
    """Close the runs whose journals were replayed, from their journals alone (no camera
    file found: a motor scan, say), and remove the journals (`_end_journal`)."""
    from ophyd_scmos.catalog import close_journaled_run
    from ophyd_scmos.catalog.journal import stop_of

    for uid, path in journaled.items():
        close_journaled_run(catalog[uid], end_time=path.stat().st_mtime, ended=stop_of(path))
        print(f"{path}: closed run {uid} from its journal")
        _end_journal(path, catalog[uid])


def _end_journal(path: Path, run: Any) -> None:
    """Remove the journal of a run just closed; but keep that of a run that ended whose own
    stop waits for its cameras' files: a later `recover --catalog` finds the run by it."""
    from ophyd_scmos.catalog.recover import awaits_files

    if not awaits_files(run):
        path.unlink()
        return
    print(
        f"{path}: run {run.metadata['start']['uid']} ended, but not every file of its cameras "
        "is in it: it is closed as failed, and its journal is kept until they are recovered"
    )


@dataclass
class _RunFile:
    """A camera file to register in its run, and what `recover` read of it."""

    found: UnfinishedRun
    frames: int
    end_time: float
    rows: dict[str, int]  #: the rows of each per-frame dataset of the file (`_column_rows`)


def _find_run(catalog: Any, path: Path, entry: dict[str, Any], uid: str | None) -> UnfinishedRun:
    """The run of camera file `path` in `catalog`, from its /entry attributes."""
    from ophyd_scmos.catalog import find_unfinished_run

    if "device_name" not in entry or "start_time" not in entry:
        raise ValueError("not a camera file of ophyd-scmos (no device_name, start_time in /entry)")
    recorded = entry.get("run")
    return find_unfinished_run(
        catalog,
        path,
        str(entry["device_name"]),
        float(entry["start_time"]),
        uid=uid,
        recorded=None if recorded is None else str(recorded),
    )


def _close_run(run_files: list[_RunFile], ended: dict[str, Any] | None) -> list[str]:
    """Register the frames of the files of one run and write its stop once (its own,
    `ended`, from its journal, where it ended and all of it is registered); say what the run
    replays now."""
    from ophyd_scmos.catalog import close_run
    from ophyd_scmos.catalog.recover import cameras_not_recovered

    run = run_files[0].found.run
    lines = []
    verb = "added to run" if run.metadata.get("stop") else "closed run"
    shapes = close_run(
        [
            (f.found, _asset_documents(f.found, f.frames, f.rows) if f.found.key else [])
            for f in run_files
        ],
        end_time=max(f.end_time for f in run_files),
        ended=ended,
    )
    for f, shape in zip(run_files, shapes, strict=True):
        found = f.found
        if shape is None and found.stream is not None:
            lines.append(
                f"{found.path}: {verb} {found.uid}: the camera saved no images; the statistics "
                f"of the file's {f.frames} frames are in the file, not in the run"
            )
        elif shape is None:
            lines.append(
                f"{found.path}: {verb} {found.uid}, which ended before its first event: "
                f"no points to register (the file's {f.frames} frames are in no event)"
            )
        else:
            lines.append(
                f"{found.path}: {verb} {found.uid}: {found.stream}/{found.key} replays {shape}"
            )
    waiting = cameras_not_recovered(run)
    if waiting:
        lines.append(
            f"run {run_files[0].found.uid} still takes the files of {', '.join(waiting)}: their "
            "images are what the catalog had of them; recover their files into it too"
        )
    return lines


def _asset_documents(
    found: UnfinishedRun, frames: int, rows: dict[str, int]
) -> list[tuple[str, dict[str, Any]]]:
    """The asset documents the camera would have emitted for the whole points of its file, in
    the style its descriptor announced: a Resource and a Datum per point (FILESTORE:), or a
    StreamResource and one StreamDatum (STREAM:), for a movie's columns too (frame numbers,
    times, statistics: each of the descriptor's columns of the camera, with the rows the
    file holds of it, at most one per frame)."""
    from ophyd_scmos.documents import AssetDocs, file_columns
    from ophyd_scmos.pipeline import layout, stats

    path = found.path.absolute()
    shape = found.data_key["shape"]
    if str(found.data_key["external"]).startswith("FILESTORE"):
        docs = AssetDocs(path, path.parent)
        per_point = shape[0]  # [frames per point, H, W]
        for point in range(frames // per_point):
            docs.datum(point, per_point)
        return list(docs.drain())
    per_point = shape[0] if len(shape) == 3 else 1  # [H, W] for one frame per point
    group = f"{layout.STATS_GROUP}/"
    regions = {name[len(group) :].split("/")[0] for name in rows if name.startswith(group)}
    columns = file_columns(found.device, regions - {stats.FRAME})
    by_rows: dict[int, dict[str, str]] = {frames // per_point: {str(found.key): layout.DATA}}
    described = found.run[found.stream].base.metadata.get("data_keys", {})
    for key, info in described.items():
        dataset = columns.get(key)
        if key != found.key and dataset is not None and str(info.get("external")) == "STREAM:":
            by_rows.setdefault(min(frames, rows.get(dataset, 0)), {})[key] = dataset
    out = []
    for count, datasets in by_rows.items():
        if count:
            docs = AssetDocs(path, path.parent)
            docs.stream(datasets, per_point)
            docs.stream_datum(0, count)
            out.extend(docs.drain())
    return out


def _column_rows(f: Any) -> dict[str, int]:
    """The rows of each per-frame dataset (one dimension) of camera file `f`, by path: the
    frames' numbers and times, and every statistic of every region."""
    import h5py

    rows: dict[str, int] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.ndim == 1:
            rows[f"/{name}"] = len(obj)

    f.visititems(visit)
    return rows


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("recover", help=recover.__doc__, description=__doc__)
    p.add_argument(
        "files",
        nargs="*",
        type=Path,
        metavar="FILE",
        help="HDF5 files to recover (none, with --catalog: close the runs left in journals, "
        "with their cameras' files where their descriptors name files that are there)",
    )
    p.add_argument(
        "--catalog",
        nargs="?",
        const="",
        metavar="LOCATION",
        help="also close each file's unfinished run in this catalog (a directory or server "
        "URL; without LOCATION: $OPHYD_SCMOS_CATALOG or the default embedded catalog)",
    )
    p.add_argument(
        "--run",
        metavar="UID",
        help="the run the files belong to, for a file the catalog cannot tell the run of (a "
        "run that ended before its first point, with another such run started near it)",
    )
    p.add_argument(
        "--journal",
        type=Path,
        metavar="DIR",
        help="where the runs' journals are (default: $OPHYD_SCMOS_JOURNAL or the user's state "
        "directory, as CatalogWriter keeps them)",
    )
    p.add_argument("--api-key", help="a server's API key (default: $TILED_API_KEY)")
    p.set_defaults(func=recover)
