"""Large runs stay lazy: time, memory and bytes read to the last frame, for short and long runs.

    python benchmarks/replay_lazy.py                     # 100 and 10,000 frames of 256x256
    python benchmarks/replay_lazy.py --frames 100 1000 --roi 512 --json

Each run is taken with `RE(count([cam], num))` into an embedded catalog. Then, for each run, a
fresh process opens the catalog, looks the run up and reads its last frame (lazy: the figures
should not grow with the run); for contrast, another fresh process reads the whole run. Bytes
read are the process's read() calls (/proc/self/io ``rchar``; the embedded catalog reads files
in-process), which the page cache does not hide; memory is how far the peak RSS rose above the
RSS before the read (Linux: /proc/self/status, peak reset through /proc/self/clear_refs).
Lazy figures are medians of `--repeat` processes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEASURE = """
import json, sys, time
from pathlib import Path
import numpy as np
from ophyd_scmos.catalog import open_catalog

def rchar():  # bytes this process asked read() for: Linux only, 0 elsewhere
    io = Path("/proc/self/io")
    if not io.exists():
        return 0
    return int(dict(line.split(": ") for line in io.read_text().splitlines())["rchar"])

def rss(field):  # bytes; VmHWM is the peak since the last reset_peak()
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line.split()[1] for line in status if line.startswith(field))) * 1024

def reset_peak():  # Linux >= 4.0: the peak starts again from the current RSS
    Path("/proc/self/clear_refs").write_text("5")

directory, uid, mode = sys.argv[1:]
catalog = open_catalog(directory)
catalog[uid]  # warm: the in-process server and its database connections, not the run
reset_peak()
base_rss, base_read, t0 = rss("VmRSS:"), rchar(), time.perf_counter()
images = open_catalog(directory)[uid]["primary"]["cam_image"]
opened = time.perf_counter() - t0
frame = images[images.shape[0] - 1] if mode == "last" else images.read()
total = time.perf_counter() - t0
print(json.dumps({"open_s": opened, "total_s": total, "read_bytes": rchar() - base_read,
                  "rss_growth": rss("VmHWM:") - base_rss, "shape": list(np.shape(frame))}))
"""


def take_runs(directory: Path, frame_counts: list[int], roi: int) -> dict[int, tuple[str, Path]]:
    from bluesky import RunEngine
    from bluesky.plans import count
    from bluesky_tiled_plugins import TiledWriter

    from ophyd_scmos import ROI, SCMOSCamera, SimulatedSCMOS
    from ophyd_scmos.catalog import open_catalog

    driver = SimulatedSCMOS(seed=0)
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=directory / "frames")
    cam.roi.set(ROI.centered(driver.sensor_shape, roi, roi).as_tuple())
    cam.exposure_time.set(0.001)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(TiledWriter(open_catalog(directory / "catalog")))
    runs = {}
    for n in frame_counts:
        t0 = time.perf_counter()
        (uid,) = RE(count([cam], num=n))
        runs[n] = (uid, Path(cam.file_path.get()))
        print(f"  took {n} frames in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return runs


def measure(directory: Path, uid: str, mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(directory / "catalog"), uid, mode],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--roi", type=int, default=256, help="side of the square frames")
    parser.add_argument("--repeat", type=int, default=3, help="processes per lazy figure")
    parser.add_argument("--dir", type=Path, help="where runs go (default: a temporary one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="replay-lazy-") as tmp:
        directory = args.dir or Path(tmp)
        print(f"taking runs of {args.frames} frames of {args.roi}x{args.roi}", file=sys.stderr)
        runs = take_runs(directory, args.frames, args.roi)
        rows = []
        for n, (uid, path) in runs.items():
            lazy = [measure(directory, uid, "last") for _ in range(args.repeat)]
            eager = measure(directory, uid, "all")
            rows.append(
                {
                    "frames": n,
                    "file_bytes": path.stat().st_size,
                    **{
                        f"last_{key}": statistics.median(m[key] for m in lazy)
                        for key in ("open_s", "total_s", "read_bytes", "rss_growth")
                    },
                    **{f"all_{key}": eager[key] for key in ("total_s", "read_bytes", "rss_growth")},
                }
            )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    mb = 1e6
    print(f"{'':>8}  {'':>9}  {'last frame (lazy)':^36}  {'whole run (contrast)':^28}")
    print(
        f"{'frames':>8}  {'file MB':>9}  {'open s':>7} {'to frame s':>10} {'read MB':>8} "
        f"{'RSS+MB':>7}  {'s':>7} {'read MB':>9} {'RSS+MB':>8}"
    )
    for r in rows:
        print(
            f"{r['frames']:>8}  {r['file_bytes'] / mb:>9.1f}  {r['last_open_s']:>7.3f} "
            f"{r['last_total_s']:>10.3f} {r['last_read_bytes'] / mb:>8.2f} "
            f"{r['last_rss_growth'] / mb:>7.1f}  {r['all_total_s']:>7.2f} "
            f"{r['all_read_bytes'] / mb:>9.1f} {r['all_rss_growth'] / mb:>8.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
