"""A sample to align: the simulated camera's spot, moved by motors under a RunEngine, found by
a scan, and every frame it leaves exactly as `expected_frame` says."""

from __future__ import annotations

import math

import bluesky.plan_stubs as bps
import h5py
import numpy as np
import pytest
from bluesky.callbacks.fitting import PeakStats
from bluesky.plans import count, scan
from ophyd import Signal
from ophyd.sim import SynAxis

from ophyd_scmos import SCMOSCamera
from ophyd_scmos.drivers import (
    ROI,
    CameraError,
    CameraSettings,
    SimulatedSCMOS,
    Spot,
    TriggerMode,
    sample_on_stage,
)
from ophyd_scmos.drivers.simulated import BEAM_EDGE
from ophyd_scmos.pipeline import layout
from tests.conftest import SENSOR, expected_frames

CAMERA_ROI = ROI(32, 16, 96, 64)  # the `cam` fixture's
AXIS = (32 + 47.5, 16 + 31.5)  # sensor pixels: the middle of that ROI
SAMPLE = (0.73, -0.12)  # motor units: where the sample sits in the beam, between scan points
PIXELS_PER_UNIT = 10.0  # sample_on_stage's default: a 0.1 step moves the image one pixel
BEAM_WIDTH = 0.25
BRIGHTNESS = 3e6  # sample_on_stage's default
HALF_STEP = 0.05  # of the scans below (-2 to 2 in 41 points): half a pixel


@pytest.fixture
def stage() -> tuple[SynAxis, SynAxis]:
    return SynAxis(name="motor_x"), SynAxis(name="motor_y")


@pytest.fixture
def twin() -> SimulatedSCMOS:
    """The `cam` fixture's camera without a spot: its frames are the scene's alone."""
    camera = SimulatedSCMOS(shape=SENSOR, seed=7)
    camera.open()
    camera.configure(CameraSettings(exposure_time=0.001, roi=CAMERA_ROI))
    yield camera
    camera.close()


def stored_frames(cam: SCMOSCamera) -> np.ndarray:
    with h5py.File(cam.file_path.get(), "r") as f:
        return f[layout.DATA][()]


def where_the_sample_shines(mx: float, my: float) -> Spot:
    """The spot `sample_on_stage` promises with the motors at (mx, my), as docs/align.md says."""
    dx, dy = mx - SAMPLE[0], my - SAMPLE[1]
    r2 = (dx * dx + dy * dy) / BEAM_WIDTH**2
    lit = BRIGHTNESS * math.exp(-0.5 * r2) if r2 < BEAM_EDGE**2 else 0.0
    return Spot(AXIS[0] + PIXELS_PER_UNIT * dx, AXIS[1] + PIXELS_PER_UNIT * dy, lit)


def test_a_scan_through_the_beam_finds_the_sample_within_half_a_step(cam, RE, recorder, stage):
    motor_x, motor_y = stage
    cam.driver.spot = sample_on_stage(motor_x, motor_y, axis=AXIS, aligned_at=SAMPLE)
    cam.rois["centre"] = (32, 16, 32, 32)  # frame pixels around the axis
    peaks = [PeakStats("motor_x", key) for key in ("cam_stats_total", "cam_centre_total")]
    RE(scan([cam], motor_x, -2, 2, 41), peaks)
    assert len(recorder.of("event")) == 41
    for peak in peaks:
        assert peak.cen == pytest.approx(SAMPLE[0], abs=HALF_STEP), peak.y
        # The peak is the beam's: a Gaussian of its width, far above the frames' noise.
        assert peak.fwhm == pytest.approx(2.3548 * BEAM_WIDTH, rel=0.1), peak.y
        assert peak.max[1] - peak.min[1] > 20_000  # ADU; the noise is ~250
    # Moved to the peak, the sample sits on the axis, in the middle of the frame.
    RE(bps.mv(motor_x, peaks[0].cen))
    RE(count([cam], num=1))
    assert cam.driver.frame_spot(0).x == pytest.approx(AXIS[0], abs=HALF_STEP * PIXELS_PER_UNIT)


def test_the_stored_frames_are_the_expected_ones_with_the_spot_where_the_motors_put_it(
    cam, RE, recorder, stage, twin
):
    motor_x, motor_y = stage
    driver = cam.driver
    driver.spot = sample_on_stage(motor_x, motor_y, axis=AXIS, aligned_at=SAMPLE)
    RE(scan([cam], motor_x, -2, 2, 41))
    frames = stored_frames(cam)
    events = recorder.of("event")
    assert len(frames) == len(events) == 41
    lit = 0
    for k, (event, frame) in enumerate(zip(events, frames, strict=True)):
        np.testing.assert_array_equal(frame, driver.expected_frame(k))
        promised = where_the_sample_shines(event["data"]["motor_x"], 0.0)
        shone = driver.frame_spot(k)
        for field in ("x", "y", "brightness"):
            assert getattr(shone, field) == pytest.approx(getattr(promised, field), rel=1e-12)
        # The light is the spot's alone: added, near its centre, the rest is the scene's.
        light = frame.astype(np.int64) - twin.expected_frame(k)
        assert light.min() >= 0
        rows, cols = np.nonzero(light)
        assert (np.abs(cols + 32 - shone.x) <= 5 * shone.sigma).all()
        assert (np.abs(rows + 16 - shone.y) <= 5 * shone.sigma).all()
        if shone.brightness > BRIGHTNESS / 4:
            lit += 1
            centroid = (light.sum(axis=0) @ np.arange(96)) / light.sum()
            assert centroid + 32 == pytest.approx(shone.x, abs=0.1)
    assert lit >= 5


@pytest.mark.parametrize(
    "spot",
    [
        None,
        "the sample far from the beam",
        Spot(x=32 - 16, y=40),  # left of the ROI, 5 sigma away
        Spot(x=128 + 15, y=40),  # right of it
        Spot(x=60, y=40, brightness=0),
    ],
    ids=["none", "out of the beam", "left of the roi", "right of the roi", "dark"],
)
def test_a_spot_that_sheds_no_light_on_the_frame_leaves_every_pixel_as_before(
    cam, RE, stage, twin, spot
):
    if spot == "the sample far from the beam":  # as the lab session starts, motors at 0
        spot = sample_on_stage(*stage, axis=AXIS, aligned_at=(0.0, BEAM_EDGE * BEAM_WIDTH))
    cam.driver.spot = spot
    RE(count([cam], num=5))
    np.testing.assert_array_equal(stored_frames(cam), expected_frames(twin, 5))


def test_the_spot_is_cut_by_the_roi_summed_by_binning_and_clipped_at_the_bit_depth():
    settings = CameraSettings(exposure_time=0.001, roi=ROI(64, 32, 64, 32), binning=2, bit_depth=12)
    camera, twin = SimulatedSCMOS(shape=SENSOR, seed=3), SimulatedSCMOS(shape=SENSOR, seed=3)
    for c in (camera, twin):
        c.open()
        c.configure(settings)
    try:
        camera.spot = Spot(x=65.0, y=47.0, brightness=2e7, sigma=2.0)  # across the left edge
        camera.start()
        camera.software_trigger(3)
        for _ in range(3):
            frame = np.empty(camera.frame_shape, np.uint16)
            info = camera.read_into(frame, 1.0)
            np.testing.assert_array_equal(frame, camera.expected_frame(info.frame_number))
            light = frame.astype(np.int64) - twin.expected_frame(info.frame_number)
            rows, cols = np.nonzero(light)
            # Sensor pixels 64..75 (65 + 5 sigma), rows 37..57, in bins of 2.
            assert cols.max() <= (75 - 64) // 2
            assert rows.min() >= (37 - 32) // 2 and rows.max() <= (57 - 32) // 2
            assert light[:, 0].sum() > 0  # lit up to the ROI's edge, cut there
            assert frame.max() == 4095  # saturated where the spot is brightest
    finally:
        camera.close()
        twin.close()


def test_a_moving_spot_is_recorded_frame_by_frame_and_read_as_each_frame_is_taken():
    camera = SimulatedSCMOS(shape=SENSOR, seed=1)
    camera.open()
    brightness = Signal(name="lamp", value=0.0)
    position = [100.0]
    camera.configure(CameraSettings(exposure_time=0.001, trigger_mode=TriggerMode.SOFTWARE))
    try:
        camera.spot = Spot(x=lambda: position[0], y=120.5, brightness=brightness)
        # Not taken yet: the spot as it is now.
        assert camera.frame_spot(0) == Spot(100.0, 120.5, 0.0)
        camera.start()
        frames = []
        for k in range(6):
            position[0] = 100.0 + (k // 2)  # the spot moves every other frame
            brightness.put(1e6 * k)
            camera.software_trigger()
            frame = np.empty(camera.frame_shape, np.uint16)
            camera.read_into(frame, 1.0)
            frames.append(frame)
        camera.spot = None
        camera.software_trigger()
        last = np.empty(camera.frame_shape, np.uint16)
        camera.read_into(last, 1.0)
        camera.stop()
        for k, frame in enumerate(frames):
            assert camera.frame_spot(k) == Spot(100.0 + k // 2, 120.5, 1e6 * k)
            np.testing.assert_array_equal(frame, camera.expected_frame(k))
        assert camera.frame_spot(6) is None
        np.testing.assert_array_equal(last, camera.expected_frame(6))
        # A new start forgets the last run's spots: frame 0 is the one to come.
        camera.start()
        assert camera.frame_spot(0) is None
    finally:
        camera.close()


class Unplugged:
    name = "stage_x"

    def get(self) -> float:
        raise TimeoutError("stage_x did not answer")


def test_a_spot_that_cannot_be_read_fails_the_frame_naming_why():
    camera = SimulatedSCMOS(shape=SENSOR, seed=1)
    camera.open()
    try:
        camera.spot = Spot(x=Unplugged(), y=10)
        camera.start()
        camera.software_trigger()
        with pytest.raises(CameraError, match="frame 0: cannot read the spot: stage_x did not"):
            camera.read_into(np.empty(camera.frame_shape, np.uint16), 1.0)
        camera.stop()
        camera.spot = Spot(x=Signal(name="drifting", value=float("nan")), y=10)
        camera.start()
        camera.software_trigger()
        with pytest.raises(CameraError, match="spot x from 'drifting' is nan; it must be a fin"):
            camera.read_into(np.empty(camera.frame_shape, np.uint16), 1.0)
    finally:
        camera.close()


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda: Spot(x=1, y=2, sigma=0), "spot sigma must be a number of sensor pixels >= 0.5"),
        (lambda: Spot(x=1, y=2, sigma=0.2), "sampled at pixel centres: a narrower one between"),
        (lambda: Spot(x="left", y=2), "spot x must be a number, a positioner, a signal or a"),
        (lambda: Spot(x=1, y=2, brightness=-5), "spot brightness is -5.0; it must be a number >="),
        (lambda: Spot(x=math.inf, y=2), "spot x is inf; it must be a finite number"),
        (
            lambda: sample_on_stage(0.0, 0.0, axis=(0, 0), beam_width=-0.25),
            "beam_width must be a number of motor units > 0; got -0.25",
        ),
        (
            lambda: sample_on_stage(0.0, 0.0, axis=(0, 0), pixels_per_unit=0),
            "pixels_per_unit must be a non-zero number; got 0",
        ),
        (
            lambda: sample_on_stage(0.0, 0.0, axis=(0, 0), brightness=Signal(name="lamp")),
            "brightness must be a number of photons/s >= 0; got Signal",
        ),
        (
            lambda: sample_on_stage("stage", 0.0, axis=(0, 0)),
            "spot motor_x must be a number, a positioner, a signal or a function; got 'stage'",
        ),
    ],
)
def test_a_wrong_spot_is_refused_naming_the_value(make, says):
    with pytest.raises(ValueError, match=says):
        make()


def test_only_a_spot_is_a_spot():
    camera = SimulatedSCMOS(shape=SENSOR)
    with pytest.raises(ValueError, match=r"spot must be a Spot or None; got \(1, 2\)"):
        camera.spot = (1, 2)
    assert camera.spot is None


def test_demo_align_finds_the_hidden_sample_and_exits_0(tmp_path, capsys):
    from ophyd_scmos.cli import main
    from ophyd_scmos.cli.demo import ALIGN_SAMPLE

    assert main(["demo", "--align", "--roi", "128", "--write-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for motor, true in zip(("motor_x", "motor_y"), ALIGN_SAMPLE, strict=True):
        line = next(line for line in out.splitlines() if line.startswith(motor))
        found = float(line.split()[3].rstrip(","))
        assert found == pytest.approx(true, abs=HALF_STEP), line
        assert "41 of 41 frames equal the camera's, pixel for pixel" in line
    assert "sample found within half a step (0.05 motor units, 0.5 px)" in out
