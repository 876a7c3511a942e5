"""`ophyd-scmos bench`: throughput of this machine, the naive baseline and our pipeline, side by
side in one run, as a table (and `--json`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any


def bench(args: argparse.Namespace) -> int:
    """Measure frames/s to the page cache and to disk, compression, free-run losses, memory."""
    from ophyd_scmos.pipeline import bench as b
    from ophyd_scmos.pipeline.compression import CODECS, default_workers

    codecs: list[str | None] = [None, *CODECS]
    out: dict[str, Any] = {
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "args": {k: v for k, v in vars(args).items() if k != "func"},
        },
        "bursts": [],
    }
    say = _Printer()
    try:
        with b.scratch_dir(args.dir) as scratch:
            say(
                f"scratch directory {scratch} ({_free_gb(scratch):.0f} GB free), "
                f"{os.cpu_count()} cores"
            )
            for key in args.shapes:
                shape = b.SHAPES[key]
                mb = shape.frame_bytes / 1e6
                bank = b.bank_of(b.make_camera(shape, 1))
                n = max(4, round(args.burst_gb * 1e9 / shape.frame_bytes))
                copy_fps = n / b.memcpy(bank, n)
                say.header(f"{shape.name} ({mb:.1f} MB a frame; {shape.label})")
                say(f"memcpy of frames: {copy_fps:,.0f} frames/s ({copy_fps * mb / 1e3:.1f} GB/s)")
                runs = [("burst", n, args.repeat)]
                if args.long_gb > 0:
                    runs.append(
                        ("long", round(args.long_gb * 1e9 / shape.frame_bytes), args.long_repeat)
                    )
                for kind, frames, repeat in runs:
                    timings = b.burst(shape, frames, scratch, repeat, codecs)
                    say.table(kind, frames, mb, timings)
                    out["bursts"].append(
                        {
                            "shape": shape.name,
                            "kind": kind,
                            "frames": frames,
                            "frame_mb": mb,
                            "memcpy_fps": copy_fps,
                            "timings": [b.as_json(t) for t in timings],
                        }
                    )
            if "orca" in args.shapes and args.capped_gb > 0:
                out["capped"] = _capped(args, b, codecs, scratch, say)
            if "orca" in args.shapes and args.engines:
                bank = b.bank_of(b.make_camera(b.SHAPES["orca"], 1))
                rows = b.engines(bank, args.engines, default_workers())
                say.header(f"compression engines, {args.engines} 2048x2048 uint16 frames in memory")
                for row in rows:
                    say(
                        f"  {row['codec']:15s} {row['engine']:36s} {row['fps']:7.1f} frames/s "
                        f"{row['fps'] * b.SHAPES['orca'].frame_bytes / 1e6:6.0f} MB/s"
                    )
                out["engines"] = rows
            if args.sustain_seconds > 0:
                out["sustained"] = _sustained(args, b, out["bursts"], scratch, say)
            if args.memory_frames:
                say.header(f"memory: peak RSS, 256x256 frames, ring {args.memory_ring_mb} MB")
                rows = []
                for compression in (None, "bitshuffle-lz4"):
                    rows += b.memory(args.memory_frames, args.memory_ring_mb, compression, scratch)
                for row in rows:
                    say(
                        f"  {row['compression']:15s} {row['frames']:6d} frames: acquiring "
                        f"process {row['main_peak_mb']:6.0f} MB, writer process "
                        f"{row['writer_peak_mb']:6.0f} MB"
                    )
                out["memory"] = rows
            if args.count:
                say.header(f"RE(count(..., num={args.count})) events/s")
                counted = b.re_count(args.count, scratch)
                for name, rate in counted.items():
                    if name != "events":
                        say(f"  {name:40s} {rate:7.1f} events/s")
                out["count"] = counted
    finally:  # what was measured is kept, even if a later section fails
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
            say(f"\nresults in {args.json}")
    return 0


def _capped(
    args: argparse.Namespace, b: Any, codecs: list, scratch: Path, say: _Printer
) -> dict[str, Any]:
    """Long runs through a writer that paces itself to a slower disk's rate."""
    shape = b.SHAPES["orca"]
    n = round(args.capped_gb * 1e9 / shape.frame_bytes)
    mb = shape.frame_bytes / 1e6
    timings = b.capped(shape, n, scratch, args.long_repeat, args.disk_cap_mb_s, codecs)
    say.header(
        f"{shape.name} on a disk capped at {args.disk_cap_mb_s:g} MB/s (the writer paces its "
        f"writes): {n} frames, {n * mb / 1e3:.1f} GB, timed to fsync"
    )
    plain = next(t for t in timings if t.variant == b.variant_name(None))
    for t in timings:
        say(
            f"  {t.variant:26s} {t.disk_fps:7.1f} frames/s {t.disk_fps * mb:6.0f} MB/s of frames "
            f"{t.disk_fps * mb / t.ratio:5.0f} MB/s to disk  ratio {t.ratio:4.2f}  "
            f"x uncompressed {t.disk_fps / plain.disk_fps:4.2f}"
        )
    return {"cap_mb_s": args.disk_cap_mb_s, "timings": [b.as_json(t) for t in timings]}


def _sustained(
    args: argparse.Namespace, b: Any, bursts: list[dict], scratch: Path, say: _Printer
) -> dict[str, Any]:
    """Free runs at the camera's rate, and at the rate the bench calls sustainable.

    This disk's speed changes from minute to minute, so that rate is 80% of the lower of: a
    plain write timed to fsync just before the free runs times the codec's ratio, and the
    pipeline's own on-disk rate in this run's bursts.
    """
    shape = b.SHAPES["orca"]
    probe_frames = round(args.sustain_probe_gb * 1e9 / shape.frame_bytes)
    bank = b.bank_of(b.make_camera(shape, 1))
    os.sync()
    seconds = b.plain_write(bank, probe_frames, scratch / "probe.bin", write_behind=True)[1]
    (scratch / "probe.bin").unlink()
    disk_mb_s = probe_frames * shape.frame_bytes / 1e6 / seconds
    timings = [t for r in bursts if r["shape"] == shape.name for t in r["timings"]]
    plan = []
    for c in args.sustain:
        plan.append((c, args.sustain_rate))
        mine = [t for t in timings if t["variant"] == b.variant_name(c)]
        ratio = max([1.0] + [t["ratio"] for t in mine])
        # the disk now, or the pipeline itself (CPU), whichever this run found slower
        limit = min([disk_mb_s * ratio / (shape.frame_bytes / 1e6)] + [t["disk_fps"] for t in mine])
        sustainable = math.floor(0.8 * limit)
        if sustainable < args.sustain_rate:
            plan.append((c, sustainable))
    say.header(
        f"sustained free run (internal trigger), {shape.name}, ring {args.sustain_ring_mb:g} MB, "
        f"overflow=drop; disk just before: {disk_mb_s:.0f} MB/s to fsync"
    )
    rows = []
    for compression, rate in plan:
        row = b.sustained(
            shape, rate, args.sustain_seconds, compression, scratch, args.sustain_ring_mb
        )
        lost = row["dropped"] + row["missed"]
        say(
            f"  {row['variant']:26s} {rate:5.0f} frames/s for {row['seconds']:.0f} s: "
            f"{row['taken']} taken, {row['written']} written, {row['dropped']} dropped, "
            f"{row['missed']} missed -> {'0 lost' if not lost else f'{lost} LOST'}; "
            f"ring peak {row['peak_ring_fill']:.0%}, drain {row['drain_s']} s"
        )
        rows.append(row)
    return {"disk_mb_s": disk_mb_s, "runs": rows}


class _Printer:
    """Prints as results arrive: a long run shows its progress."""

    def __call__(self, text: str) -> None:
        print(text, flush=True)

    def header(self, text: str) -> None:
        self(f"\n{text}")

    def table(self, kind: str, n: int, mb: float, timings: list) -> None:
        what = (
            "page cache may hold most of it"
            if kind == "burst"
            else "several times what the page cache absorbs: the disk is the limit"
        )
        self(f" {kind}: {n} frames, {n * mb / 1e3:.1f} GB ({what})")
        self(
            f"  {'variant':26s} {'closed':>14s} {'on disk (fsync)':>16s} {'ratio':>6s} "
            f"{'/plain':>7s} {'/plain':>7s} {'/w-b':>6s} {'x naive':>8s}"
        )
        self(
            f"  {'':26s} {'frames/s':>9s} {'MB/s':>5s} {'frames/s':>9s} {'MB/s':>6s} {'':>6s} "
            f"{'closed':>7s} {'disk':>7s} {'disk':>6s} {'disk':>8s}"
        )
        naive = next(t for t in timings if t.variant.startswith("naive"))
        for t in timings:
            self(
                f"  {t.variant:26s} {t.closed_fps:9.1f} {t.closed_fps * mb:5.0f} "
                f"{t.disk_fps:9.1f} {t.disk_fps * mb:6.0f} {t.ratio:6.2f} "
                f"{t.vs_plain[0]:7.2f} {t.vs_plain[1]:7.2f} {t.vs_behind:6.2f} "
                f"{t.disk_fps / naive.disk_fps:8.1f}"
            )


def _free_gb(path: Path) -> float:
    import shutil

    return shutil.disk_usage(path).free / 1e9


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help=bench.__doc__, description=bench.__doc__)
    p.add_argument(
        "--shapes",
        nargs="+",
        default=["orca", "kinetix8"],
        choices=["orca", "kinetix8"],
        help="orca: 2048x2048 uint16; kinetix8: 3200x3200 uint8",
    )
    p.add_argument("--burst-gb", type=float, default=1.6, help="size of the short bursts")
    p.add_argument("--repeat", type=int, default=3, help="runs of each short burst (median)")
    p.add_argument(
        "--long-gb",
        type=float,
        default=6,
        help="size of the long runs, where the disk is the limit (0: skip)",
    )
    p.add_argument("--long-repeat", type=int, default=3, help="runs of each long run (median)")
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
    p.add_argument("--memory-ring-mb", type=float, default=16)
    p.add_argument("--count", type=int, default=1000, help="events of RE(count) (0: skip)")
    p.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="scratch directory's parent: the disk to measure (default: $TMPDIR)",
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.set_defaults(func=bench)


def _compression(text: str) -> str | None:
    from ophyd_scmos.pipeline.compression import check_compression

    return check_compression(text)
