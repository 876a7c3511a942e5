"""Behaviour of the simulated sCMOS: deterministic realistic frames and camera-like timing."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from ophyd_scmos.drivers import (
    ROI,
    CameraDriver,
    CameraError,
    CameraSettings,
    FrameInfo,
    SimulatedSCMOS,
    TriggerMode,
)

SENSOR = (256, 256)
SMALL = ROI(64, 32, 128, 64)  # x, y, width, height
FAST = 0.001  # s; short exposure so timed tests run fast


@pytest.fixture
def make_cam() -> Iterator:
    """Open cameras on a small sensor and close them whatever the test does."""
    cams: list[SimulatedSCMOS] = []

    def make(settings: CameraSettings | None = None, **kwargs) -> SimulatedSCMOS:
        kwargs.setdefault("shape", SENSOR)
        cam = SimulatedSCMOS(**kwargs)
        cam.open()
        if settings is not None:
            cam.configure(settings)
        cams.append(cam)
        return cam

    yield make
    for cam in cams:
        cam.close()


def out_for(cam: SimulatedSCMOS) -> np.ndarray:
    return np.empty(cam.frame_shape, np.uint16)


def read_all(
    cam: SimulatedSCMOS, n: int, timeout: float = 1.0
) -> list[tuple[FrameInfo, np.ndarray]]:
    """Read n frames, returning (info, frame copy) pairs."""
    frames = []
    for _ in range(n):
        out = out_for(cam)
        frames.append((cam.read_into(out, timeout), out))
    return frames


def test_satisfies_the_driver_protocol(make_cam):
    cam = make_cam()
    assert isinstance(cam, CameraDriver)
    assert cam.dtype == np.uint16
    assert cam.sensor_shape == SENSOR
    assert cam.frame_shape == SENSOR


# -- determinism ---------------------------------------------------------------------------


def test_same_seed_gives_identical_frames_across_instances(make_cam):
    settings = CameraSettings(roi=SMALL)
    a = make_cam(settings, seed=7)
    a.expected_frame(0)
    make_cam(settings, seed=8).expected_frame(0)  # b cannot reuse a's noise: it draws its own
    b = make_cam(settings, seed=7)
    for k in (0, 1, 7, 8, 9, 63, 1000):
        np.testing.assert_array_equal(a.expected_frame(k), b.expected_frame(k))


def test_a_camera_made_again_with_the_same_settings_reuses_the_noise(make_cam):
    """The frames are the same either way; reusing them saves drawing them again."""
    settings = CameraSettings(roi=SMALL)
    a, b = make_cam(settings, seed=7), make_cam(settings, seed=7)
    assert a._ensure_bank().frames is b._ensure_bank().frames
    assert not a._ensure_bank().frames.flags.writeable

    class Noisier(SimulatedSCMOS):
        READ_NOISE = 3.0

    noisier = Noisier(shape=SENSOR, seed=7)
    noisier.open()
    noisier.configure(settings)
    assert noisier._ensure_bank().frames is not a._ensure_bank().frames
    assert not np.array_equal(noisier.expected_frame(0), a.expected_frame(0))
    noisier.close()


def test_different_seed_gives_different_frames(make_cam):
    a = make_cam(CameraSettings(roi=SMALL), seed=1)
    b = make_cam(CameraSettings(roi=SMALL), seed=2)
    assert not np.array_equal(a.expected_frame(0), b.expected_frame(0))


def test_frame_is_identical_in_another_process(make_cam):
    cam = make_cam(CameraSettings(roi=SMALL, binning=2), seed=5)
    here = hashlib.sha256(cam.expected_frame(11).tobytes()).hexdigest()
    code = (
        "import hashlib\n"
        "from ophyd_scmos.drivers import ROI, CameraSettings, SimulatedSCMOS\n"
        f"cam = SimulatedSCMOS(shape={SENSOR}, seed=5); cam.open()\n"
        f"cam.configure(CameraSettings(roi=ROI{SMALL.as_tuple()}, binning=2))\n"
        "print(hashlib.sha256(cam.expected_frame(11).tobytes()).hexdigest())\n"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert there == here


def test_consecutive_frames_have_fresh_noise_everywhere(make_cam):
    cam = make_cam(CameraSettings(roi=SMALL), bank_size=4)
    # Across bank cycles too (k = 3 -> 4 wraps the bank of 4), and not periodic in the bank size.
    for k in range(12):
        for other in (k + 1, k + 4):
            same = cam.expected_frame(k) == cam.expected_frame(other)
            # Pixels repeat by chance (Poisson + rounding) but no whole row repeats.
            assert not same.all(axis=1).any(), f"frames {k} and {other} share a row"


def test_read_into_delivers_expected_frame_pixel_for_pixel(make_cam):
    cam = make_cam(CameraSettings(exposure_time=FAST, roi=SMALL, binning=2), bank_size=4)
    cam.start()
    cam.software_trigger(10)  # wraps the bank twice
    for info, frame in read_all(cam, 10):
        np.testing.assert_array_equal(frame, cam.expected_frame(info.frame_number))


# -- realism -------------------------------------------------------------------------------


def test_dark_pixels_sit_near_the_offset(make_cam):
    cam = make_cam(CameraSettings(exposure_time=1e-4))
    frame = cam.expected_frame(0).astype(float)
    assert abs(np.median(frame) - SimulatedSCMOS.OFFSET) < 2
    dark = frame[cam.mean_frame() < SimulatedSCMOS.OFFSET + 1]  # away from the spots
    assert dark.size > 1000
    assert abs(dark.mean() - SimulatedSCMOS.OFFSET) < 1
    # Read noise of 1.6 e- at 0.5 e-/ADU is ~3.2 ADU rms.
    assert 2.8 < dark.std() < 3.8


def test_mean_and_variance_follow_shot_and_read_noise(make_cam):
    n = 32
    cam = make_cam(CameraSettings(exposure_time=0.01), bank_size=n)
    stack = np.stack([cam.expected_frame(k) for k in range(n)]).astype(float)
    mean = cam.mean_frame()
    assert mean.max() - mean.min() > 1000, "scene should have bright spots and dark background"
    # Offset + signal: time average matches the noise-free expectation.
    np.testing.assert_allclose(stack.mean(axis=0).mean(), mean.mean(), rtol=0.005)
    z = (stack.mean(axis=0) - mean) / np.sqrt(stack.var(axis=0, ddof=1) / n + 1e-9)
    assert abs(z.mean()) < 0.1
    # Variance in ADU^2: (shot + read^2) / gain^2, plus rounding.
    gain, read = SimulatedSCMOS.GAIN, SimulatedSCMOS.READ_NOISE
    electrons = (mean - SimulatedSCMOS.OFFSET) * gain
    predicted = (electrons + read**2) / gain**2 + 1 / 12
    ratio = stack.var(axis=0, ddof=1) / predicted
    assert 0.9 < ratio.mean() < 1.1
    dark = electrons < 5
    assert dark.sum() > 100
    assert 0.85 < ratio[dark].mean() < 1.15  # read noise dominates here


def test_twelve_bit_frames_clip_at_4095(make_cam):
    cam = make_cam(CameraSettings(exposure_time=1.0, bit_depth=12))
    frame = cam.expected_frame(0)
    assert frame.max() == 4095
    cam.configure(CameraSettings(exposure_time=1.0, bit_depth=16))
    assert cam.expected_frame(0).max() > 4095


def test_binning_sums_sensor_pixels(make_cam):
    n = 8
    one = make_cam(CameraSettings(roi=SMALL), bank_size=n)
    two = make_cam(CameraSettings(roi=SMALL, binning=2), bank_size=n)
    four = make_cam(CameraSettings(roi=SMALL, binning=4), bank_size=n)
    assert two.frame_shape == (32, 64) and four.frame_shape == (16, 32)
    mean1 = np.mean([one.expected_frame(k).mean() for k in range(n)])
    mean2 = np.mean([two.expected_frame(k).mean() for k in range(n)])
    mean4 = np.mean([four.expected_frame(k).mean() for k in range(n)])
    assert mean2 == pytest.approx(4 * mean1, rel=0.01)
    assert mean4 == pytest.approx(16 * mean1, rel=0.01)
    # Offset scales with the number of summed pixels.
    dark = make_cam(CameraSettings(exposure_time=1e-4, binning=2))
    assert abs(np.median(dark.expected_frame(0)) - 4 * SimulatedSCMOS.OFFSET) < 4


def test_roi_crops_the_sensor_scene(make_cam):
    full = make_cam()
    cam = make_cam(CameraSettings(roi=ROI(10, 20, 64, 32)))
    assert cam.frame_shape == (32, 64)
    assert cam.expected_frame(0).shape == (32, 64)
    np.testing.assert_allclose(cam.mean_frame(), full.mean_frame()[20:52, 10:74])
    # Binned, the origin falls on a bin as on real cameras (ROI(10, 20, ...) is refused).
    cam.configure(CameraSettings(roi=ROI(12, 20, 64, 32), binning=4))
    assert cam.frame_shape == (8, 16)
    binned = full.mean_frame()[20:52, 12:76].reshape(8, 4, 16, 4).sum(axis=(1, 3))
    np.testing.assert_allclose(cam.mean_frame(), binned)  # sums of sensor pixels, offsets too


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "shown"),
    [
        (CameraSettings(exposure_time=0.0), "0.0"),
        (CameraSettings(exposure_time=-1.0), "-1.0"),
        (CameraSettings(exposure_time=10.5), "10.5"),
        (CameraSettings(exposure_time=float("nan")), "nan"),
        (CameraSettings(acquire_period=-0.25), "-0.25"),
        (CameraSettings(acquire_period=float("inf")), "inf"),
        (CameraSettings(acquire_period=3600.5), "3600.5"),  # longer than an hour
        (CameraSettings(binning=3), "3"),
        (CameraSettings(bit_depth=14), "14"),
        (CameraSettings(roi=ROI(200, 0, 64, 64)), "200"),
        (CameraSettings(roi=ROI(-1, 0, 64, 64)), "-1"),
        (CameraSettings(roi=ROI(0, 0, 0, 64)), "0x64"),
        (CameraSettings(roi=ROI(0, 0, 66, 64), binning=4), "66"),
        (CameraSettings(roi=ROI(10, 20, 64, 32), binning=4), "x=10 is not"),
        (CameraSettings(trigger_mode="hardware"), "hardware"),  # type: ignore[arg-type]
    ],
)
def test_bad_settings_raise_valueerror_naming_the_value(make_cam, settings, shown):
    cam = make_cam()
    before = cam.settings
    with pytest.raises(ValueError, match=shown):
        cam.configure(settings)
    assert cam.settings == before


@pytest.mark.parametrize(
    ("signal", "value", "shown"),
    [
        ("roi", (100.7, 16, 96, 64), "100.7"),
        ("binning", 2.0, "2.0"),
        ("exposure_time", True, "True"),
        ("acquire_period", 1e12, "1000000000000.0"),
    ],
)
def test_the_device_hands_values_to_the_drivers_check_as_typed(cam, signal, value, shown):
    """What a user types at the Device is refused, not rounded into something the camera takes."""
    before = cam.driver.settings
    with pytest.raises(ValueError, match=f"{signal}.*{shown}"):
        getattr(cam, signal).set(value).wait(5)
    assert cam.driver.settings == before


def test_trigger_mode_accepts_its_string_value(make_cam):
    cam = make_cam(CameraSettings(trigger_mode="internal"))  # type: ignore[arg-type]
    assert cam.settings.trigger_mode is TriggerMode.INTERNAL


def test_configure_while_running_is_refused(make_cam):
    cam = make_cam(CameraSettings(roi=SMALL))
    cam.start()
    with pytest.raises(RuntimeError):
        cam.configure(CameraSettings(roi=SMALL, exposure_time=0.02))


def test_read_into_rejects_a_wrong_buffer(make_cam):
    cam = make_cam(CameraSettings(roi=SMALL))
    cam.start()
    with pytest.raises(ValueError, match="shape"):
        cam.read_into(np.empty((10, 10), np.uint16), 0.1)
    with pytest.raises(ValueError, match="uint16"):
        cam.read_into(np.empty(cam.frame_shape, np.float32), 0.1)


# -- timing --------------------------------------------------------------------------------


def test_internal_mode_delivers_frames_one_interval_apart(make_cam):
    cam = make_cam(
        CameraSettings(
            exposure_time=0.005,
            acquire_period=0.02,
            roi=SMALL,
            trigger_mode="internal",  # type: ignore[arg-type]
        )
    )
    t0 = time.monotonic()
    cam.start()
    infos = [info for info, _ in read_all(cam, 5)]
    assert [i.frame_number for i in infos] == [0, 1, 2, 3, 4]
    assert [i.camera_timestamp for i in infos] == pytest.approx([0.02 * (n + 1) for n in range(5)])
    assert all(i.missed_before == 0 for i in infos)
    # read_into waited for the frames to be due on the camera's clock.
    assert time.monotonic() - t0 >= 0.1 - 0.005


def test_frame_interval_is_never_shorter_than_exposure(make_cam):
    cam = make_cam(CameraSettings(exposure_time=0.01, acquire_period=0.0, roi=SMALL))
    cam.start()
    cam.software_trigger(3)
    stamps = [info.camera_timestamp for info, _ in read_all(cam, 3)]
    assert np.diff(stamps) == pytest.approx([0.01, 0.01])


def test_slow_reader_in_internal_mode_loses_the_oldest_frames(make_cam):
    exposure = 2 * FAST  # the 16 frames the camera holds last 32 ms
    cam = make_cam(
        CameraSettings(exposure_time=exposure, roi=SMALL, trigger_mode=TriggerMode.INTERNAL),
        camera_buffer_frames=16,
    )
    cam.start()
    time.sleep(0.2)  # ~100 frames taken, only 16 fit in the camera
    (first, frame), (second, _) = read_all(cam, 2)
    assert first.frame_number >= 60
    assert first.missed_before == first.frame_number
    # The camera stays full: a reader later by a frame (2 ms) loses the next one too.
    assert second.frame_number == first.frame_number + 1 + second.missed_before
    assert cam.missed_frames == first.frame_number + second.missed_before
    assert first.camera_timestamp == pytest.approx(exposure * (first.frame_number + 1))
    np.testing.assert_array_equal(frame, cam.expected_frame(first.frame_number))


def test_software_trigger_queues_frames_and_reader_times_out_without_one(make_cam):
    cam = make_cam(CameraSettings(exposure_time=0.01, roi=SMALL))
    cam.start()
    out = out_for(cam)
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        cam.read_into(out, 0.05)
    assert time.monotonic() - t >= 0.045
    cam.software_trigger(2)
    infos = [info for info, _ in read_all(cam, 2)]
    assert [i.frame_number for i in infos] == [0, 1]
    assert infos[1].camera_timestamp - infos[0].camera_timestamp == pytest.approx(0.01)
    with pytest.raises(TimeoutError):
        cam.read_into(out, 0.02)


def test_software_trigger_from_another_thread_wakes_the_reader(make_cam):
    cam = make_cam(CameraSettings(exposure_time=FAST, roi=SMALL))
    cam.start()
    timer = threading.Timer(0.05, cam.software_trigger)
    timer.start()
    info = cam.read_into(out_for(cam), 2.0)
    timer.join()
    assert info.frame_number == 0 and info.camera_timestamp >= 0.05


def test_software_trigger_is_refused_in_internal_mode(make_cam):
    cam = make_cam(CameraSettings(roi=SMALL, trigger_mode=TriggerMode.INTERNAL))
    cam.start()
    with pytest.raises(RuntimeError, match="software"):
        cam.software_trigger()
    with pytest.raises(RuntimeError, match="external"):
        cam.fire()


def test_external_mode_takes_one_frame_per_pulse(make_cam):
    cam = make_cam(CameraSettings(exposure_time=FAST, roi=SMALL, trigger_mode=TriggerMode.EXTERNAL))
    cam.start()
    out = out_for(cam)
    with pytest.raises(TimeoutError):
        cam.read_into(out, 0.05)  # no pulse, no frame
    cam.fire(3)
    numbers = [cam.read_into(out, 2.0).frame_number for _ in range(3)]
    assert numbers == [0, 1, 2]
    np.testing.assert_array_equal(out, cam.expected_frame(2))
    with pytest.raises(TimeoutError):
        cam.read_into(out, 0.05)


def test_stop_wakes_a_blocked_reader_with_camera_error(make_cam):
    cam = make_cam(CameraSettings(roi=SMALL))
    cam.start()
    errors: list[Exception] = []

    def reader() -> None:
        try:
            cam.read_into(out_for(cam), 5.0)
        except Exception as exc:  # the test inspects it
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.05)
    t = time.monotonic()
    cam.stop()
    thread.join(2.0)
    assert not thread.is_alive()
    assert time.monotonic() - t < 1.0
    assert len(errors) == 1 and isinstance(errors[0], CameraError)


def test_start_restarts_frame_numbers_at_zero(make_cam):
    cam = make_cam(CameraSettings(exposure_time=FAST, roi=SMALL))
    for _ in range(2):
        cam.start()
        cam.software_trigger(2)
        assert [info.frame_number for info, _ in read_all(cam, 2)] == [0, 1]
        cam.stop()


# -- lifecycle -----------------------------------------------------------------------------


def test_close_twice_is_safe_and_closed_camera_refuses_work(make_cam):
    cam = make_cam(CameraSettings(roi=SMALL))
    cam.close()
    cam.close()
    with pytest.raises(CameraError):
        cam.configure(CameraSettings(roi=SMALL))
    with pytest.raises(CameraError):
        cam.start()
    with pytest.raises(CameraError):
        cam.read_into(out_for(cam), 0.01)
    cam.open()
    cam.open()
    cam.start()
    cam.software_trigger()
    assert cam.read_into(out_for(cam), 1.0).frame_number == 0
