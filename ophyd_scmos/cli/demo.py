"""`ophyd-scmos demo`: the main job on the simulated camera, end to end."""

from __future__ import annotations

import argparse
import sys
import time
from typing import cast


def demo(args: argparse.Namespace) -> int:
    """Run count(num) on the simulated camera into the catalog, replay it, check every pixel."""
    import numpy as np
    from bluesky import RunEngine
    from bluesky.plans import count
    from bluesky_tiled_plugins import TiledWriter

    from ophyd_scmos import ROI, SCMOSCamera, SimulatedSCMOS, open_catalog
    from ophyd_scmos.session import FrameProgress

    driver = SimulatedSCMOS(seed=args.seed)
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=args.write_dir)
    if not args.full_frame:
        cam.roi.set(ROI.centered(driver.sensor_shape, args.roi, args.roi).as_tuple())
    cam.exposure_time.set(args.exposure)
    catalog = open_catalog(args.catalog)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(TiledWriter(catalog))
    progress = FrameProgress(args.num, cam.name)
    RE.subscribe(progress)
    rows, cols = driver.frame_shape
    print(
        f"count([cam], num={args.num}): {rows}x{cols} uint16 frames, "
        f"exposure {args.exposure * 1e3:g} ms -> {cam.write_dir}",
        file=sys.stderr,
    )
    try:
        (uid,) = cast("tuple[str]", RE(count([cam], num=args.num)))
    finally:
        progress.close()
    acquired = progress.elapsed  # from the run's start to its last frame, set-up aside
    assert acquired is not None  # the run took its frames, or RE raised

    t0 = time.perf_counter()
    frames = open_catalog(args.catalog)[uid]["primary"]["cam_image"].read()
    replayed = time.perf_counter() - t0
    mismatched = [
        k for k in range(args.num) if not np.array_equal(frames[k, 0], driver.expected_frame(k))
    ]
    cam.destroy()
    print(f"run        {uid}")
    print(f"file       {cam.file_path.get()}")
    print(f"acquired   {args.num} frames in {acquired:.1f} s ({args.num / acquired:.0f} frames/s)")
    print(f"replayed   {frames.shape} {frames.dtype} from the catalog in {replayed:.1f} s")
    print(f"mean       {frames.mean():.1f} ADU")
    print(f"dropped    {cam.frames_dropped.get()}")
    print(
        f"checked    {args.num - len(mismatched)} of {args.num} frames equal the camera's, "
        "pixel for pixel"
    )
    if not args.full_frame:
        print("full frame: ophyd-scmos demo --full-frame (2048x2048, 8 MB a frame)")
    return 1 if mismatched else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help=demo.__doc__, description=demo.__doc__)
    p.add_argument("--num", type=int, default=10_000, help="frames (events) to take")
    p.add_argument("--roi", type=int, default=256, help="side of the centred square ROI")
    p.add_argument("--full-frame", action="store_true", help="use the whole 2048x2048 sensor")
    p.add_argument("--exposure", type=float, default=0.001, help="exposure time, seconds")
    p.add_argument("--seed", type=int, default=0, help="simulated camera seed")
    p.add_argument("--write-dir", default=None, help="where the HDF5 file goes")
    p.add_argument("--catalog", default=None, help="catalog directory or server URL")
    p.set_defaults(func=demo)
