"""The driver contract: what the pipeline relies on from every camera driver.

Runs against every driver the machine has (see conftest.py): the simulated camera, Micro-Manager's
DemoCamera, Aravis's fake GigE camera, and your camera with OPHYD_SCMOS_TEST_CAMERA set.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from ophyd_scmos.drivers import (
    ROI,
    CameraDriver,
    CameraError,
    CameraSettings,
    DriverBase,
    TriggerMode,
)

from .conftest import Harness, run_in_thread

SENTINEL = 0xBEEF  # no camera here delivers it everywhere


def settings_for(h: Harness, **changes) -> CameraSettings:
    return replace(CameraSettings(exposure_time=h.exposure, roi=h.roi), **changes)


def opened(h: Harness, small_buffer: bool = False, **changes) -> CameraDriver:
    driver = h.open(small_buffer)
    driver.configure(settings_for(h, **changes))
    return driver


def blank(driver: CameraDriver) -> np.ndarray:
    return np.full(driver.frame_shape, SENTINEL, np.uint16)


def wait_for(thread, within: float) -> None:
    thread.join(within)
    assert not thread.is_alive(), f"reader still blocked {within} s later"


def test_driver_satisfies_the_protocol(harness):
    driver = harness.open()
    assert isinstance(driver, CameraDriver)
    assert isinstance(driver.model, str) and driver.model
    rows, cols = driver.sensor_shape
    assert rows > 0 and cols > 0
    assert driver.dtype == np.uint16
    assert driver.frame_shape == driver.sensor_shape  # opens on the full sensor, unbinned
    assert driver.settings.trigger_mode is TriggerMode.SOFTWARE


def bad_settings(sensor: tuple[int, int]) -> list[tuple[dict, str]]:
    rows, cols = sensor
    return [
        ({"exposure_time": 0.0}, "0.0"),
        ({"exposure_time": -1.0}, "-1.0"),
        ({"exposure_time": float("nan")}, "nan"),
        ({"exposure_time": 1e6}, "1000000.0"),
        ({"exposure_time": True}, "True"),  # a bool is no number of seconds
        ({"acquire_period": -0.25}, "-0.25"),
        ({"acquire_period": float("inf")}, "inf"),
        ({"acquire_period": 1e12}, "1000000000000.0"),  # beyond every camera's longest period
        ({"binning": 3}, "3"),
        ({"binning": 2.0}, "2.0"),
        ({"binning": True}, "True"),
        ({"bit_depth": 14}, "14"),
        ({"bit_depth": True}, "True"),
        ({"roi": ROI(cols - 32, 0, 64, 64)}, str(cols - 32)),
        ({"roi": ROI(-4, 0, 64, 64)}, "-4"),
        ({"roi": ROI(0, 0, 0, 64)}, "0x64"),
        ({"roi": ROI(0, 0, 66, 64), "binning": 4}, "66"),
        ({"roi": ROI(100.7, 0, 64, 64)}, "100.7"),  # type: ignore[arg-type]
        ({"roi": ROI(0, True, 64, 64)}, "True"),
        ({"trigger_mode": "sometimes"}, "sometimes"),
        ({"roi": (0, 0, 64, 64)}, r"\(0, 0, 64, 64\)"),  # a plain tuple is no ROI
    ]


def test_bad_settings_raise_valueerror_naming_the_value_and_change_nothing(harness):
    driver = opened(harness)
    before = driver.settings
    for change, shown in bad_settings(driver.sensor_shape):
        with pytest.raises(ValueError, match=shown) as refused:
            driver.configure(settings_for(harness, **change))
        key = next(iter(change))
        assert key in str(refused.value), (change, str(refused.value))
        assert "\n" not in str(refused.value)
        assert driver.settings == before, change


def test_numpy_numbers_are_taken_and_reach_the_camera_as_pythons(harness):
    """Settings computed with numpy (an ROI from an array) work on every driver: SDK
    bindings refuse numpy's numbers, so the driver hands the camera Python's."""
    roi = ROI(*np.array(harness.roi.as_tuple()))
    driver = opened(harness)
    driver.configure(
        settings_for(
            harness, exposure_time=np.float32(harness.exposure), roi=roi, binning=np.int64(2)
        )
    )
    applied = driver.settings
    assert applied.roi == harness.roi and applied.binning == 2
    values = [applied.exposure_time, applied.binning, *applied.roi.as_tuple()]
    assert all(type(v) in (int, float) for v in values), values
    assert driver.frame_shape == (harness.roi.height // 2, harness.roi.width // 2)


def test_the_longest_period_the_camera_reports_is_taken_a_longer_one_refused(harness):
    driver = opened(harness)
    limits = getattr(driver, "limits", None)
    if limits is None:
        pytest.skip(f"{type(driver).__name__} reports no CameraLimits (it is no DriverBase)")
    longest = limits.period_range[1]
    assert 0 < longest < float("inf")
    driver.configure(settings_for(harness, acquire_period=longest))
    assert driver.settings.acquire_period == longest
    with pytest.raises(ValueError, match=f"acquire_period .*{longest:g}"):
        driver.configure(settings_for(harness, acquire_period=longest * 2))
    assert driver.settings.acquire_period == longest


def test_roi_and_binning_shape_the_frames(harness):
    roi = harness.roi
    driver = opened(harness, binning=2)
    assert driver.frame_shape == (roi.height // 2, roi.width // 2)
    assert driver.settings.roi == roi and driver.settings.binning == 2
    driver.start()
    driver.software_trigger(1)
    out = blank(driver)
    driver.read_into(out, 5.0)
    assert not (out == SENTINEL).all()


def test_configure_while_acquiring_is_refused(harness):
    driver = opened(harness)
    driver.start()
    with pytest.raises(RuntimeError):
        driver.configure(settings_for(harness))


def test_software_trigger_delivers_numbered_frames_into_the_callers_buffer(harness):
    driver = opened(harness)
    driver.start()
    driver.software_trigger(3)
    infos, frames = [], []
    for _ in range(3):
        out = blank(driver)
        infos.append(driver.read_into(out, 5.0))
        frames.append(out)
    assert [i.frame_number for i in infos] == [0, 1, 2]
    assert all(i.missed_before == 0 for i in infos)
    stamps = [i.camera_timestamp for i in infos]
    assert all(t >= 0 for t in stamps) and stamps == sorted(set(stamps))
    for frame in frames:  # written into the array we gave, every pixel
        assert frame.shape == driver.frame_shape and not (frame == SENTINEL).any()
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        driver.read_into(blank(driver), 0.2)  # no trigger, no frame
    assert time.monotonic() - t < 2.0


def test_internal_mode_streams_consecutive_frames(harness):
    driver = opened(harness, trigger_mode=TriggerMode.INTERNAL)
    driver.start()
    infos = [driver.read_into(blank(driver), 5.0) for _ in range(20)]
    assert [i.frame_number for i in infos] == list(range(20))
    assert all(i.missed_before == 0 for i in infos)
    assert np.all(np.diff([i.camera_timestamp for i in infos]) > 0)


def test_start_restarts_frame_numbers_at_zero(harness):
    driver = opened(harness)
    for _ in range(2):
        driver.start()
        driver.software_trigger(2)
        assert [driver.read_into(blank(driver), 5.0).frame_number for _ in range(2)] == [0, 1]
        driver.stop()


def test_read_into_rejects_a_wrong_buffer(harness):
    driver = opened(harness)
    driver.start()
    with pytest.raises(ValueError, match="shape"):
        driver.read_into(np.empty((10, 10), np.uint16), 0.1)
    with pytest.raises(ValueError, match="uint16"):
        driver.read_into(np.empty(driver.frame_shape, np.float32), 0.1)
    rows, columns = driver.frame_shape
    with pytest.raises(ValueError, match="contiguous"):
        driver.read_into(np.empty((rows, 2 * columns), np.uint16)[:, ::2], 0.1)


def test_missed_frames_are_found_from_frame_number_gaps(harness):
    driver = opened(harness, small_buffer=True, trigger_mode=TriggerMode.INTERNAL)
    driver.start()
    time.sleep(harness.overflow_after)  # a stalled reader: the camera's buffer overflows
    infos = [driver.read_into(blank(driver), 5.0) for _ in range(40)]
    numbers = [i.frame_number for i in infos]
    assert sum(i.missed_before for i in infos) > 0, "the stall lost no frame"
    assert infos[0].missed_before == numbers[0]  # frames 0 .. first-1 never arrived
    for prev, info in zip(infos, infos[1:], strict=False):
        assert info.frame_number > prev.frame_number
        assert info.missed_before == info.frame_number - prev.frame_number - 1
    if isinstance(driver, DriverBase):  # the protocol does not ask for a running total
        assert driver.missed_frames == numbers[-1] + 1 - len(infos)


def test_stop_wakes_a_blocked_reader_with_camera_error(harness):
    driver = opened(harness)
    driver.start()
    thread, outcome = run_in_thread(lambda: driver.read_into(blank(driver), 10.0))
    time.sleep(0.1)
    driver.stop()
    wait_for(thread, 1.0)
    assert isinstance(outcome[0], CameraError)


def test_stop_during_free_run_then_start_again(harness):
    driver = opened(harness, trigger_mode=TriggerMode.INTERNAL)
    driver.start()

    def read_until_stopped() -> int:
        n = 0
        while True:
            driver.read_into(blank(driver), 5.0)
            n += 1

    thread, outcome = run_in_thread(read_until_stopped)
    time.sleep(0.2)
    driver.stop()
    wait_for(thread, 2.0)
    assert isinstance(outcome[0], CameraError)
    driver.start()
    assert driver.read_into(blank(driver), 5.0).frame_number == 0


def test_close_twice_is_safe_and_a_closed_camera_refuses_work(harness):
    driver = opened(harness)
    driver.start()
    driver.close()
    driver.close()
    for call in (
        lambda: driver.configure(settings_for(harness)),
        driver.start,
        lambda: driver.read_into(blank(driver), 0.1),
    ):
        with pytest.raises(CameraError):
            call()
    driver.open()
    driver.configure(settings_for(harness))
    driver.start()
    driver.software_trigger(1)
    assert driver.read_into(blank(driver), 5.0).frame_number == 0


def test_a_camera_that_disappears_mid_acquisition_raises_camera_error(harness):
    if harness.unplug is None:
        pytest.skip("unplugging a real camera needs a person: set OPHYD_SCMOS_TEST_UNPLUG=1")
    driver = opened(harness, trigger_mode=TriggerMode.INTERNAL)
    driver.start()

    def read_until_gone() -> None:
        while True:  # as the pipeline reads: short timeouts, retried
            try:
                driver.read_into(blank(driver), 0.1)
            except TimeoutError:
                continue

    thread, outcome = run_in_thread(read_until_gone)
    time.sleep(0.2)
    t = time.monotonic()
    harness.unplug(driver)
    wait_for(thread, harness.gone_within)
    assert isinstance(outcome[0], CameraError), outcome
    assert str(outcome[0])
    print(f"{harness.name}: CameraError {time.monotonic() - t:.1f} s after the camera went")
    driver.close()
    driver.close()
