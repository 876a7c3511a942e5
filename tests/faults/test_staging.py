"""Staging out of order, after failures, and two cameras in one directory."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from bluesky.plans import count

from ophyd_scmos import SCMOSCamera, SimulatedSCMOS
from ophyd_scmos.drivers import CameraError
from ophyd_scmos.pipeline import layout


def test_unstage_without_stage_does_nothing(cam, tmp_path):
    cam.unstage()
    assert cam._staged.name == "no"
    assert not (tmp_path / "data").exists()


def test_stage_after_a_failed_stage_works(driver, tmp_path, RE, recorder):
    cam = SCMOSCamera(
        name="cam", driver=driver, write_dir=tmp_path, file_template="one.h5", ring_mb=4
    )
    cam.roi.set((0, 0, 32, 32))
    (tmp_path / "one.h5").write_bytes(b"taken")
    with pytest.raises(FileExistsError):
        RE(count([cam], num=2))
    assert cam._staged.name == "no"
    (tmp_path / "one.h5").unlink()
    RE(count([cam], num=2))
    with h5py.File(tmp_path / "one.h5", "r") as f:
        assert f[layout.DATA].shape[0] == 2


def test_two_cameras_write_one_directory_at_the_same_time(tmp_path, RE):
    cams = []
    for seed in (1, 2):
        camera = SCMOSCamera(
            name=f"cam{seed}",
            driver=SimulatedSCMOS(shape=(64, 64), seed=seed),
            write_dir=tmp_path,
            ring_mb=2,
        )
        camera.exposure_time.set(0.001)
        cams.append(camera)
    other_done = threading.Event()
    other_cam = SCMOSCamera(
        name="cam", driver=SimulatedSCMOS(shape=(64, 64), seed=3), write_dir=tmp_path, ring_mb=2
    )

    def other_session():  # a second process would do the same; a thread shares the disk
        other_cam.stage()
        for _ in range(30):
            other_cam.trigger().wait(10)
        other_cam.unstage()
        other_done.set()

    thread = threading.Thread(target=other_session)
    thread.start()
    try:
        RE(count(cams, num=30))
        thread.join(30)
        assert other_done.is_set()
        paths = {c.file_path.get() for c in (*cams, other_cam)}
        assert len(paths) == 3 and all(os.path.dirname(p) == str(tmp_path) for p in paths)
        for camera in (*cams, other_cam):
            with h5py.File(camera.file_path.get(), "r") as f:
                np.testing.assert_array_equal(f[layout.DATA][29], camera.driver.expected_frame(29))
    finally:
        for camera in (*cams, other_cam):
            camera.destroy()


@pytest.mark.parametrize(
    ("attr", "value", "words"),
    [
        ("exposure_time", float("nan"), "exposure_time"),
        ("exposure_time", -0.1, "exposure_time"),
        ("exposure_time", 0, "exposure_time"),
        ("acquire_period", float("inf"), "acquire_period"),
        ("roi", (0, 0, 4096, 16), "exceeds"),
        ("roi", (-1, 0, 16, 16), "origin"),
        ("roi", (0, 0, 0, 16), "positive"),
        ("roi", (0, 0, 16, 16, 16), "roi"),
        ("bit_depth", 8, "bit_depth"),
        ("frames_per_point", 2.5, "frames_per_point"),
        ("frames_per_point", 16385, "at most 16384 .* movie"),
        ("num_frames", -1, "num_frames"),
        ("duration", float("nan"), "duration"),
    ],
)
def test_bad_settings_are_refused_and_no_file_is_made(cam, tmp_path, attr, value, words):
    before = getattr(cam, attr).get()
    with pytest.raises(ValueError, match=words):
        getattr(cam, attr).set(value)
    assert getattr(cam, attr).get() == before
    assert not (tmp_path / "data").exists()


def test_binning_that_does_not_divide_the_roi_is_refused(cam):
    cam.roi.set((0, 0, 30, 30))
    with pytest.raises(ValueError, match="divisible by binning 4"):
        cam.binning.set(4)


class CameraThatWillNotStart(SimulatedSCMOS):
    """A camera whose SDK refuses to start acquiring (unplugged, held by another program)."""

    def start(self) -> None:
        raise CameraError("camera not responding")


def _our_rings() -> list[str]:
    return sorted(p.name for p in Path("/dev/shm").glob(f"scmos_{os.getpid()}_*"))


def _writer_children() -> list[int]:
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    return [
        int(pid)
        for pid in children
        if b"ophyd_scmos.pipeline" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def test_a_camera_that_fails_to_start_leaves_nothing_behind(tmp_path, RE):
    cam = SCMOSCamera(
        name="cam", driver=CameraThatWillNotStart(shape=(64, 64)), write_dir=tmp_path, ring_mb=2
    )
    gc.collect()  # an earlier test's camera no one holds ends its writer now, not during this
    rings, writers = _our_rings(), _writer_children()  # other tests' cameras may keep theirs
    threads = _stream_threads()
    for _ in range(3):  # every attempt, not just the first
        with pytest.raises(CameraError, match="not responding"):
            RE(count([cam], num=1))
        assert cam._staged.name == "no"
    assert list(tmp_path.iterdir()) == []  # no file, marked open or otherwise
    assert _our_rings() == rings
    deadline = time.monotonic() + 10
    while _writer_children() != writers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _writer_children() == writers
    while _stream_threads() - threads and time.monotonic() < deadline:  # end within a second
        time.sleep(0.05)
    assert _stream_threads() - threads == set()


def _stream_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("scmos-writer-watch")}


@pytest.mark.parametrize(
    "name", ["../../esc", "/abs/x", "a.b", "", "cam#1", "cam?1", "cam(1)", "1cam", "a--b", "a\nb"]
)
def test_a_camera_name_that_is_not_a_document_key_is_refused(tmp_path, name):
    """Also what a catalog cannot keep: a run of `cam#1` recorded, then its images could not
    be read back (a URL's fragment), and `cam(1)`'s run never ended in the catalog (no
    such SQL column)."""
    with pytest.raises(ValueError, match="valid document key"):
        SCMOSCamera(name=name, driver=SimulatedSCMOS(shape=(8, 8)), write_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_two_cameras_numbering_files_at_once_each_get_their_own(tmp_path):
    """{counter}: the first free number is taken atomically, so cameras (or processes)
    starting together never both take it and fail."""
    cams = [
        SCMOSCamera(
            name="cam",
            driver=SimulatedSCMOS(shape=(16, 16), seed=seed),
            write_dir=tmp_path,
            file_template="scan_{counter:03d}.h5",
            ring_frames=2,
        )
        for seed in range(4)
    ]
    start = threading.Barrier(len(cams))
    errors: list[BaseException] = []

    def stage(camera: SCMOSCamera) -> None:
        start.wait()
        try:
            camera.stage()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=stage, args=(c,)) for c in cams]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for camera in cams:
        if camera._staged.name == "yes":
            camera.unstage()
    assert errors == []
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == [f"scan_{i:03d}.h5" for i in range(4)]


OUT_OF_FILES = """
import os, resource, sys
from ophyd_scmos import SCMOSCamera, SimulatedSCMOS
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
cam = SCMOSCamera(name="cam", driver=SimulatedSCMOS(shape=(16, 16)), write_dir=sys.argv[1])
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
for fd in held[-6:]:  # enough to make the run's file, not to start a process
    os.close(fd)
try:
    cam.stage()
except OSError as exc:
    print(exc)
"""


def test_a_process_out_of_file_descriptors_is_told_so_at_stage(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", OUT_OF_FILES, str(tmp_path)], capture_output=True, text=True
    )
    assert "cannot start the camera's writer process: Too many open files" in done.stdout
    assert "`ulimit -n`" in done.stdout and list(tmp_path.iterdir()) == []
