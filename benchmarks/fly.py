"""Frames/s a fly scan records, beside the pipeline's own limit, measured in one run.

    python benchmarks/fly.py [--frames 300] [--shape 2048 2048] [--repeat 3] [--dir DIR]

"Pipeline" streams a burst straight through `FrameStream` (camera -> ring -> writer ->
closed file), no RunEngine. "movie()" records the same number of frames with
`RE(ophyd_scmos.plans.movie(cam, frames=N))`: stage, kickoff, pages of StreamDatum every
0.5 s, complete, close. The camera free-runs faster than either and never loses a frame, so
both are limited by the host. Each variant starts after a sync, in
rotating order; the figure is the median.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bluesky import RunEngine

from ophyd_scmos import SCMOSCamera, SimulatedSCMOS
from ophyd_scmos.drivers import CameraSettings, TriggerMode
from ophyd_scmos.pipeline import FrameStream
from ophyd_scmos.pipeline.options import PipelineOptions
from ophyd_scmos.plans import movie

EXPOSURE = 1e-4  # 10,000 frames/s: the camera is never the limit


def camera(shape: tuple[int, int]) -> SimulatedSCMOS:
    # a camera that never loses a frame (its simulated memory is unbounded): the host is
    # all that is measured
    cam = SimulatedSCMOS(shape=shape, seed=0, camera_buffer_frames=2**40)
    cam.open()
    return cam


def pipeline(cam: SimulatedSCMOS, n: int, directory: Path) -> float:
    cam.configure(CameraSettings(exposure_time=EXPOSURE, trigger_mode=TriggerMode.INTERNAL))
    options = PipelineOptions(ring_mb=512)
    stream = FrameStream(cam, directory / "pipeline.h5", options=options, gated=True)
    stream.open()
    t0 = time.perf_counter()
    stream.allow(n)
    stream.wait(n)
    stream.close()
    return n / (time.perf_counter() - t0)


def fly(cam: SimulatedSCMOS, n: int, directory: Path) -> float:
    device = SCMOSCamera(name="cam", driver=cam, write_dir=directory, ring_mb=512)
    device.exposure_time.set(EXPOSURE)
    RE = RunEngine({}, context_managers=[])
    timings: dict[str, float] = {}
    RE.msg_hook = lambda msg: timings.setdefault(msg.command, time.perf_counter())  # type: ignore[assignment]
    RE(movie(device, frames=n))
    end = time.perf_counter()
    assert device.frames_missed.get() == 0 and device.frames_dropped.get() == 0
    return n / (end - timings["kickoff"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--shape", type=int, nargs=2, default=(2048, 2048))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (same disk)")
    args = parser.parse_args()
    shape, n = tuple(args.shape), args.frames
    scratch = Path(tempfile.mkdtemp(prefix="scmos-fly-", dir=args.dir))
    cam = camera(shape)
    variants = {"pipeline (FrameStream)": pipeline, "fly scan: RE(movie(cam))": fly}
    results: dict[str, list[float]] = {name: [] for name in variants}
    mb = shape[0] * shape[1] * 2 / 1e6
    print(f"{n} frames of {shape[0]}x{shape[1]} uint16 ({mb:.1f} MB each) into {scratch}")
    try:
        names = list(variants)
        for r in range(args.repeat):
            for name in names[r % 2 :] + names[: r % 2]:
                os.sync()
                results[name].append(variants[name](cam, n, scratch))
                for entry in scratch.iterdir():
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        fps = {name: statistics.median(values) for name, values in results.items()}
        limit = fps["pipeline (FrameStream)"]
        print(f"  {'variant':28s} {'frames/s':>9s} {'MB/s':>7s} {'/ pipeline':>11s}")
        for name, value in fps.items():
            print(f"  {name:28s} {value:9.1f} {value * mb:7.0f} {value / limit:11.2f}")
    finally:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
