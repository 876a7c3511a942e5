"""The GenICam driver on Aravis, against Aravis's fake GigE Vision camera over loopback."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from ophyd_scmos.drivers import ROI, CameraError, CameraSettings, TriggerMode

from .endtoend import count_and_replay

ROI_ = ROI(64, 32, 256, 128)


@pytest.fixture
def genicam(fake_gige):
    from ophyd_scmos.drivers.genicam import GenICamCamera

    drivers = []

    def make(**kwargs) -> GenICamCamera:
        fake_gige.ensure()
        driver = GenICamCamera(fake_gige.address, **kwargs)
        driver.open()
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        driver.close()
    gc.collect()


def served_by_aravis(address: str, binning: int, roi: ROI, exposure_us: float, n: int):
    """The first n frames of a fresh fake camera, through Aravis alone."""
    from gi.repository import Aravis

    cam = Aravis.Camera.new(address)
    cam.set_pixel_format_from_string("Mono16")
    cam.set_binning(binning, binning)
    b = binning
    cam.set_region(roi.x // b, roi.y // b, roi.width // b, roi.height // b)
    cam.set_exposure_time(exposure_us)
    cam.clear_triggers()
    cam.set_frame_rate(200.0)
    cam.get_device().set_stream_options(Aravis.GvStreamOption.PACKET_SOCKET_DISABLED)  # as ours
    stream = cam.create_stream(None, None)
    for _ in range(n):
        stream.push_buffer(Aravis.Buffer.new_allocate(cam.get_payload()))
    cam.start_acquisition()
    frames, ids = [], []
    for _ in range(n):
        buffer = stream.timeout_pop_buffer(2_000_000)
        assert buffer is not None and buffer.get_status() == Aravis.BufferStatus.SUCCESS
        frames.append(np.frombuffer(buffer.get_data(), "<u2").copy())
        ids.append(buffer.get_frame_id())
    cam.stop_acquisition()
    del stream, cam
    gc.collect()  # give control of the camera back
    assert np.all(np.diff(ids) == 1), "the direct read lost frames"
    return np.stack(frames)


def test_count_replays_pixel_exact_against_frames_aravis_serves(genicam, fake_gige, tmp_path: Path):
    fake_gige.kill()  # a fresh fake camera: its frame ids, so its frames, start over
    driver = genicam()
    frames, numbers, rate = count_and_replay(
        driver, tmp_path, 100, roi=ROI_.as_tuple(), binning=2, exposure_time=0.01
    )
    assert frames.shape == (100, 64, 128) and frames.dtype == np.uint16
    np.testing.assert_array_equal(numbers, np.arange(100))
    driver.close()
    fake_gige.kill()
    fake_gige.ensure()
    served = served_by_aravis(fake_gige.address, 2, ROI_, 10_000.0, 100)
    assert len({f.tobytes() for f in served}) == 100  # every frame differs: order is checked
    np.testing.assert_array_equal(frames.reshape(100, -1), served)
    print(f"RE(count) through Aravis: {rate:.0f} events/s")


def test_settings_reach_the_camera(genicam):
    driver = genicam()
    driver.configure(CameraSettings(exposure_time=0.004, roi=ROI_, binning=4))
    cam = driver.camera
    assert (cam.get_binning().dx, cam.get_binning().dy) == (4, 4)
    region = cam.get_region()
    assert (region.x, region.y, region.width, region.height) == (16, 8, 64, 32)
    assert cam.get_exposure_time() == pytest.approx(4000.0)
    assert cam.get_pixel_format_as_string() == "Mono16"
    assert driver.frame_shape == (32, 64)


def test_a_frame_waits_frame_retention_for_its_packets(genicam):
    driver = genicam(frame_retention=1.5)
    driver.start()
    assert driver._stream.get_property("frame-retention") == 1_500_000  # us
    driver.close()  # gives control of the camera back
    assert genicam()._frame_retention == 0.5  # Aravis's 0.1 s is short for a busy computer
    with pytest.raises(ValueError, match="frame_retention must be > 0"):
        genicam(frame_retention=0)


def test_twelve_bits_is_refused_by_a_camera_without_mono12(genicam):
    driver = genicam()
    with pytest.raises(ValueError, match=r"bit_depth must be one of \(16,\)"):
        driver.configure(CameraSettings(bit_depth=12))


def first_frame_id(address: str) -> int:
    from gi.repository import Aravis

    cam = Aravis.Camera.new(address)
    cam.clear_triggers()
    cam.get_device().set_stream_options(Aravis.GvStreamOption.PACKET_SOCKET_DISABLED)
    stream = cam.create_stream(None, None)
    stream.push_buffer(Aravis.Buffer.new_allocate(cam.get_payload()))
    cam.start_acquisition()
    frame_id = stream.timeout_pop_buffer(2_000_000).get_frame_id()
    cam.stop_acquisition()
    del stream, cam
    gc.collect()
    return frame_id


def test_frame_ids_are_unwrapped_past_65535(genicam, fake_gige):
    fake_gige.kill()
    fake_gige.ensure()  # a new fake camera's 16-bit frame ids start near the wrap
    assert first_frame_id(fake_gige.address) > 65535 - 600
    driver = genicam(buffer_frames=1024)  # the 700 frames fit: a stalled reader misses none
    driver.configure(
        CameraSettings(
            exposure_time=0.001, roi=ROI(0, 0, 64, 64), trigger_mode=TriggerMode.INTERNAL
        )
    )
    driver.start()
    out = np.empty(driver.frame_shape, np.uint16)
    infos = [driver.read_into(out, 5.0) for _ in range(700)]
    numbers = [i.frame_number for i in infos]
    assert numbers == list(range(700))
    assert driver.missed_frames == 0


@pytest.fixture
def lossy_link(fake_gige):
    """The camera drops 0.5% of its packets (and Aravis asks for none again, see `lossy`):
    many 256x256 frames come incomplete, the first ones among them."""
    fake_gige.ensure(lost_per_thousand=5)
    yield
    fake_gige.ensure(lost_per_thousand=0)  # a whole link for the next test


def lossy(driver, mode: TriggerMode, frames: int) -> list:
    """`frames` frames read from `driver` started in `mode`, no packet asked for again."""
    driver.configure(
        CameraSettings(exposure_time=0.002, roi=ROI(0, 0, 256, 256), trigger_mode=mode)
    )
    driver.start()
    driver._stream.set_property("packet-resend", 0)  # ARV_GV_STREAM_PACKET_RESEND_NEVER
    out = np.empty(driver.frame_shape, np.uint16)
    if mode is TriggerMode.SOFTWARE:
        driver.software_trigger(frames)
    infos = [driver.read_into(out, 5.0) for _ in range(frames)]
    driver.stop()
    return infos


def test_on_a_lossy_link_every_frame_the_camera_sent_is_delivered_or_counted(genicam, lossy_link):
    """Free-running, an incomplete frame is lost: counted missed, numbers keep the camera's
    count."""
    driver = genicam()
    infos = lossy(driver, TriggerMode.INTERNAL, 40)
    numbers = [i.frame_number for i in infos]
    assert all(b > a for a, b in zip(numbers, numbers[1:], strict=False))
    missed = sum(i.missed_before for i in infos)
    assert missed > 0, "the link lost nothing: the test proves nothing"
    assert numbers[-1] + 1 == len(infos) + missed == len(infos) + driver.missed_frames
    assert driver.retaken_frames == 0


def test_on_a_lossy_link_a_triggered_frame_that_came_incomplete_is_taken_again(
    genicam, lossy_link, caplog
):
    """Software-triggered, an incomplete frame is exposed again: every trigger gets a whole
    frame, none is missed, and the numbers run without gaps (a gap means a frame lost). It
    used to count as missed, which failed a step scan's point on any lossy link."""
    driver = genicam()
    with caplog.at_level("WARNING", logger="ophyd_scmos.drivers.genicam"):
        infos = lossy(driver, TriggerMode.SOFTWARE, 40)
    assert driver.retaken_frames > 0, "the link lost nothing: the test proves nothing"
    assert [i.frame_number for i in infos] == list(range(40))
    assert sum(i.missed_before for i in infos) == driver.missed_frames == 0
    assert [r.message for r in caplog.records if "exposed again" in r.message] != []
    stamps = [i.camera_timestamp for i in infos]
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))


def test_an_absent_camera_fails_at_open_naming_it():
    from ophyd_scmos.drivers.genicam import GenICamCamera

    driver = GenICamCamera("127.0.0.1:no-such-camera")
    with pytest.raises(CameraError, match="no-such-camera"):
        driver.open()


def test_list_cameras_and_open_by_address(genicam, fake_gige):
    from ophyd_scmos.drivers.genicam import list_cameras

    assert all(isinstance(i, str) and isinstance(d, str) for i, d in list_cameras())
    driver = genicam()
    assert fake_gige.serial in driver.model and "Aravis" in driver.model


def test_external_mode_arms_the_trigger_line(genicam):
    driver = genicam()
    driver.configure(
        CameraSettings(
            exposure_time=0.005,
            roi=ROI_,
            trigger_mode="external",  # type: ignore[arg-type]
        )
    )
    driver.start()
    cam = driver.camera
    assert (cam.get_string("TriggerMode"), cam.get_string("TriggerSource")) == ("On", "Line0")
    with pytest.raises(RuntimeError, match="needs trigger_mode 'software'"):
        driver.software_trigger()
    with pytest.raises(TimeoutError):  # nothing pulses the fake camera's line
        driver.read_into(np.empty(driver.frame_shape, np.uint16), 0.2)


def test_a_trigger_line_the_camera_lacks_is_refused(genicam):
    driver = genicam(trigger_line="Line7")
    with pytest.raises(ValueError, match="Line7"):
        driver.configure(CameraSettings(trigger_mode="external"))  # type: ignore[arg-type]


def test_other_traffic_on_the_computer_is_never_taken_for_frames(genicam):
    """Datagrams flying on the computer while streams start (as another program's traffic
    does) neither show as frames lost nor take a point's trigger: each start's first frame is
    frame 0, none missed, with the pixels the camera sent. (Through Aravis's packet socket, as
    root, such datagrams came back as empty or broken frames, each counted missed and
    triggered again.)"""
    import socket
    import threading

    driver = genicam(buffer_frames=64)
    driver.configure(CameraSettings(exposure_time=0.001, roi=ROI_))
    flooding = threading.Event()

    def flood() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not flooding.is_set():
                s.sendto(bytes(64), ("127.0.0.1", 9))

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        firsts = []
        for _ in range(40):
            driver.start()
            driver.software_trigger(1)
            info = driver.read_into(np.empty(driver.frame_shape, np.uint16), 5.0)
            firsts.append((info.frame_number, info.missed_before))
            driver.stop()
    finally:
        flooding.set()
        flooder.join()
    assert firsts == [(0, 0)] * 40
    assert driver.missed_frames == 0


def test_a_step_scan_on_a_lossy_link_keeps_every_point(genicam, lossy_link, tmp_path: Path):
    """`count` through the camera while the link loses packets and the frames cannot wait
    for them to be sent again: each point's frame that came incomplete is taken again, and
    the run ends with every point, its whole frame replayed from the catalog and the
    file's numbers without a gap."""
    driver = genicam(frame_retention=1e-6)
    frames, numbers, _ = count_and_replay(
        driver, tmp_path, 30, roi=(0, 0, 256, 256), exposure_time=0.002
    )
    assert driver.retaken_frames > 0, "no frame came incomplete: the test proves nothing"
    assert frames.shape == (30, 256, 256)
    np.testing.assert_array_equal(numbers, np.arange(30))


def test_a_camera_another_program_controls_is_refused_saying_so(genicam, fake_gige):
    """A GigE Vision camera takes one controller; a second one's writes go unanswered, which
    Aravis reports as a bare timeout."""
    from ophyd_scmos.drivers.genicam import GenICamCamera

    genicam()  # the controller, as another session would be
    second = GenICamCamera(fake_gige.address)
    with pytest.raises(CameraError, match="another program may control it"):
        second.open()


def test_features_changed_through_the_aravis_camera_are_set_back_when_acquiring_starts(genicam):
    """Changed through `driver.camera` (or another tool), the run took them while its file
    recorded the driver's settings."""
    driver = genicam()
    driver.configure(CameraSettings(exposure_time=0.004, roi=ROI_, binning=2))
    driver.camera.set_exposure_time(9000.0)
    driver.camera.set_pixel_format_from_string("Mono8")
    with pytest.warns(RuntimeWarning, match=r"changed outside ophyd-scmos \(exposure 9000 us"):
        driver.start()
    try:
        assert driver.camera.get_exposure_time() == pytest.approx(4000.0)
        assert driver.camera.get_pixel_format_as_string() == "Mono16"
    finally:
        driver.stop()
