"""The camera's side of the live view: focus mode, what the view is told, and that a view
frozen or killed costs a run nothing. The view's server runs for real; the frames are read
as it reads them (`LiveFeed`), and checked pixel for pixel."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import h5py
import numpy as np
import pytest
from bluesky.plans import count

from ophyd_scmos import SCMOSCamera
from ophyd_scmos.drivers.base import TriggerMode
from ophyd_scmos.live.feed import LiveFeed
from ophyd_scmos.pipeline import layout
from ophyd_scmos.pipeline.ring import NewestFrame
from ophyd_scmos.plans import movie
from tests.conftest import expected_frames


@pytest.fixture
def feed(cam: SCMOSCamera) -> Iterator[LiveFeed]:
    """The camera's view started, and a reader of what it is told, as the view's own."""
    url = cam.live()
    assert url is not None and url.startswith("http://127.0.0.1:") and "token=" in url
    view = cam._live.view
    assert view is not None
    reader = LiveFeed(view.announcer.path)
    yield reader
    reader.close()


def next_frame(
    feed: LiveFeed, after: NewestFrame | None = None, timeout: float = 10
) -> NewestFrame:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = feed.frame(after.delivered if after else 0, after.ring if after else None)
        if frame is not None:
            return frame
        time.sleep(0.005)
    raise AssertionError(f"no frame in {timeout} s; the camera says {feed.state()}")


def test_focus_mode_shows_the_camera_frames_and_records_nothing(cam, driver, feed, tmp_path):
    first = next_frame(feed)
    later = next_frame(feed, first)
    assert later.frame_number > first.frame_number
    for frame in (first, later):
        np.testing.assert_array_equal(frame.image, driver.expected_frame(frame.frame_number))
    state = feed.state()
    assert state["mode"] == "focus" and state["file"] is None and state["camera"] == "cam"
    assert state["settings"]["roi"] == [32, 16, 96, 64]
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())
    # The user's settings are the camera's again once focus mode stops.
    cam.live(False)
    assert cam.driver.settings.trigger_mode is TriggerMode.SOFTWARE
    assert cam.driver.settings.acquire_period == 0.0
    assert cam._live.view is None


def test_a_setting_changed_in_focus_mode_takes_effect_at_once(cam, driver, feed):
    next_frame(feed)
    cam.roi.set((0, 0, 64, 48))
    cam.exposure_time.set(0.002)
    deadline = time.monotonic() + 10
    frame = next_frame(feed)
    while frame.image.shape != (48, 64) and time.monotonic() < deadline:
        frame = next_frame(feed, frame)
    assert frame.image.shape == (48, 64)
    np.testing.assert_array_equal(frame.image, driver.expected_frame(frame.frame_number))
    state = feed.state()
    assert state["settings"]["roi"] == [0, 0, 64, 48]
    assert state["settings"]["exposure_time"] == 0.002
    assert state["mode"] == "focus"


def test_a_run_pauses_focus_mode_shows_its_frames_and_focus_mode_resumes(
    cam, driver, feed, RE, recorder
):
    next_frame(feed)
    seen: list[tuple[str, str | None]] = []

    def watch(name: str, doc: dict) -> None:
        if name == "event":
            state = feed.state()
            seen.append((state["mode"], state["file"]))

    RE(count([cam], num=20), watch)
    path = cam.file_path.get()
    assert seen and all(mode == "recording" and file == path for mode, file in seen)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(driver, 20))
    assert feed.state()["mode"] == "focus" and feed.state()["file"] is None
    frame = next_frame(feed)
    np.testing.assert_array_equal(frame.image, driver.expected_frame(frame.frame_number))


def test_the_view_shows_a_movie_as_it_is_recorded(cam, driver, feed, RE):
    cam.trigger_mode.set("internal")
    cam.acquire_period.set(0.005)
    frames: list[NewestFrame] = []

    def watch(name: str, doc: dict) -> None:
        frame = feed.frame(
            frames[-1].delivered if frames else 0, frames[-1].ring if frames else None
        )
        if frame is not None and feed.state()["mode"] == "recording":
            frames.append(frame)

    RE(movie(cam, frames=200), watch)
    assert frames
    for frame in frames:  # the frames a movie records: its frame numbers start at 0
        np.testing.assert_array_equal(frame.image, driver.expected_frame(frame.frame_number))
    assert feed.counters()["written"] == 200


@pytest.mark.parametrize("fate", [signal.SIGSTOP, signal.SIGKILL])
def test_a_view_frozen_or_killed_during_a_movie_costs_it_no_frame(cam, driver, feed, RE, fate):
    view = cam._live.view
    assert view is not None
    cam.trigger_mode.set("internal")
    cam.acquire_period.set(0.002)
    next_frame(feed)

    def strike(name: str, doc: dict) -> None:
        if name == "start":
            os.kill(view.process.pid, fate)

    try:
        RE(movie(cam, frames=1500), strike)
    finally:
        os.kill(view.process.pid, signal.SIGCONT)
    assert (cam.frames_dropped.get(), cam.frames_missed.get()) == (0, 0)
    with h5py.File(cam.file_path.get(), "r") as f:
        assert f[layout.DATA].shape[0] == 1500
        assert f["/entry/data/frame_number"][()].tolist() == list(range(1500))
        np.testing.assert_array_equal(f[layout.DATA][-3:], expected_frames(driver, 1500)[-3:])
    cam.live(False)  # a frozen view too is ended without the camera waiting on it


def test_a_view_ends_with_its_camera_process(tmp_path):
    """The view's server leaves when the process of its camera is gone, however it went."""
    code = (
        "import time\n"
        "from ophyd_scmos import SCMOSCamera, SimulatedSCMOS\n"
        "driver = SimulatedSCMOS(shape=(64, 64))\n"
        f"cam = SCMOSCamera(name='cam', driver=driver, write_dir={str(tmp_path)!r})\n"
        "cam.live()\n"
        "print('VIEW', cam._live.view.process.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    camera = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert camera.stdout is not None
    pid = next(int(line.split()[1]) for line in camera.stdout if line.startswith("VIEW "))
    camera.kill()
    camera.wait()
    camera.stdout.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError("the view outlived its camera's process by 20 s")


def test_a_view_whose_files_are_gone_puts_no_setting_and_no_run_at_risk(
    cam, driver, feed, RE, caplog
):
    """A sweep of /tmp took the view's directory (or /tmp is full): the camera cannot tell the
    view its state any more, and says so once; settings and runs go on as without a view."""
    next_frame(feed)
    view = cam._live.view
    shutil.rmtree(view.dir)
    with caplog.at_level(logging.WARNING, logger="ophyd_scmos.live.control"):
        cam.exposure_time.set(0.002)
        (uid,) = RE(count([cam], num=3))
    warnings = [r for r in caplog.records if "cannot tell it the camera's state" in r.message]
    assert len(warnings) == 1
    assert cam.driver.settings.exposure_time == 0.002
    with h5py.File(cam.file_path.get(), "r") as f:
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(driver, 3))
    url = cam.live()  # afresh: a new view, told the state again
    assert cam._live.view is not view and url is not None
    assert LiveFeed(cam._live.view.announcer.path).state()["mode"] == "focus"


def test_a_view_asked_for_on_another_host_or_port_moves_there(cam):
    cam.live(host="0.0.0.0")
    anywhere = cam._live.view
    cam.live(host="0.0.0.0")
    assert cam._live.view is anywhere  # the same view: port 0 is any port
    local = cam.live()  # back to this computer only
    assert cam._live.view is not anywhere and not anywhere.alive
    assert local is not None and local.startswith("http://127.0.0.1:")
    cam.live(False)


def test_a_view_that_cannot_start_focus_mode_leaves_no_server(cam, monkeypatch):
    def no_room() -> None:
        raise MemoryError("cannot make a frame ring in shared memory")

    monkeypatch.setattr(cam._live, "_ring_for_focus", no_room)
    with pytest.raises(MemoryError):
        cam.live()
    assert cam._live.view is None


def test_focus_mode_stopped_by_a_camera_error_says_so_and_starts_again(cam, driver, feed):
    """The camera fails in focus mode (here the sample stage the simulated spot follows): the
    view is told why and that no frames come; `cam.live()` starts focus mode again."""
    from ophyd_scmos.drivers.simulated import Spot

    broken = threading.Event()

    def stage_x() -> float:
        if broken.is_set():
            raise RuntimeError("stage controller disconnected")
        return 32.0

    with cam._live.settings_change():
        driver.spot = Spot(stage_x, 32.0)
    next_frame(feed)
    broken.set()
    deadline = time.monotonic() + 10
    while feed.state().get("mode") != "idle":
        assert time.monotonic() < deadline, feed.state()
        time.sleep(0.01)
    assert "stage controller disconnected" in feed.state()["error"]
    broken.clear()
    cam.live()
    state = feed.state()
    assert state["mode"] == "focus" and state["error"] is None
    first = next_frame(feed)
    next_frame(feed, first)


VIEW_HOLDS_A_RING = """
import sys, httpx, h5py
from bluesky import RunEngine
from bluesky.plans import count
from ophyd_scmos import SCMOSCamera, SimulatedSCMOS
cam = SCMOSCamera(name="cam", driver=SimulatedSCMOS(shape=(256, 320), seed=1),
                  write_dir=sys.argv[1], ring_mb=5)
base, query = cam.live().split("/?")
frame = httpx.get(f"{base}/frame?{query}&width=320&height=256", timeout=30)
print("seen", frame.status_code, flush=True)  # the view maps the 5 MiB ring: 3 MiB are left
cam.roi.set((0, 0, 160, 128))  # another frame size: another ring, once the view lets go
(uid,) = RunEngine({})(count([cam], num=3))
with h5py.File(cam.file_path.get(), "r") as f:
    print("recorded", f["/entry/data/data"].shape, flush=True)
cam.destroy()
"""


def test_a_ring_the_view_still_maps_is_let_go_so_the_next_one_fits(tmp_path):
    """A small /dev/shm (Docker's) holds one ring: the one the view had looked into is
    removed when the frame size changes, and the view lets go of it for the next to fit."""
    from tests.pipeline.test_ring import run_with_small_shm

    run = run_with_small_shm(VIEW_HOLDS_A_RING, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "seen 200" in run.stdout and "recorded (3, 128, 160)" in run.stdout


def test_settings_from_two_threads_with_the_view_open_leave_the_users_settings(cam, feed, RE):
    """Interleaved, the changes once left focus mode's trigger mode and period as the
    camera's own (later step scans free-ran), or the camera acquiring after the view closed."""
    errors: list[Exception] = []

    def toggle(setting: str, values: tuple) -> None:
        for i in range(12):
            try:
                getattr(cam, setting).set(values[i % 2])
            except Exception as exc:  # every one is a failure here
                errors.append(exc)

    threads = [
        threading.Thread(target=toggle, args=("exposure_time", (0.001, 0.002))),
        threading.Thread(target=toggle, args=("binning", (2, 1))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    cam.live(False)
    assert (cam.trigger_mode.get(), cam.acquire_period.get()) == ("software", 0.0)
    assert not cam.driver._running
    RE(count([cam], num=3))
    with h5py.File(cam.file_path.get()) as f:
        assert f["/entry"].attrs["trigger_mode"] == "software"
        assert f["/entry/data/frame_number"][()].tolist() == [0, 1, 2]
