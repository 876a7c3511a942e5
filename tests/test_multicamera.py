"""Several cameras in one plan: one run, one file and one writer process per camera, every
frame of each, replayed from the catalog; a movie's frames carry one clock for all cameras."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import count, scan
from bluesky_tiled_plugins import TiledWriter
from ophyd.sim import motor

from ophyd_scmos import SCMOSCamera, SimulatedSCMOS, open_catalog
from ophyd_scmos.cli import main
from ophyd_scmos.pipeline import layout
from ophyd_scmos.plans import movie
from tests.conftest import expected_frames


@pytest.fixture
def cameras(tmp_path: Path) -> Iterator[tuple[SCMOSCamera, SCMOSCamera]]:
    """Two cameras of different frame shapes and seeds, writing into one directory."""
    made = []
    for name, shape, seed in (("left", (48, 64), 1), ("right", (40, 56), 2)):
        cam = SCMOSCamera(
            name=name,
            # deep enough that a loaded machine makes a movie's camera wait, not miss
            driver=SimulatedSCMOS(shape=shape, seed=seed, camera_buffer_frames=1000),
            write_dir=tmp_path / "data",
            ring_mb=4,
        )
        cam.exposure_time.set(0.001)
        made.append(cam)
    yield made[0], made[1]
    for cam in made:
        cam.destroy()


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[object]:
    catalog = open_catalog(tmp_path / "catalog", in_process=True)
    yield catalog
    catalog.context.close()


def _replays_every_frame(run, cameras, n: int) -> None:
    for cam in cameras:
        frames = run["primary"][f"{cam.name}_image"].read()
        expected = expected_frames(cam.driver, n)
        np.testing.assert_array_equal(frames.reshape(expected.shape), expected)
        with h5py.File(cam.file_path.get(), "r") as f:
            assert f[layout.DATA].shape[0] == n
    files = {cam.file_path.get() for cam in cameras}
    assert len(files) == len(cameras), "one file per camera"


def test_count_and_scan_of_two_cameras(cameras, catalog):
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(TiledWriter(catalog))
    (uid,) = RE(count(list(cameras), num=5))
    _replays_every_frame(catalog[uid], cameras, 5)
    (uid,) = RE(scan(list(cameras), motor, -1, 1, 7))
    run = catalog[uid]
    _replays_every_frame(run, cameras, 7)
    totals = run["primary"]["left_stats_total"].read()
    assert totals.shape == (7,) and np.all(totals > 0)
    writers = {cam._writer.pid for cam in cameras}
    assert len(writers) == 2, "one writer process per camera"


def test_a_movie_of_two_cameras_records_every_frame_of_each_with_one_clock(cameras, catalog):
    """At different frame rates each camera takes its own number of frames: each is a stream
    of its own, holding every frame of its file."""
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(TiledWriter(catalog))
    for cam, period in zip(cameras, (0.004, 0.007), strict=True):
        cam.acquire_period.set(period)
    (uid,) = RE(movie(*cameras, seconds=0.7))
    run = catalog[uid]
    assert run.metadata["start"]["detectors"] == ["left", "right"]
    assert sorted(run) == ["primary_left", "primary_right"]
    for cam, period in zip(cameras, (0.004, 0.007), strict=True):
        with h5py.File(cam.file_path.get(), "r") as f:
            n = f[layout.DATA].shape[0]
            # Each camera ran at its own rate (its clock says so, however fast it was read).
            assert np.diff(f[layout.TIMESTAMP][()]) == pytest.approx(period)
        data = run[f"primary_{cam.name}"].read()
        expected = expected_frames(cam.driver, n)
        np.testing.assert_array_equal(data[f"{cam.name}_image"].values, expected)
        assert data[f"{cam.name}_frame_number"].values.tolist() == list(range(n))
        host = data[f"{cam.name}_host_time"].values
        assert np.all(np.diff(host) > 0)
        assert run.metadata["start"]["time"] <= host[0] <= host[-1] <= run.metadata["stop"]["time"]
    # Both cameras ran at once: their clocks, on the computer's, overlap.
    left = run["primary_left"]["left_host_time"].read()
    right = run["primary_right"]["right_host_time"].read()
    assert max(left[0], right[0]) < min(left[-1], right[-1])
    assert all(cam.trigger_mode.get() == "software" for cam in cameras)  # given back


def test_runs_and_show_count_the_losses_of_every_camera(tmp_path, capsys):
    """The second camera of a movie drops frames (a full ring): `runs` adds its losses to
    the first's, and `show` gives its counts beside the first camera's image."""
    left = SCMOSCamera(
        name="left",
        driver=SimulatedSCMOS(shape=(48, 64), seed=1, camera_buffer_frames=1000),
        write_dir=tmp_path / "data",
        ring_mb=4,
    )
    # 10,000 frames/s of 512x512 into 2 slots, a camera that never misses one: it drops
    right = SCMOSCamera(
        name="right",
        driver=SimulatedSCMOS(shape=(512, 512), seed=2, camera_buffer_frames=100_000),
        write_dir=tmp_path / "data",
        ring_frames=2,
        overflow="drop",
    )
    left.exposure_time.set(0.001)
    right.exposure_time.set(1e-4)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(TiledWriter(open_catalog(tmp_path / "catalog")))
    try:
        with pytest.warns(RuntimeWarning, match="right: 0 frame.* and [1-9][0-9]* dropped"):
            (uid,) = RE(movie(left, right, frames=300))
        files = [cam.file_path.get() for cam in (left, right)]
        lost = [cam.frames_dropped.get() + cam.frames_missed.get() for cam in (left, right)]
        written = right.frames_written.get()
    finally:
        left.destroy()
        right.destroy()
    catalog = ["--catalog", str(tmp_path / "catalog"), "--json"]
    assert main(["runs", *catalog]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["files"] == files and row["lost"] == sum(lost) > 0
    assert main(["show", uid, "--no-png", *catalog]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["file"] == files[0]
    (other,) = report["other_cameras"]
    assert other["camera"] == "right" and other["file"] == files[1]
    assert (other["frames_written"], other["frames_dropped"]) == (written, lost[1])
    # the other camera's image in full: named as `show` names it, stream/key
    assert main(["show", uid, "--no-png", "--key", "primary_right/right_image", *catalog]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["file"], report["frames_dropped"]) == (files[1], lost[1])


def test_a_movie_refuses_two_cameras_of_one_name(tmp_path):
    a = SCMOSCamera(name="cam", driver=SimulatedSCMOS(shape=(8, 8)), write_dir=tmp_path)
    b = SCMOSCamera(name="cam", driver=SimulatedSCMOS(shape=(8, 8)), write_dir=tmp_path)
    try:
        with pytest.raises(ValueError, match="distinct names"):
            list(movie(a, b, frames=3))
    finally:
        a.destroy()
        b.destroy()


def test_a_driver_drives_one_run_at_a_time(tmp_path):
    """Two cameras on one driver object staged together failed once the second started the
    driver, after the first had begun its run, in the first's words."""
    driver = SimulatedSCMOS(shape=(64, 64), seed=1)
    a = SCMOSCamera(name="a", driver=driver, write_dir=tmp_path / "a")
    b = SCMOSCamera(name="b", driver=driver, write_dir=tmp_path / "b")
    RE = RunEngine({})
    try:
        with pytest.raises(RuntimeError, match="b's driver drives a, staged with a run"):
            RE(count([a, b], num=2))
        assert not (tmp_path / "b").exists()  # refused before its file
        RE(count([a], num=2))  # one after the other, each its own run
        RE(count([b], num=2))
        with h5py.File(b.file_path.get(), "r") as f:
            assert f[layout.DATA].shape[0] == 2
    finally:
        a.destroy()
        b.destroy()
