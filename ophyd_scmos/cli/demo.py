"""`ophyd-scmos demo`: the main job on the simulated camera, end to end; with `--align`, a
sample found by scans as a user aligns one."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any, cast

from ophyd_scmos.cli import (
    EXIT_INTERRUPTED,
    CommandError,
    no_run_aborted_traceback,
    positive,
    reaching_catalog,
    run_error,
    whole_number,
)

#: Where `demo --align` hides the sample: motor units, off centre, between scan points.
ALIGN_SAMPLE = (0.73, -0.26)
#: Its scans: -2 to 2 in 41 points, a step of 0.1 motor units.
ALIGN_SCAN = (-2.0, 2.0, 41)
#: How far one motor unit moves the sample's image, sensor pixels: a step is a pixel.
PIXELS_PER_UNIT = 10.0
#: The side of the region the peak is found in, frame pixels, in the middle of the frame.
ALIGN_REGION = 32


def demo(args: argparse.Namespace) -> int:
    """Run count(num) on the simulated camera into the catalog, replay it, check every pixel."""
    if args.align:
        return align(args)
    from ophyd_scmos.catalog import start_local_server

    cam, driver = _camera(args)  # its options checked first; it takes no frame before the run
    try:
        with reaching_catalog(args.catalog):
            start_local_server(args.catalog)  # if none runs: it starts while this imports
        import numpy as np
        from bluesky import RunEngine
        from bluesky.plans import count
        from bluesky.utils import RunEngineInterrupted

        from ophyd_scmos import CatalogWriter, open_catalog
        from ophyd_scmos.session import FrameProgress

        with reaching_catalog(args.catalog):
            catalog = open_catalog(args.catalog)
    except CommandError:
        cam.destroy()
        raise
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(CatalogWriter(catalog))
    progress = FrameProgress(args.num, cam.name)
    RE.subscribe(progress)
    rows, cols = driver.frame_shape
    print(
        f"count([cam], num={args.num}): {rows}x{cols} uint16 frames, "
        f"exposure {args.exposure * 1e3:g} ms -> {cam.write_dir}",
        file=sys.stderr,
    )
    try:
        with no_run_aborted_traceback():
            (uid,) = cast("tuple[str]", RE(count([cam], num=args.num)))
    except RunEngineInterrupted:  # Ctrl-C: bluesky paused the run; end it, keeping it
        progress.close()
        with no_run_aborted_traceback():
            (uid,) = cast("tuple[str]", RE.abort("interrupted (Ctrl-C)"))
        cam.destroy()
        print(
            f"ophyd-scmos demo: interrupted; run {uid} ends with the {cam.frames_written.get()} "
            f"frames taken, in {cam.file_path.get()}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED + signal.SIGINT
    except Exception as exc:
        cam.destroy()
        raise CommandError(run_error(exc), code=1) from None
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


def align(args: argparse.Namespace) -> int:
    """Find a hidden sample as a user aligns one: scan motor_x through the beam, move to the
    peak bluesky's PeakStats finds, the same with motor_y; compare with where the sample is.
    Succeeds (0) when both peaks are within half a step of it, half a pixel of its image."""
    import bluesky.plan_stubs as bps
    import h5py
    import numpy as np
    from bluesky import RunEngine
    from bluesky.callbacks.fitting import PeakStats
    from bluesky.plans import scan
    from ophyd.sim import SynAxis

    from ophyd_scmos import ROI
    from ophyd_scmos.drivers import sample_on_stage
    from ophyd_scmos.pipeline import layout

    cam, driver = _camera(args)
    roi = ROI(*cam.roi.get())
    # A region where the sample is to be, so the scene's noise over the rest does not count.
    side = ALIGN_REGION
    if min(roi.width, roi.height) < side:
        raise CommandError(
            f"--roi {args.roi}: --align looks for the sample in {side}x{side} pixels"
        )
    cam.rois["sample"] = ((roi.width - side) // 2, (roi.height - side) // 2, side, side)
    motors = (SynAxis(name="motor_x"), SynAxis(name="motor_y"))
    driver.spot = sample_on_stage(
        *motors,
        axis=(roi.x + (roi.width - 1) / 2, roi.y + (roi.height - 1) / 2),  # the ROI's middle
        aligned_at=ALIGN_SAMPLE,
        pixels_per_unit=PIXELS_PER_UNIT,
    )
    RE = RunEngine({}, call_returns_result=False)
    start, stop, num = ALIGN_SCAN
    half_step = (stop - start) / (num - 1) / 2
    print(
        f"scan([cam], motor, {start:g}, {stop:g}, {num}) for motor_x, then motor_y: "
        f"{roi.height}x{roi.width} frames, exposure {args.exposure * 1e3:g} ms -> {cam.write_dir}",
        file=sys.stderr,
    )
    agreed = True
    try:
        for motor, true in zip(motors, ALIGN_SAMPLE, strict=True):
            # Any: bluesky types neither a callback's results nor callbacks as subscribers.
            peak: Any = PeakStats(motor.name, "cam_sample_total")
            t0 = time.perf_counter()
            RE(scan([cam], motor, start, stop, num), peak)
            took = time.perf_counter() - t0
            with h5py.File(cam.file_path.get(), "r") as f:
                frames = f[layout.DATA][()]
            exact = sum(np.array_equal(f, driver.expected_frame(k)) for k, f in enumerate(frames))
            if peak.cen is None:
                print(f"{motor.name}  no peak in cam_sample_total; the sample is at {true:+.3f}")
                return 1
            off = peak.cen - true
            agreed &= abs(off) <= half_step and exact == len(frames) == num
            print(
                f"{motor.name}  peak at {peak.cen:+.3f}, the sample at {true:+.3f}: off by "
                f"{off:+.3f} ({off * PIXELS_PER_UNIT:+.2f} px); {num} points in {took:.1f} s; "
                f"{exact} of {len(frames)} frames equal the camera's, pixel for pixel"
            )
            RE(bps.mv(motor, peak.cen))
    finally:
        cam.destroy()
    verdict = "found" if agreed else "NOT found"
    print(
        f"sample {verdict} within half a step ({half_step:g} motor units, "
        f"{half_step * PIXELS_PER_UNIT:g} px)"
    )
    return 0 if agreed else 1


def _camera(args: argparse.Namespace) -> tuple[Any, Any]:
    """The demo's camera and its simulated sensor, or a `CommandError` saying which option
    it refused (an ROI larger than the sensor, an exposure, a write directory)."""
    from ophyd_scmos import ROI, SCMOSCamera, SimulatedSCMOS
    from ophyd_scmos.files import prepare_dir

    driver = SimulatedSCMOS(seed=args.seed)
    sensor = driver.sensor_shape
    if not args.full_frame and args.roi > min(sensor):
        raise CommandError(f"--roi {args.roi}: the sensor is {sensor[1]}x{sensor[0]}")
    try:
        cam = SCMOSCamera(name="cam", driver=driver, write_dir=args.write_dir)
        prepare_dir(cam.write_dir)
    except (OSError, ValueError) as exc:
        raise CommandError(f"--write-dir: {exc}") from None
    try:
        roi = ROI.full(sensor) if args.full_frame else ROI.centered(sensor, args.roi, args.roi)
        cam.roi.set(roi.as_tuple())
        cam.exposure_time.set(args.exposure)
    except ValueError as exc:
        cam.destroy()
        raise CommandError(str(exc)) from None
    return cam, driver


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help=demo.__doc__, description=demo.__doc__)
    p.add_argument("--num", type=positive(int), default=10_000, help="frames (events) to take")
    p.add_argument("--roi", type=positive(int), default=256, help="side of the centred square ROI")
    p.add_argument("--full-frame", action="store_true", help="use the whole 2048x2048 sensor")
    p.add_argument("--exposure", type=positive(float), default=0.001, help="exposure time, seconds")
    p.add_argument("--seed", type=whole_number, default=0, help="simulated camera seed")
    p.add_argument("--write-dir", default=None, help="where the HDF5 file goes")
    p.add_argument("--catalog", default=None, help="catalog directory or server URL")
    p.add_argument(
        "--align",
        action="store_true",
        help="instead, find a hidden sample with a scan of each motor (docs/align.md); "
        "exit 0 if both peaks are within half a step of it",
    )
    p.set_defaults(func=demo)
