"""What `DriverBase` does for every driver: configure checked, coerced, applied or rolled back;
start, stop and close in order; the caller's buffer checked; and the one trigger-mode
coercion everyone uses."""

from __future__ import annotations

import numpy as np
import pytest

from ophyd_scmos.drivers import (
    ROI,
    CameraError,
    CameraLimits,
    CameraSettings,
    DriverBase,
    FrameInfo,
    TriggerMode,
)

LIMITS = CameraLimits(
    exposure_range=(0.001, 1.0),
    period_range=(0.01, 60.0),
    binnings=(1, 2),
    bit_depths=(16,),
    refused_trigger_modes={TriggerMode.EXTERNAL: "needs a trigger cable this camera lacks"},
)


class RecordingCamera(DriverBase):
    """A camera that only records what the base class asks of it; 2 s exposures fail halfway."""

    def __init__(self) -> None:
        super().__init__("Recording camera", (64, 128))
        self.applied: list[CameraSettings] = []
        self.rois: list[ROI] = []
        self.calls: list[str] = []
        self.connected = False

    def open(self) -> None:
        self.connected = True
        self._limits = LIMITS  # as an SDK reports them at open

    def _apply(self, settings: CameraSettings, roi: ROI) -> CameraSettings:
        self.applied.append(settings)
        self.rois.append(roi)
        if settings.exposure_time == 0.5:
            raise RuntimeError("exposure register stuck")  # after part of it reached the camera
        return settings

    def _start(self) -> None:
        self.calls.append("start")

    def _stop(self) -> None:
        self.calls.append("stop")

    def _close(self) -> None:
        self.calls.append("close")
        self.connected = False

    def software_trigger(self, frames: int = 1) -> None:
        self._check_trigger(frames, TriggerMode.SOFTWARE, "software_trigger")

    def _read(self, out: np.ndarray, timeout: float) -> FrameInfo:
        out[...] = 7
        return FrameInfo(0, 0.0)

    def _require_open(self) -> None:
        if not self.connected:
            raise CameraError("camera is closed; call open() first")


@pytest.fixture
def camera() -> RecordingCamera:
    camera = RecordingCamera()
    camera.open()
    return camera


def test_trigger_mode_coerce_takes_a_mode_or_its_value():
    assert TriggerMode.coerce("internal") is TriggerMode.INTERNAL
    assert TriggerMode.coerce(TriggerMode.EXTERNAL) is TriggerMode.EXTERNAL


@pytest.mark.parametrize("value", ["x", "SOFTWARE", None, 1])
def test_trigger_mode_coerce_refuses_naming_the_value_and_the_modes(value):
    allowed = "['software', 'internal', 'external']"
    with pytest.raises(ValueError) as refused:
        TriggerMode.coerce(value)
    assert str(refused.value) == f"trigger_mode {value!r} is not one of {allowed}"


def test_a_driver_missing_a_step_cannot_be_made():
    class NoApply(RecordingCamera):
        _apply = DriverBase._apply

    with pytest.raises(TypeError, match="_apply"):
        NoApply()


def test_configure_coerces_the_trigger_mode_before_the_driver_sees_it(camera):
    camera.configure(CameraSettings(trigger_mode="internal"))  # type: ignore[arg-type]
    assert camera.applied[-1].trigger_mode is TriggerMode.INTERNAL
    assert camera.settings.trigger_mode is TriggerMode.INTERNAL


def test_configure_gives_the_driver_the_full_sensor_for_no_roi(camera):
    camera.configure(CameraSettings(roi=None))
    camera.configure(CameraSettings(roi=ROI(2, 4, 8, 16), binning=2))
    assert camera.rois == [ROI(0, 0, 128, 64), ROI(2, 4, 8, 16)]
    assert camera.settings.roi == ROI(2, 4, 8, 16) and camera.frame_shape == (8, 4)


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        ({"exposure_time": 2.0}, r"exposure_time .*\[0.001, 1\]; got 2.0"),
        ({"acquire_period": 0.005}, r"acquire_period .*\[0.01, 60\] .*; got 0.005"),
        ({"acquire_period": 61.0}, "got 61.0"),
        ({"binning": 4}, r"binning must be one of \(1, 2\)"),
        ({"bit_depth": 12}, r"bit_depth must be one of \(16,\)"),
        ({"trigger_mode": "external"}, "trigger_mode 'external' needs a trigger cable"),
    ],
)
def test_configure_refuses_what_the_limits_exclude_before_the_camera_hears_of_it(
    camera, change, shown
):
    with pytest.raises(ValueError, match=shown):
        camera.configure(CameraSettings(**change))
    assert camera.applied == []


def test_a_period_of_zero_is_always_taken(camera):
    camera.configure(CameraSettings(acquire_period=0.0))
    assert camera.settings.acquire_period == 0.0


def test_a_camera_refusing_halfway_gets_its_previous_settings_back(camera):
    good = CameraSettings(exposure_time=0.25, binning=2)
    camera.configure(good)
    bad = CameraSettings(exposure_time=0.5)
    with pytest.raises(ValueError, match="Recording camera refused .*exposure register stuck"):
        camera.configure(bad)
    assert camera.applied == [good, bad, good]  # applied again after the failure
    assert camera.settings == good


def test_configure_while_acquiring_is_refused_before_the_camera_hears_of_it(camera):
    camera.start()
    with pytest.raises(RuntimeError, match="stop"):
        camera.configure(CameraSettings(exposure_time=0.25))
    assert camera.applied == []


def test_a_closed_camera_refuses_configure_and_start_and_closes_twice(camera):
    camera.close()
    camera.close()
    with pytest.raises(CameraError):
        camera.configure(CameraSettings())
    with pytest.raises(CameraError):
        camera.start()
    assert camera.calls == ["stop", "close", "stop", "close"]


def test_limits_are_unknown_until_the_camera_opens():
    with pytest.raises(CameraError, match="open"):
        _ = RecordingCamera().limits


def test_start_stop_and_close_run_the_drivers_steps_in_order(camera):
    camera._missed_total = 3  # from an earlier run
    camera.start()
    assert camera.missed_frames == 0
    with pytest.raises(RuntimeError, match="already started"):
        camera.start()
    camera.software_trigger(2)
    camera.close()
    assert camera.calls == ["start", "stop", "close"]
    with pytest.raises(CameraError):
        camera.software_trigger(1)


def test_read_into_checks_the_callers_buffer_before_the_driver_reads(camera):
    camera.configure(CameraSettings(binning=2))
    for wrong in (np.zeros((64, 128), np.uint16), np.zeros((32, 64), np.int32), [0] * 8):
        with pytest.raises(ValueError, match="out must"):
            camera.read_into(wrong, 0.1)
    out = np.zeros((32, 64), np.uint16)
    assert camera.read_into(out, 0.1).frame_number == 0
    assert (out == 7).all()
