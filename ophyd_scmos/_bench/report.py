"""One bench run: each section measured in turn, printed as its results arrive, and kept as
JSON (what was measured is kept even when a later section fails)."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ophyd_scmos._bench import harness, probes
from ophyd_scmos._bench.cameras import SHAPES, bank_of, make_camera
from ophyd_scmos._bench.harness import Timing
from ophyd_scmos.pipeline.compression import CODECS, default_workers


def run(args: argparse.Namespace) -> int:
    """Every section `args` asks for (the options of `ophyd-scmos bench`), into one scratch
    directory under `args.dir`; the JSON to `args.json` if given."""
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
        with harness.scratch_dir(args.dir) as scratch:
            free_gb = shutil.disk_usage(scratch).free / 1e9
            say(f"scratch directory {scratch} ({free_gb:.0f} GB free), {os.cpu_count()} cores")
            for key in args.shapes:
                out["bursts"] += _bursts(args, key, codecs, scratch, say)
            if "orca" in args.shapes and args.capped_gb > 0:
                out["capped"] = _capped(args, codecs, scratch, say)
            if "orca" in args.shapes and args.engines:
                out["engines"] = _engines(args.engines, say)
            if args.sustain_seconds > 0:
                out["sustained"] = _sustained(args, out["bursts"], scratch, say)
            if args.memory_frames:
                out["memory"] = _memory(args.memory_frames, args.memory_ring_mb, scratch, say)
            if args.count:
                out["count"] = _count(args.count, scratch, say)
            if args.pace:
                out["pace"] = _pace(args.pace, args.pace_events, scratch, say)
            if args.live:
                out["live"] = _live(args.live, args.live_frames, scratch, say)
            if args.stats:
                out["statistics"] = _statistics(args, scratch, say)
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
            say(f"\nresults in {args.json}")
    return 0


def _bursts(
    args: argparse.Namespace, key: str, codecs: list[str | None], scratch: Path, say: _Printer
) -> list[dict[str, Any]]:
    """One camera format: memcpy, then short bursts and long runs of every variant."""
    shape = SHAPES[key]
    mb = shape.frame_bytes / 1e6
    bank = bank_of(make_camera(shape, 1))
    n = max(4, round(args.burst_gb * 1e9 / shape.frame_bytes))
    copy_fps = n / harness.memcpy(bank, n)
    say.header(f"{shape.name} ({mb:.1f} MB a frame; {shape.label})")
    say(f"memcpy of frames: {copy_fps:,.0f} frames/s ({copy_fps * mb / 1e3:.1f} GB/s)")
    runs = [("burst", n, args.repeat)]
    if args.long_gb > 0:
        runs.append(("long", round(args.long_gb * 1e9 / shape.frame_bytes), args.long_repeat))
    rows = []
    for kind, frames, repeat in runs:
        timings = harness.burst(shape, frames, scratch, repeat, codecs)
        say.table(kind, frames, mb, timings)
        rows.append(
            {
                "shape": shape.name,
                "kind": kind,
                "frames": frames,
                "frame_mb": mb,
                "memcpy_fps": copy_fps,
                "timings": [asdict(t) for t in timings],
            }
        )
    return rows


def _capped(
    args: argparse.Namespace, codecs: list[str | None], scratch: Path, say: _Printer
) -> dict[str, Any]:
    """Long runs through a writer that paces itself to a slower disk's rate."""
    shape = SHAPES["orca"]
    n = round(args.capped_gb * 1e9 / shape.frame_bytes)
    mb = shape.frame_bytes / 1e6
    timings = harness.capped(shape, n, scratch, args.long_repeat, args.disk_cap_mb_s, codecs)
    say.header(
        f"{shape.name} on a disk capped at {args.disk_cap_mb_s:g} MB/s (the writer paces its "
        f"writes): {n} frames, {n * mb / 1e3:.1f} GB, timed to fsync"
    )
    plain = next(t for t in timings if t.variant == harness.variant_name(None))
    for t in timings:
        say(
            f"  {t.variant:26s} {t.disk_fps:7.1f} frames/s {t.disk_fps * mb:6.0f} MB/s of frames "
            f"{t.disk_fps * mb / t.ratio:5.0f} MB/s to disk  ratio {t.ratio:4.2f}  "
            f"x uncompressed {t.disk_fps / plain.disk_fps:4.2f}"
        )
    return {"cap_mb_s": args.disk_cap_mb_s, "timings": [asdict(t) for t in timings]}


def _engines(frames: int, say: _Printer) -> list[dict[str, Any]]:
    """Each codec's frames/s in memory, by HDF5's filter, our threads and worker processes."""
    shape = SHAPES["orca"]
    rows = probes.engines(bank_of(make_camera(shape, 1)), frames, default_workers())
    say.header(f"compression engines, {frames} 2048x2048 uint16 frames in memory")
    for row in rows:
        say(
            f"  {row['codec']:15s} {row['engine']:36s} {row['fps']:7.1f} frames/s "
            f"{row['fps'] * shape.frame_bytes / 1e6:6.0f} MB/s"
        )
    return rows


def _sustained(
    args: argparse.Namespace, bursts: list[dict[str, Any]], scratch: Path, say: _Printer
) -> dict[str, Any]:
    """Free runs at the camera's rate, and at the rate the bench calls sustainable.

    This disk's speed changes from minute to minute, so that rate is 80% of the lower of: a
    plain write timed to fsync just before the free runs times the codec's ratio, and the
    pipeline's own on-disk rate in this run's bursts.
    """
    shape = SHAPES["orca"]
    probe_frames = round(args.sustain_probe_gb * 1e9 / shape.frame_bytes)
    bank = bank_of(make_camera(shape, 1))
    os.sync()
    seconds = harness.plain_write(bank, probe_frames, scratch / "probe.bin", write_behind=True)[1]
    (scratch / "probe.bin").unlink()
    disk_mb_s = probe_frames * shape.frame_bytes / 1e6 / seconds
    timings = [t for r in bursts if r["shape"] == shape.name for t in r["timings"]]
    plan = []
    for c in args.sustain:
        plan.append((c, args.sustain_rate))
        mine = [t for t in timings if t["variant"] == harness.variant_name(c)]
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
        row = harness.sustained(
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


def _memory(
    lengths: list[int], ring_mb: float, scratch: Path, say: _Printer
) -> list[dict[str, Any]]:
    """Peak memory of runs of each length, uncompressed and compressed."""
    say.header(f"memory: peak RSS, 256x256 frames, ring {ring_mb} MB")
    rows = []
    for compression in (None, "bitshuffle-lz4"):
        rows += probes.memory(lengths, ring_mb, compression, scratch)
    for row in rows:
        say(
            f"  {row['compression']:15s} {row['frames']:6d} frames: acquiring "
            f"process {row['main_peak_mb']:6.0f} MB, writer process "
            f"{row['writer_peak_mb']:6.0f} MB"
        )
    return rows


def _count(events: int, scratch: Path, say: _Printer) -> dict[str, float]:
    say.header(f"RE(count(..., num={events})) events/s")
    counted = probes.re_count(events, scratch)
    for name, rate in counted.items():
        if name != "events":
            say(f"  {name:40s} {rate:7.1f} events/s")
    return counted


def _pace(rounds: int, events: int, scratch: Path, say: _Printer) -> dict[str, Any]:
    say.header(f"pace: ours beside ophyd.sim's det in the same run, medians of {rounds} rounds")
    p = probes.pace(rounds, events, scratch)
    one, tiled, full = p["one_event_run_ms"], p["count_256_tiled_events_s"], p["full_frame_per_s"]
    say(
        f"  one-event count run       ours {one['SCMOSCamera']:7.1f} ms   "
        f"det {one['ophyd.sim det']:6.1f} ms   ours/det {p['one_event_run_ratio']:5.1f}x"
    )
    into = p["one_event_run_into_catalog_ms"]
    say(
        f"  the same, into the catalog ours {into['SCMOSCamera']:7.1f} ms   "
        f"det {into['ophyd.sim det']:6.1f} ms   (the catalog's requests: a run's, a "
        "stream's and an image's node, the events, the stop)"
    )
    ratio = p["count_256_tiled_ratio"]
    say(
        f"  count 256x256 into catalog ours {tiled['SCMOSCamera']:6.0f} events/s   "
        f"det {tiled['ophyd.sim det']:4.0f} events/s   ours/det {ratio['SCMOSCamera']:5.2f}"
    )
    say(
        f"  count 256x256, the floor    {tiled[probes.FLOOR]:6.0f} events/s   floor/det "
        f"{ratio[probes.FLOOR]:5.2f}   ours/floor {p['count_256_ours_vs_floor']:5.2f} (a device "
        "whose trigger only asks another process to write and flush its frame: the least "
        "that guarantee costs here)"
    )
    if probes.PEER in tiled:
        say(
            f"  count 320x240 uint8, {probes.PEER} {tiled[probes.PEER]:4.0f} events/s   "
            f"its/det {ratio[probes.PEER]:5.2f} (the nearest peer: it writes in the "
            "RunEngine's event loop, no process of its own, its frames' sums only)"
        )
    else:
        say(f"  ({probes.PEER} beside them: pip install 'ophyd-async[sim]')")
    say(
        f"  a step's trigger waits {p['count_256_trigger_wait_ms']:.2f} ms for its frame to be "
        f"flushed and measured; det's whole event takes {1e3 / tiled['ophyd.sim det']:.2f} ms"
    )
    _step_cpu(p["count_256_cpu_ms"], tiled, say)
    say(
        f"  2048x2048 count           {full['count']:6.1f} events/s   movie {full['movie']:6.1f} "
        f"frames/s   count/movie {p['full_frame_count_vs_movie']:5.2f}"
    )
    say(f"  open_catalog() (embedded, after imports, new process) {p['open_catalog_s']:.2f} s")
    say(f"  ophyd-scmos ipython to its first prompt (a terminal)  {p['ipython_prompt_s']:.2f} s")
    return p


def _step_cpu(cpu: dict[str, dict[str, float]], rates: dict[str, float], say: _Printer) -> None:
    """Where the count's CPU went, ms per event, each detector a column; beside the event's
    wall time: where they are close, each part waited for the one before."""
    columns = {"SCMOSCamera": "ours", "ophyd.sim det": "det", probes.FLOOR: "floor"}
    columns.update({probes.PEER: "peer"} if probes.PEER in cpu else {})
    say(
        "  CPU of the count's events (ms each), by thread of this process and by process "
        "(the threads share one interpreter lock)"
    )
    say(f"    {'':38s}" + "".join(f"{label:>8s}" for label in columns.values()))
    for row in cpu["SCMOSCamera"]:  # every row: ours has a writer process
        cells = (cpu[name].get(row) for name in columns)
        say(f"    {row:38s}" + "".join("       -" if v is None else f"{v:8.2f}" for v in cells))
    say(f"    {'one event, wall time':38s}" + "".join(f"{1e3 / rates[n]:8.2f}" for n in columns))


def _live(rounds: int, frames: int, scratch: Path, say: _Printer) -> dict[str, Any]:
    say.header(
        f"live view: movies of {frames} frames with the view closed and open (a page asking "
        f"for every newest frame, binned to 1024x1024), medians of {rounds} rounds"
    )
    results = probes.live_view(rounds, frames, scratch)
    for shape in ("2048x2048", "512x512"):
        r = results[shape]
        rates, page = r["movie_frames_s"], r["page"]
        say(
            f"  {shape:9s} movie closed {rates['closed']:6.1f} frames/s   open "
            f"{rates['open']:6.1f} frames/s   open/closed {r['open_vs_closed']:5.2f}   page "
            f"{page['updates_s']:5.1f} updates/s, frame to page {page['latency_ms_median']:4.0f} "
            f"ms (95%: {page['latency_ms_p95']:4.0f} ms)"
        )
    return results


def _statistics(args: argparse.Namespace, scratch: Path, say: _Printer) -> dict[str, Any]:
    say.header(
        f"statistics: every frame's (whole frame and one region) on vs off, one camera each, "
        f"medians of {args.stats} rounds ({args.stats * probes.STEP_ROUNDS} of the count, "
        f"{args.stats_events} events each; on: total, max, centroid_x/y read, all nine stored) "
        "[the middle half of the rounds' ratios]"
    )
    results = probes.statistics_cost(args.stats, args.stats_frames, args.stats_events, scratch)
    for label in ("movie 512x512", "movie 2048x2048", "count 256x256"):
        r = results[label]
        unit = "events/s" if label.startswith("count") else "frames/s"
        say(
            f"  {label:16s} on {r['per_s']['on']:7.1f} {unit}   off {r['per_s']['off']:7.1f} "
            f"{unit}   {_on_off(r, 'on')}"
        )
        if probes.ALL_READ in r["per_s"]:
            say(
                f"  {'':16s} on {r['per_s'][probes.ALL_READ]:7.1f} {unit}, "
                f"{probes.ALL_READ} (18 readings an event): {_on_off(r, probes.ALL_READ)}"
            )
            again = _on_off(r, probes.OFF_AGAIN, "again/off")
            say(
                f"  {'':16s} off {r['per_s'][probes.OFF_AGAIN]:6.1f} {unit}, {probes.OFF_AGAIN} "
                f"(nothing changed: the method's own reading): {again}"
            )
            runs = r["one_event_run_ms"]
            say(
                f"  one-event count run  on {runs['on']:5.1f} ms   off {runs['off']:5.1f} ms  "
                f"(medians of {probes.ONE_EVENT_RUNS}: what a short scan pays once)"
            )
    return results


def _on_off(result: dict[str, Any], variant: str, name: str = "on/off") -> str:
    low, high = result[f"{variant}_vs_off_quartiles"]
    return f"{name} {result[f'{variant}_vs_off']:5.2f} [{low:4.2f}-{high:4.2f}]"


class _Printer:
    """Prints as results arrive: a long run shows its progress."""

    def __call__(self, text: str) -> None:
        print(text, flush=True)

    def header(self, text: str) -> None:
        self(f"\n{text}")

    def table(self, kind: str, n: int, mb: float, timings: list[Timing]) -> None:
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
        naive = next(t for t in timings if t.variant == harness.NAIVE)
        for t in timings:
            self(
                f"  {t.variant:26s} {t.closed_fps:9.1f} {t.closed_fps * mb:5.0f} "
                f"{t.disk_fps:9.1f} {t.disk_fps * mb:6.0f} {t.ratio:6.2f} "
                f"{t.vs_plain[0]:7.2f} {t.vs_plain[1]:7.2f} {t.vs_behind:6.2f} "
                f"{t.disk_fps / naive.disk_fps:8.1f}"
            )
