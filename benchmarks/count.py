"""Frames/s of our pipeline and of RE(count) beside the naive mp.Queue + h5py baseline.

    python benchmarks/count.py [--frames 200] [--shape 2048 2048] [--dir /tmp/bench]

All variants run in this one script, on the same disk, with the same simulated frames, and
the ratios are printed side by side: absolute numbers vary from machine to machine and run to
run (page cache, other load), ratios measured together much less.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np

from ophyd_scmos import SCMOSCamera, SimulatedSCMOS
from ophyd_scmos.drivers import CameraSettings
from ophyd_scmos.pipeline import FrameStream


def _naive_writer(path: str, queue: mp.Queue) -> None:
    """The hand-rolled approach: pickled frames through a Queue, stacked on the last axis."""
    with h5py.File(path, "w") as f:
        dset = None
        i = 0
        while True:
            frame = queue.get()
            if frame is None:
                break
            if dset is None:
                dset = f.create_dataset(
                    "image", (*frame.shape, 100), maxshape=(*frame.shape, None), dtype=frame.dtype
                )
            if i == dset.shape[2]:
                dset.resize(i + 100, axis=2)
            dset[:, :, i] = frame
            i += 1


def plain_write(camera: SimulatedSCMOS, n: int, path: Path) -> float:
    """The machine's own limit: the same bytes appended to a plain file, no HDF5, no camera."""
    frame = camera.expected_frame(0)
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for _ in range(n):
            f.write(frame)
    return n / (time.perf_counter() - t0)


def naive(camera: SimulatedSCMOS, n: int, path: Path) -> float:
    queue: mp.Queue = mp.get_context("spawn").Queue()
    writer = mp.get_context("spawn").Process(target=_naive_writer, args=(str(path), queue))
    writer.start()
    frame = np.empty(camera.frame_shape, camera.dtype)
    t0 = time.perf_counter()
    camera.start()
    camera.software_trigger(n)
    for _ in range(n):
        camera.read_into(frame, timeout=10)
        queue.put(frame)
    queue.put(None)
    writer.join()
    camera.stop()
    return n / (time.perf_counter() - t0)


def pipeline(camera: SimulatedSCMOS, n: int, path: Path) -> float:
    stream = FrameStream(camera, path, ring_mb=512)
    stream.open()
    done = threading.Event()
    t0 = time.perf_counter()
    camera.software_trigger(n)
    stream.wait_for(n, lambda error: done.set())
    done.wait()
    stream.close()  # timed to the closed file
    return n / (time.perf_counter() - t0)


def re_count(camera: SimulatedSCMOS, n: int, directory: Path) -> float:
    from bluesky import RunEngine
    from bluesky.plans import count

    cam = SCMOSCamera(name="cam", driver=camera, write_dir=directory, ring_mb=512)
    cam.exposure_time.set(camera.settings.exposure_time)
    RE = RunEngine({})
    t0 = time.perf_counter()
    RE(count([cam], num=n))
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--shape", type=int, nargs=2, default=(2048, 2048))
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (median)")
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (same disk)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="scmos-bench-", dir=args.dir))
    # on-camera memory for the whole burst, like a camera with RAM: we time the host side
    camera = SimulatedSCMOS(shape=tuple(args.shape), seed=0, camera_buffer_frames=args.frames)
    camera.open()
    camera.configure(CameraSettings(exposure_time=1e-5))
    n = args.frames
    rows, cols = camera.frame_shape
    mb = rows * cols * 2 / 1e6
    print(f"{n} frames of {rows}x{cols} uint16 ({mb:.1f} MB each) into {scratch}")
    variants = {
        "plain file write (limit)": lambda: plain_write(camera, n, scratch / "raw.bin"),
        "naive mp.Queue + h5py": lambda: naive(camera, n, scratch / "naive.h5"),
        "pipeline (ring + writer process)": lambda: pipeline(camera, n, scratch / "p.h5"),
        "RE(count([cam]))": lambda: re_count(camera, n, scratch / "re"),
    }
    try:
        results: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        for r in range(args.repeat):
            # rotate the order, and start each variant with a clean page cache
            for name in names[r % len(names) :] + names[: r % len(names)]:
                os.sync()
                results[name].append(variants[name]())
                for entry in scratch.iterdir():
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        fps = {name: statistics.median(v) for name, v in results.items()}
        base, limit = fps["naive mp.Queue + h5py"], fps["plain file write (limit)"]
        print(f"  {'variant':34s} {'frames/s':>9s} {'MB/s':>7s} {'x naive':>8s} {'/ limit':>8s}")
        for name, value in fps.items():
            print(
                f"  {name:34s} {value:9.1f} {value * mb:7.0f} {value / base:8.1f} "
                f"{value / limit:8.2f}"
            )
    finally:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
