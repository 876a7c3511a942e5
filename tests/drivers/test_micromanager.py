"""The Micro-Manager driver on a real MMCore with the DemoCamera adapter (mm-test-adapters)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ophyd_scmos.drivers import ROI, CameraSettings, FrameInfo, TriggerMode

from .endtoend import count_and_replay

pytestmark = pytest.mark.usefixtures("mm_demo_available")

ROI_ = ROI(64, 32, 192, 128)


@pytest.fixture
def mm():
    from ophyd_scmos.drivers.micromanager import MicroManagerCamera

    drivers = []

    def make(*args, **kwargs) -> MicroManagerCamera:
        driver = MicroManagerCamera(*args, **kwargs)
        driver.open()
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        driver.close()


def served_by_mmcore(binning: int, roi: ROI, exposure_ms: float, n: int) -> np.ndarray:
    """The first n frames of a freshly loaded DemoCamera, through pymmcore-plus alone."""
    from pymmcore_plus import CMMCorePlus

    core = CMMCorePlus()
    core.loadDevice("Cam", "DemoCamera", "DCam")
    core.initializeDevice("Cam")
    core.setCameraDevice("Cam")
    core.setProperty("Cam", "PixelType", "16bit")
    core.setProperty("Cam", "BitDepth", "16")
    core.setProperty("Cam", "Binning", str(binning))
    b = binning
    core.setROI(roi.x // b, roi.y // b, roi.width // b, roi.height // b)
    core.setExposure(exposure_ms)
    core.startSequenceAcquisition(n, 0, True)
    while core.isSequenceRunning():
        time.sleep(0.001)
    frames = [core.popNextImage() for _ in range(core.getRemainingImageCount())]
    core.unloadAllDevices()
    assert len(frames) == n
    return np.stack(frames)


def test_count_replays_pixel_exact_against_frames_mmcore_serves(mm, tmp_path: Path):
    driver = mm("DemoCamera:DCam")
    frames, numbers, rate = count_and_replay(
        driver, tmp_path, 100, roi=ROI_.as_tuple(), binning=2, exposure_time=0.002
    )
    assert frames.shape == (100, 64, 96) and frames.dtype == np.uint16
    np.testing.assert_array_equal(numbers, np.arange(100))
    served = served_by_mmcore(2, ROI_, 2.0, 100)
    assert len({f.tobytes() for f in served}) > 1  # the frames do change, so order is checked
    np.testing.assert_array_equal(frames, served)
    print(f"RE(count) through Micro-Manager: {rate:.0f} events/s")


def test_settings_reach_the_camera(mm):
    driver = mm("DemoCamera:DCam")
    driver.configure(CameraSettings(exposure_time=0.004, roi=ROI_, binning=4, bit_depth=12))
    core, label = driver.core, driver.label
    assert core.getProperty(label, "Binning") == "4"
    assert core.getROI(label) == [16, 8, 48, 32]  # binned pixels, as Micro-Manager counts
    assert core.getExposure() == pytest.approx(4.0)
    assert core.getImageBitDepth() == 12
    driver.start()
    driver.software_trigger(2)
    out = np.empty(driver.frame_shape, np.uint16)
    for _ in range(2):
        driver.read_into(out, 5.0)
        assert out.max() <= 4095


def test_software_triggers_queue_while_a_sequence_drains(mm):
    driver = mm("DemoCamera:DCam")
    driver.configure(CameraSettings(exposure_time=0.001, roi=ROI_))
    driver.start()
    driver.software_trigger(2)
    driver.software_trigger(3)  # arrives while the first sequence runs
    out = np.empty(driver.frame_shape, np.uint16)
    assert [driver.read_into(out, 5.0).frame_number for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(TimeoutError):
        driver.read_into(out, 0.1)


def test_buffer_overflow_in_a_triggered_sequence_is_reported_as_missed(mm):
    driver = mm("DemoCamera:DCam", buffer_mb=1)
    driver.configure(CameraSettings(exposure_time=0.001, roi=ROI_))
    rows, cols = driver.frame_shape
    capacity = 2**20 // (rows * cols * 2)  # frames in MMCore's 1 MB buffer
    driver.start()
    driver.software_trigger(capacity * 3)
    deadline = time.monotonic() + 30  # the whole sequence runs while nobody reads (on a
    while driver.core.isSequenceRunning():  # loaded machine, longer than its exposures)
        assert time.monotonic() < deadline, "the sequence did not end"
        time.sleep(0.01)
    out = np.empty(driver.frame_shape, np.uint16)
    infos: list[FrameInfo] = []
    while not infos or infos[-1].frame_number < capacity * 3 - 1:
        infos.append(driver.read_into(out, 5.0))
    assert sum(i.missed_before for i in infos) == capacity * 3 - len(infos) > 0
    assert driver.missed_frames == capacity * 3 - len(infos)


def test_opens_the_camera_of_a_config_file_or_of_a_core(mm):
    import mm_test_adapters
    from pymmcore_plus import CMMCorePlus

    config = Path(mm_test_adapters.device_adapter_path()) / "MMConfig_demo.cfg"
    driver = mm(config=config)
    assert "DemoCamera:DCam" in driver.model
    core = CMMCorePlus()
    core.loadSystemConfiguration(str(config))
    shared = mm(core=core)
    assert shared.core is core and shared.label == core.getCameraDevice()
    shared.close()
    assert shared.label in core.getLoadedDevices()  # not ours to unload


def test_list_cameras_names_the_demo_camera():
    from ophyd_scmos.drivers.micromanager import list_cameras

    assert ("DemoCamera:DCam", "Demo camera") in list_cameras()


def test_a_bad_device_name_fails_at_open_naming_it(mm):
    from ophyd_scmos.drivers import CameraError

    with pytest.raises(CameraError, match="DemoCamera:NoSuchCam"):
        mm("DemoCamera:NoSuchCam")
    with pytest.raises(ValueError, match="Library:Device"):
        mm("DCam")


def test_internal_mode_frames_follow_the_camera_clock(mm):
    driver = mm("DemoCamera:DCam")
    driver.configure(
        CameraSettings(exposure_time=0.005, roi=ROI_, trigger_mode=TriggerMode.INTERNAL)
    )
    driver.start()
    out = np.empty(driver.frame_shape, np.uint16)
    stamps = [driver.read_into(out, 5.0).camera_timestamp for _ in range(10)]
    # The demo camera makes frames on a thread of its own: on a loaded machine one comes a
    # period late now and then, so the typical interval is what follows the exposure.
    assert np.all(np.diff(stamps) > 0)
    assert np.median(np.diff(stamps)) == pytest.approx(0.005, abs=0.003)


def test_external_trigger_is_refused_naming_what_to_do(mm):
    driver = mm("DemoCamera:DCam")
    with pytest.raises(ValueError, match="external.*trigger property"):
        driver.configure(CameraSettings(trigger_mode=TriggerMode.EXTERNAL))


def test_a_period_the_camera_does_not_keep_is_said_at_the_movies_end(mm, tmp_path: Path):
    """The DemoCamera's adapter ignores the interval MMCore is given: frames come as fast as
    the exposure allows. The file records the period asked, so the run's end says so."""
    from bluesky import RunEngine

    from ophyd_scmos import SCMOSCamera
    from ophyd_scmos.plans import movie

    cam = SCMOSCamera(name="cam", driver=mm("DemoCamera:DCam"), write_dir=tmp_path, ring_mb=4)
    try:
        cam.roi.set(ROI_.as_tuple())
        cam.exposure_time.set(0.005)
        cam.acquire_period.set(0.05)
        with pytest.warns(RuntimeWarning, match=r"not the acquire_period of 50 ms asked"):
            RunEngine({})(movie(cam, frames=20))
    finally:
        cam.destroy()


def test_the_driver_leaves_the_sessions_log_levels_as_they_were(tmp_path: Path):
    """Importing pymmcore-plus sets the root logger to DEBUG: in a session every debug line of
    every library (each RunEngine message, each ophyd put) would be made into a record."""
    code = (
        "import logging\n"
        "from ophyd_scmos.drivers.micromanager import MicroManagerCamera\n"
        "driver = MicroManagerCamera(device='DemoCamera:DCam')\n"
        "driver.open(); driver.close()\n"
        "print(logging.getLogger().level, logging.getLogger('pymmcore-plus').level)\n"
    )
    env = {**os.environ, "HOME": str(tmp_path)}  # pymmcore-plus keeps its log under HOME
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    # The root as Python leaves it; pymmcore-plus's own log as detailed as it set it up.
    assert done.stdout.split() == [str(logging.WARNING), str(logging.DEBUG)]


def test_a_change_another_program_made_on_a_shared_core_is_set_back_for_the_run(mm, tmp_path: Path):
    """A GUI sharing the core (napari-micromanager) changed the exposure and bit depth after
    the camera was set: the run took the GUI's, and its file and documents said otherwise."""
    import h5py
    from bluesky import RunEngine
    from bluesky.plans import count
    from pymmcore_plus import CMMCorePlus

    from ophyd_scmos import SCMOSCamera

    core = CMMCorePlus()
    core.loadDevice("Camera", "DemoCamera", "DCam")
    core.initializeDevice("Camera")
    core.setCameraDevice("Camera")
    cam = SCMOSCamera(name="cam", driver=mm(core=core), write_dir=tmp_path, ring_mb=4)
    try:
        cam.roi.set((64, 32, 128, 64))
        cam.exposure_time.set(0.005)
        core.setExposure(60.0)  # the GUI, meanwhile
        core.setProperty("Camera", "BitDepth", "12")
        RE = RunEngine({})
        with pytest.warns(RuntimeWarning, match=r"changed outside ophyd-scmos \(exposure 60 ms"):
            RE(count([cam], num=2))
        assert core.getExposure() == 5.0 and core.getProperty("Camera", "BitDepth") == "16"
        with h5py.File(cam.file_path.get()) as f:
            assert (f["/entry"].attrs["exposure_time"], f["/entry"].attrs["bit_depth"]) == (
                0.005,
                16,
            )
            times = f["/entry/data/timestamp"][()]
        assert np.diff(times).max() < 0.05  # frames an exposure of 5 ms apart, not 60
    finally:
        cam.destroy()
