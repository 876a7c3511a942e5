"""`ophyd-scmos serve | runs | show | sync`: the catalog, for facilities and for people.

`serve` starts a facility's catalog server (Tiled on PostgreSQL); `runs` lists recent runs;
`show` summarizes one run and draws its first frame, mean frame and frame intervals; `sync`
copies runs from a lab's embedded catalog to a server. Each takes ``--catalog`` (a directory
or a server URL; the default embedded catalog otherwise) and prints ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ophyd_scmos.catalog import CATALOG_ENV, server_url
from ophyd_scmos.cli import CommandError, opened_catalog, port, reaching_catalog

if TYPE_CHECKING:
    from ophyd_scmos.catalog import FileStats, RunSummary, SyncResult

MB = 1e6
PAGE = 300  #: runs a request asks for: Tiled's server refuses more


def serve(args: argparse.Namespace) -> int:
    """Serve a shared catalog from PostgreSQL: Tiled's own server, configured for our runs."""
    from ophyd_scmos.catalog import server_command, server_config, write_server_config

    try:
        config = server_config(args.postgres, args.data, args.read, tables=args.tables)
    except ValueError as err:
        print(f"ophyd-scmos serve: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config, sort_keys=False), end="")
        return 0
    Path(args.data).mkdir(parents=True, exist_ok=True)
    path = write_server_config(args.config or Path(args.data) / "tiled.yml", config)
    env = dict(os.environ)
    if args.api_key:
        env["TILED_SINGLE_USER_API_KEY"] = args.api_key
    print(
        f"ophyd-scmos: serving {path} at http://{args.host}:{args.port} "
        f"(images readable from {', '.join(map(str, args.read))})",
        file=sys.stderr,
        flush=True,
    )
    command = server_command(path, host=args.host, port=args.port)
    os.execve(command[0], command, env)  # the server is this process: signals reach it


def runs(args: argparse.Namespace) -> int:
    """List the most recent runs: uid, start, frames, frame shape, file, lost frames."""
    from ophyd_scmos.catalog import summarize

    rows = []
    with _opened(args.catalog, args.api_key, existing=True) as catalog:
        # In pages Tiled's server takes (at most 300 runs a request), whatever the number.
        for run in reversed(list(catalog.values().page_size(PAGE).tail(args.number))):
            summary = summarize(run)
            files = _unique(path for path in (summary.file, *summary.cameras.values()) if path)
            each = {path: _file_stats_or_none(path) for path in files}
            stats = each.get(summary.file) if summary.file else None
            losses = [_lost(file) for file in each.values()]  # every camera's, added up
            lost = None if not losses or None in losses else sum(filter(None, losses))
            row = {**_summary_dict(summary), "lost": lost, "files": files}
            if summary.key is None and stats is not None:  # statistics only: the file's frames
                row["frames"] = stats.frames
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no runs yet", file=sys.stderr)
        return 0
    table = [("uid", "start", "status", "frames", "WxH", "lost", "file")]
    for row in rows:
        table.append(
            (
                row["uid"][:8],
                row["start"],
                row["exit_status"] or "running",
                str(row["frames"]),
                _shape_text(row["shape"]),
                "?" if row["lost"] is None else str(row["lost"]),
                (Path(row["file"]).name if row["file"] else "-")
                + _more_cameras(len(row["files"]) - 1),
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0


def show(args: argparse.Namespace) -> int:
    """Summarize one run (frames, file, compression, gaps, frame intervals); draw a PNG."""
    from ophyd_scmos.catalog import start_local_server

    if args.png is not None and not args.no_png:
        args.png = _png_path(args.png)
    _require_catalog(args.catalog)
    with reaching_catalog(args.catalog):
        start_local_server(args.catalog)  # if none runs: it starts while this process imports
    with _opened(args.catalog, args.api_key) as catalog:
        return _show(args, catalog)


def _show(args: argparse.Namespace, catalog: Any) -> int:
    import httpx
    import numpy as np

    from ophyd_scmos.catalog import probe, summarize
    from ophyd_scmos.pipeline.recovery import another_runs_file

    try:
        run = _find_run(catalog, args.uid)
        summary = summarize(run, args.key)
    except LookupError as err:
        print(f"ophyd-scmos show: {err.args[0] if err.args else err}", file=sys.stderr)
        return 1
    if summary.key is None:
        print(f"ophyd-scmos show: run {summary.uid} has no images{_kept(summary)}", file=sys.stderr)
        return 1
    node = run[summary.stream][summary.key]
    try:
        stats = _local_file_stats(summary.file)
        probe(node)  # the catalog reads the file too, or says at once why it cannot
    except (OSError, httpx.HTTPStatusError) as err:
        print(f"ophyd-scmos show: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    wrong = None if stats is None else another_runs_file(str(summary.file), stats.run, summary.uid)
    if wrong is not None:
        print(f"ophyd-scmos show: {wrong}", file=sys.stderr)
        return 1
    if stats is not None:
        intervals, clock = stats.intervals, "camera clock"
    else:  # the file is on another host: the event times are what is left
        intervals, clock = np.diff(run[summary.stream]["time"].read()), "event times"
    report: dict[str, Any] = {
        **_summary_dict(summary),
        "events": _events(run, summary),
        "interval_mean_s": float(intervals.mean()) if intervals.size else None,
        "interval_jitter_s": float(intervals.std()) if intervals.size else None,
        "interval_source": clock,
        "file_reachable": stats is not None,
    }
    if stats is not None:
        report.update(
            size_bytes=stats.size,
            raw_bytes=stats.raw_bytes,
            stored_bytes=stats.stored_bytes,
            compression_ratio=round(stats.compression_ratio, 3),
            filters=stats.filters,
            compression=stats.compression,
            frames_written=stats.frames_written,
            frames_dropped=stats.frames_dropped,
            frames_missed=stats.frames_missed,
            complete=stats.complete,
            missing_frames=stats.missing_frames,
            gaps=stats.gaps,
            rewound_frames=stats.rewound_frames,
            skipped_frames=stats.skipped_frames,
        )
    report["other_cameras"] = [
        _camera_counts(camera, path)
        for camera, path in summary.cameras.items()
        if path != summary.file
    ]
    if not args.no_png and summary.frames:
        png = Path(args.png or f"scmos_{summary.uid[:8]}.png").absolute()
        report["mean_of_frames"] = _draw(node, summary, intervals, clock, png, args.mean_frames)
        report["png"] = str(png)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        _print_report(report)
    return 0


def sync(args: argparse.Namespace) -> int:
    """Copy finished runs from the embedded catalog to a catalog server (files referenced)."""
    from ophyd_scmos.catalog import sync as sync_runs

    def report(result: SyncResult) -> None:
        if not args.json:
            line = f"{result.status:8} {result.uid}  {' '.join(result.files)}".rstrip()
            print(line if result.error is None else f"{line}\n  {result.error}")

    with (
        # An existing catalog: a mistyped URL (no http://) is not made a new local one.
        _opened(args.to, args.api_key, existing=True) as target,
        _opened(args.catalog, args.api_key, existing=True) as source,
    ):
        results = sync_runs(
            source,
            target,
            args.uids or None,
            copy_data_to=args.copy_data,
            on_result=report,
            replace_incomplete=args.replace_incomplete,
        )
    if args.json:
        print(json.dumps([vars(r) for r in results], indent=1))
    return 1 if any(r.error for r in results) else 0


# ---------------------------------------------------------------------------------------------


def _opened(
    location: str | None, api_key: str | None, existing: bool = False
) -> contextlib.AbstractContextManager[Any]:
    """`opened_catalog(location)`; `existing`: to be read, a catalog given by name must be
    there (`_require_catalog`)."""
    if existing:
        _require_catalog(location)
    return opened_catalog(location, api_key)


def _require_catalog(location: str | None) -> None:
    """An embedded catalog named on the command line (or by $OPHYD_SCMOS_CATALOG) holds a
    catalog already: opening a mistyped directory would make a new, empty one there, and
    "no runs yet" would look like runs lost. The default catalog is made on first use."""
    from ophyd_scmos.catalog.embedded import CATALOG_DB

    location = location or os.environ.get(CATALOG_ENV)
    if not location or server_url(location) is not None:
        return
    directory = Path(location).expanduser()
    if directory.exists() and not directory.is_dir():
        raise CommandError(f"{location} is a file: a catalog is a directory or a server's URL")
    if not (directory / CATALOG_DB).is_file():
        server = re.fullmatch(r"[\w.-]+:\d+(/.*)?", location)  # host:port, no scheme
        hint = f"; a server's URL starts with http:// (http://{location}?)" if server else ""
        raise CommandError(
            f"no catalog in {location} (no {CATALOG_DB}): check the path; a catalog is made "
            f"where a run is first recorded into it{hint}"
        )


def _find_run(catalog: Any, text: str) -> Any:
    """The run `text` names: -1 (the latest) and other negative indices, a scan id, a uid or
    its first characters (5 at least). LookupError, saying why, where it names none or is
    ambiguous (digits that are both a scan id and the start of another run's uid)."""
    if re.fullmatch(r"-[1-9]\d*", text):
        runs = catalog.values()
        if int(text) < -(held := len(runs)):
            raise LookupError(
                f"no run {text}: the catalog holds {f'{held} runs' if held else 'no runs yet'}"
            )
        return runs[int(text)]
    if not re.fullmatch(r"[0-9A-Za-z-]+", text):
        raise LookupError(f"{text!r} is not a uid, a uid's first characters, or a scan id")
    by_scan = by_uid = None
    kinds = []
    if text.isdigit() and len(text) <= 6:
        if int(text) == 0:
            raise LookupError("scan ids start at 1 (-1 is the latest run)")
        kinds.append("scan id")
        with contextlib.suppress(KeyError):
            by_scan = catalog[int(text)]
    if len(text) >= 5:
        kinds.append("uid")
        try:
            by_uid = catalog[text]
        except KeyError:
            pass
        except ValueError:  # several runs' uids start so
            raise LookupError(f"several runs' uids start with {text}: give more of it") from None
    if by_scan is not None and by_uid is not None and by_scan.item["id"] != by_uid.item["id"]:
        raise LookupError(
            f"{text} is scan {text} (run {by_scan.item['id']}) and the first characters of "
            f"run {by_uid.item['id']}: give more of the uid"
        )
    if by_scan is None and by_uid is None:
        if not kinds:
            raise LookupError(f"{text} is too short for a uid: give 5 characters at least")
        raise LookupError(f"no run has the {' or '.join(kinds)} {text}")
    if by_scan is not None and by_uid is None:
        from tiled.queries import Key

        # Scan ids start again where a RunEngine keeps none (a script's `RunEngine({})`).
        same = len(catalog.search(Key("start.scan_id") == int(text)))
        if same > 1:
            print(
                f"ophyd-scmos show: scan {text} names {same} runs; this is the latest (give a "
                "uid for another)",
                file=sys.stderr,
            )
    return by_scan if by_scan is not None else by_uid


def _kept(summary: RunSummary) -> str:
    """What the file of a run without images holds (its frames' statistics), if it is here."""
    try:
        stats = _local_file_stats(summary.file)
    except OSError as err:
        return f"; its file: {str(err).splitlines()[0]}"
    if stats is None:
        return ""
    counts = (
        f"{stats.frames_written} written, {stats.frames_dropped} dropped, "
        f"{stats.frames_missed} missed"
        if stats.complete is not None
        else "its writer did not close it"
    )
    return f" (statistics only): {summary.file} holds {stats.frames} frames' statistics; {counts}"


def _more_cameras(n: int) -> str:
    return f" (+{n} camera{'s' if n > 1 else ''})" if n else ""


def _camera_counts(camera: str, path: str) -> dict[str, Any]:
    """What the writer of another camera of the run counted in its file."""
    stats = _file_stats_or_none(path)
    counts = {"camera": camera, "file": path, "file_reachable": stats is not None}
    if stats is not None:
        counts.update(
            frames_written=stats.frames_written,
            frames_dropped=stats.frames_dropped,
            frames_missed=stats.frames_missed,
            complete=stats.complete,
        )
    return counts


def _lost(stats: FileStats | None) -> int | None:
    """The frames a file's writer counted lost; None where its counts are not whole (writing
    did not end as planned) or the file is not here."""
    if stats is None or not stats.complete or stats.frames_dropped is None:
        return None
    return stats.frames_dropped + (stats.frames_missed or 0)


def _file_stats_or_none(path: str) -> FileStats | None:
    """`_local_file_stats`, None for a damaged file too (`show` says how)."""
    try:
        return _local_file_stats(path)
    except OSError:
        return None


def _unique(paths: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(paths))


def _local_file_stats(path: str | None) -> FileStats | None:
    """The file's statistics, or None where this host has no such file (a catalog server's
    run whose data disk is not mounted here) or it is not one of our files. A damaged file
    raises `UnreadableFile`."""
    from ophyd_scmos.catalog import file_stats

    if path is None:
        return None
    try:
        return file_stats(path)
    except (FileNotFoundError, KeyError):
        return None


def _events(run: Any, summary: RunSummary) -> int | None:
    """The events of a step scan's image stream in the catalog, which may be fewer than its
    images: a run closed by `recover` has the frames of its file, and only the events the
    catalog took before its process ended. None for a movie (its events are pages)."""
    if len(summary.shape) != 4 or summary.stream is None:
        return None
    return int(run[summary.stream]["seq_num"].shape[0])


def _summary_dict(summary: RunSummary) -> dict[str, Any]:
    return {
        "uid": summary.uid,
        "scan_id": summary.scan_id,
        "plan_name": summary.plan_name,
        "start": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(summary.start_time)),
        "exit_status": summary.exit_status,
        "key": f"{summary.stream}/{summary.key}" if summary.key else None,
        "frames": summary.frames,
        "shape": list(summary.shape),
        "dtype": summary.dtype,
        "file": summary.file,
    }


def _shape_text(shape: list[int]) -> str:
    """(events, k, H, W) as ``WxH`` (width x height, as ROIs and regions are given), or
    ``WxH, k an event`` where an event holds several frames (``3 x WxH`` read as three times
    the frames)."""
    if len(shape) < 2:
        return "-"
    frame = f"{shape[-1]}x{shape[-2]}"
    per_event = math.prod(shape[1:-2])
    return frame if per_event == 1 else f"{frame}, {per_event} an event"


def _not_closed(r: dict[str, Any]) -> str:
    """Why a file has no writer's counts: its run still records, or its writer never closed it."""
    if r["exit_status"] is None:
        return "the run is still recording (no stop document yet): its writer counts at the end"
    return "the file was not closed by its writer"


def _print_report(r: dict[str, Any]) -> None:
    def ms(seconds: float | None) -> str:
        return "-" if seconds is None else f"{seconds * 1e3:.3f} ms"

    print(
        f"run        {r['uid']}  scan {r['scan_id']}  {r['plan_name']}  {r['start']}  "
        f"{r['exit_status'] or 'running'}"
    )
    print(f"image      {r['key']}  {r['frames']} frames of {_shape_text(r['shape'])} {r['dtype']}")
    points = r["shape"][0] if r["events"] is not None else None
    if points is not None and r["events"] < points:
        print(
            f"events     {r['events']} of its {points} points' events are in the catalog: the "
            "others never reached it (the acquiring process ended first); their frames are in "
            "the file, and reading the stream whole fails on the missing rows: read its columns"
        )
    print(f"file       {r['file'] or '-'}")
    if r["file_reachable"]:
        filters = ", ".join(r["filters"]) or "none"
        if r["compression"] not in (None, "none"):  # the codec asked, then HDF5's filter
            filters = f"{r['compression']}: {filters}"
        print(
            f"size       {r['size_bytes'] / MB:.1f} MB on disk; frames {r['raw_bytes'] / MB:.1f} "
            f"MB raw, {r['stored_bytes'] / MB:.1f} MB stored: compression "
            f"{r['compression_ratio']:.2f}x ({filters})"
        )
        if r["complete"] is None:
            print(f"writer     no counts: {_not_closed(r)}")
        else:
            print(
                f"writer     {r['frames_written']} written, {r['frames_dropped']} dropped, "
                f"{r['frames_missed']} missed; {'complete' if r['complete'] else 'ended early'}"
            )
        gaps = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in r["gaps"][:10])
        more = " ..." if len(r["gaps"]) > 10 else ""
        if not r["gaps"]:
            line = "none"
        elif r["rewound_frames"] or r["skipped_frames"]:
            line = f"{r['missing_frames']} frames lost; absent frame numbers: {gaps}{more}"
        else:
            line = f"{r['missing_frames']} frame numbers missing: {gaps}{more}"
        if r["rewound_frames"]:
            line += f" ({r['rewound_frames']} cut when a paused plan rewound, then retaken)"
        if r["skipped_frames"]:
            line += (
                f" ({r['skipped_frames']} taken between points and skipped: the camera runs on "
                "between triggers)"
            )
        if r["complete"] is not None:
            lost = r["frames_dropped"] + r["frames_missed"]
            if (after := lost - r["missing_frames"]) > 0:  # no later number marks them
                line += f"; {after} lost after the last frame written"
        print(f"gaps       {line}")
    else:
        print("           (this host cannot read the file: sizes and gaps unknown)")
    print(
        f"interval   mean {ms(r['interval_mean_s'])}, jitter (std) "
        f"{ms(r['interval_jitter_s'])} ({r['interval_source']})"
    )
    for other in r["other_cameras"]:  # `--key` shows each in full
        if not other["file_reachable"]:
            counts = "file not on this host"
        elif other["complete"] is None:
            counts = f"no counts: {_not_closed(r)}"
        else:
            counts = (
                f"{other['frames_written']} written, {other['frames_dropped']} dropped, "
                f"{other['frames_missed']} missed; "
                f"{'complete' if other['complete'] else 'ended early'}"
            )
        print(f"camera     {other['camera']}: {counts} ({other['file']})")
    if "png" in r:
        print(f"picture    {r['png']}")


def _draw(
    node: Any, summary: RunSummary, intervals: Any, clock: str, png: Path, mean_frames: int
) -> int:
    """First frame, mean frame and a histogram of frame intervals, as a PNG. Returns how many
    frames the mean is of (`_mean_frame`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    first = np.asarray(node[0]).reshape(-1, *summary.shape[-2:])[0]
    mean, count = _mean_frame(node, summary.shape, mean_frames)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), layout="constrained")
    for ax, image, title in (
        (axes[0], first, "first frame"),
        (axes[1], mean, f"mean of {count} frames"),
    ):
        shown = ax.imshow(image, cmap="gray", interpolation="nearest")
        fig.colorbar(shown, ax=ax, shrink=0.8, label="ADU")
        ax.set_title(title)
    interval_histogram(axes[2], intervals, clock)
    fig.suptitle(
        f"run {summary.uid[:8]}  {summary.stream}/{summary.key}  {summary.frames} "
        f"frames  {Path(summary.file).name if summary.file else ''}"
    )
    try:
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=80)
    except OSError as exc:
        raise CommandError(f"cannot write the picture {png}: {exc}") from None
    finally:
        plt.close(fig)
    return count


def _png_path(text: str) -> Path:
    """Where `--png` asks for the picture: a .png file (the suffix added where none is given,
    as matplotlib would, so the path said is the path written), not a directory."""
    png = Path(text).expanduser().absolute()
    if png.is_dir():
        raise CommandError(f"--png {text} is a directory; name the picture's file")
    if not png.suffix:
        png = png.with_name(png.name + ".png")
    elif png.suffix.lower() != ".png":
        raise CommandError(f"--png {text}: the picture is a PNG; name a .png file")
    return png


def _mean_frame(node: Any, shape: tuple[int, ...], wanted: int) -> tuple[Any, int]:
    """The mean of `wanted` frames spread evenly over the run (all of them for 0, or where
    the run has fewer), and how many that is.

    Read through the catalog in strided slices, so a long run is never read whole: every
    `step`-th event, `step` as large as still gives `wanted` frames, and of those frames
    `wanted` evenly spaced ones are averaged.
    """
    import numpy as np

    events, per_event = shape[0], math.prod(shape[1:-2])
    available = events * per_event
    count = available if wanted <= 0 else min(wanted, available)
    step = max(1, events // math.ceil(count / per_event))
    read = math.ceil(events / step) * per_event  # >= count
    chosen = (np.arange(count) * read) // count  # positions among the frames read
    total, position, block = np.zeros(shape[-2:]), 0, 32 * step
    for start in range(0, events, block):
        part = np.asarray(node[start : start + block : step], dtype=np.float64)
        part = part.reshape(-1, *shape[-2:])
        mine = chosen[(chosen >= position) & (chosen < position + len(part))] - position
        total += part[mine].sum(axis=0)
        position += len(part)
    return total / count, count


def interval_histogram(ax: Any, intervals: Any, clock: str) -> None:
    """A histogram of frame intervals (seconds), in ms with log counts: the rare long
    intervals are what one looks for. Intervals all equal (a camera clock that never
    wavers) make one bar at their value, on an axis around it, not an axis as wide as
    floating-point noise."""
    import numpy as np

    ms = np.asarray(intervals, dtype=np.float64) * 1e3
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.set_xlabel(f"frame interval, ms ({clock})")
    ax.set_ylabel("frames")
    ax.set_title(f"{ms.size} intervals")
    if not ms.size:
        return
    middle = float(np.median(ms))
    if np.ptp(ms) <= 1e-6 * max(abs(middle), 1e-3):
        half = max(abs(middle) * 0.1, 1e-3)
        ax.bar([middle], [ms.size], width=half / 10, log=True)
        ax.set_xlim(middle - half, middle + half)
        ax.set_title(f"{ms.size} intervals, all {middle:.6g} ms")
    else:
        ax.hist(ms, bins=min(100, max(10, ms.size // 20)), log=True)


def _at_least(least: int) -> Callable[[str], int]:
    """An argparse `type`: a whole number, `least` or more."""

    def parse(text: str) -> int:
        if not re.fullmatch(r"-?\d+", text) or int(text) < least:
            raise argparse.ArgumentTypeError(f"must be a whole number, {least} or more, not {text}")
        return int(text)

    return parse


def _catalog_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--catalog",
        help=f"catalog directory or server URL (default: ${CATALOG_ENV}, else the embedded "
        "catalog in your data directory)",
    )
    p.add_argument("--api-key", help="a server's API key (default: $TILED_API_KEY)")
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help=serve.__doc__, description=serve.__doc__)
    p.add_argument(
        "--postgres",
        required=True,
        metavar="URI",
        help="postgresql://user@host:port/database (it must exist); the password in "
        "$PGPASSWORD or ~/.pgpass, never here: other users see a command line",
    )
    p.add_argument(
        "--read",
        action="append",
        required=True,
        metavar="DIR",
        help="a directory cameras write into, as this host sees it (repeatable)",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="where the server writes data of its own, and its configuration",
    )
    p.add_argument(
        "--tables", metavar="URI", help="event tables elsewhere than --postgres (no password)"
    )
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve the network")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument(
        "--api-key",
        help="clients' key (default: $TILED_SINGLE_USER_API_KEY, or one Tiled makes up and prints)",
    )
    p.add_argument(
        "--config",
        metavar="PATH",
        help="where to write the Tiled configuration (default: DATA/tiled.yml)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the Tiled configuration and exit, to deploy it your own way",
    )
    p.set_defaults(func=serve)

    p = subparsers.add_parser("runs", help=runs.__doc__, description=runs.__doc__)
    _catalog_options(p)
    p.add_argument("-n", "--number", type=_at_least(1), default=20, help="how many runs")
    p.set_defaults(func=runs)

    p = subparsers.add_parser("show", help=show.__doc__, description=show.__doc__)
    p.add_argument("uid", help="a run's uid, its first characters, a scan id, or -1 for the latest")
    _catalog_options(p)
    p.add_argument(
        "--key", help="the image: its data key, or STREAM/KEY (default: the run's first image)"
    )
    p.add_argument(
        "--png", metavar="PATH", help="where to write the picture (default: scmos_<uid>.png here)"
    )
    p.add_argument("--no-png", action="store_true", help="no picture")
    p.add_argument(
        "--mean-frames",
        type=_at_least(0),
        default=100,
        help="frames averaged into the mean frame, spread over the run (0: all)",
    )
    p.set_defaults(func=show)

    p = subparsers.add_parser("sync", help=sync.__doc__, description=sync.__doc__)
    p.add_argument("uids", nargs="*", metavar="UID", help="runs to copy (default: all)")
    p.add_argument(
        "--to",
        required=True,
        metavar="URL|DIR",
        help="the catalog server (http://...), or the directory of an existing catalog",
    )
    p.add_argument(
        "--from",
        dest="catalog",
        metavar="DIR",
        help=f"the catalog to copy from (default: ${CATALOG_ENV}, else the embedded one)",
    )
    p.add_argument("--api-key", help="the server's API key (default: $TILED_API_KEY)")
    p.add_argument(
        "--copy-data",
        metavar="DIR",
        help="copy the HDF5 files into DIR (a "
        "directory the server reads) and point the server's runs there",
    )
    p.add_argument(
        "--replace-incomplete",
        action="store_true",
        help="a run the target holds half-copied (an interrupted sync) is deleted there and "
        "copied anew",
    )
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")
    p.set_defaults(func=sync)
