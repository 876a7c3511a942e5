"""`ophyd-scmos bench`: throughput of this machine, the naive baseline and our pipeline, side by
side in one run, as a table (and `--json`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ophyd_scmos.cli import CommandError, positive


def bench(args: argparse.Namespace) -> int:
    """Measure frames/s to the page cache and to disk, compression, free-run losses, memory."""
    from ophyd_scmos._bench.report import run

    # Checked before minutes of measuring, not after.
    if args.dir is not None and not args.dir.is_dir():
        raise CommandError(f"--dir {args.dir}: no such directory")
    if args.json is not None:
        folder = Path(args.json).expanduser().absolute().parent
        if not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise CommandError(f"--json {args.json}: cannot write a file in {folder}")
    return run(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help=bench.__doc__, description=bench.__doc__)
    p.add_argument(
        "--shapes",
        nargs="*",
        default=["orca", "kinetix8"],
        choices=["orca", "kinetix8"],
        help="orca: 2048x2048 uint16; kinetix8: 3200x3200 uint8; --shapes alone: no disk sections",
    )
    p.add_argument("--burst-gb", type=float, default=1.6, help="size of the short bursts")
    p.add_argument(
        "--repeat", type=positive(int), default=3, help="runs of each short burst (median)"
    )
    p.add_argument(
        "--long-gb",
        type=float,
        default=6,
        help="size of the long runs, where the disk is the limit (0: skip)",
    )
    p.add_argument(
        "--long-repeat", type=positive(int), default=3, help="runs of each long run (median)"
    )
    p.add_argument(
        "--disk-cap-mb-s",
        type=float,
        default=500,
        help="rate of the slower disk the capped runs stand for (a SATA SSD: 500)",
    )
    p.add_argument(
        "--capped-gb",
        type=float,
        default=3,
        help="size of the runs on the capped disk, 2048x2048 only (0: skip)",
    )
    p.add_argument(
        "--engines",
        type=int,
        default=48,
        help="frames to compress in memory per codec and engine (0: skip)",
    )
    p.add_argument(
        "--sustain-seconds", type=float, default=60, help="length of each free run (0: skip)"
    )
    p.add_argument(
        "--sustain-rate",
        type=float,
        default=100,
        help="camera frame rate of the free runs (ORCA-Flash4.0: 100)",
    )
    p.add_argument("--sustain-ring-mb", type=float, default=256, help="ring of the free runs")
    p.add_argument(
        "--sustain-probe-gb",
        type=float,
        default=3,
        help="plain write just before the free runs: the disk's rate at that time",
    )
    p.add_argument(
        "--sustain",
        nargs="+",
        type=_compression,
        default=[None, "bitshuffle-lz4"],
        help="compressions to free-run with (none, bitshuffle-lz4, ...)",
    )
    p.add_argument(
        "--memory-frames",
        type=int,
        nargs="*",
        default=[1000, 10000],
        help="run lengths whose peak memory to compare",
    )
    p.add_argument(
        "--memory-ring-mb", type=positive(float), default=16, help="ring of the memory runs"
    )
    p.add_argument("--count", type=int, default=1000, help="events of RE(count) (0: skip)")
    p.add_argument(
        "--pace", type=int, default=3, help="rounds of the interactive-pace section (0: skip)"
    )
    p.add_argument("--pace-events", type=int, default=500, help="events of each pace count")
    p.add_argument("--live", type=int, default=3, help="rounds of the live-view section (0: skip)")
    p.add_argument("--live-frames", type=int, default=1000, help="frames of each live movie")
    p.add_argument(
        "--stats",
        type=int,
        default=3,
        help="rounds of the statistics on/off section's movies; its count runs four times as "
        "many (0: skip)",
    )
    p.add_argument("--stats-frames", type=int, default=1000, help="frames of each statistics movie")
    p.add_argument("--stats-events", type=int, default=500, help="events of each statistics count")
    p.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="scratch directory's parent: the disk to measure (default: $TMPDIR)",
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.set_defaults(func=bench)


def _compression(text: str) -> str | None:
    """A --sustain value, checked where every compression is: none or one of the codecs."""
    from ophyd_scmos.pipeline.options import PipelineOptions

    try:
        return PipelineOptions(compression=text).compression
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
