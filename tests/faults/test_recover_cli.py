"""Everything died at once (the machine, say): no stream was left to recover its file, so
`ophyd-scmos recover` does, and refuses while a process still has the file open. With
--catalog it also closes the run whose acquiring process died."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from multiprocessing import shared_memory

import h5py
import numpy as np
import pytest

from ophyd_scmos.catalog import open_catalog
from ophyd_scmos.catalog.summary import IMAGE_RUN
from ophyd_scmos.cli import main
from ophyd_scmos.drivers import ROI, CameraSettings, SimulatedSCMOS
from ophyd_scmos.pipeline import layout, stats
from tests.conftest import expected_frames

ACQUIRE = """
import sys, time
from ophyd_scmos.drivers import CameraSettings, SimulatedSCMOS
from ophyd_scmos.pipeline import FrameStream, PipelineOptions

cam = SimulatedSCMOS(shape=(32, 48), seed=9)
cam.open()
cam.configure(CameraSettings(exposure_time=0.001))
stream = FrameStream(cam, sys.argv[1], PipelineOptions(flush_interval=0.1))
stream.open()
cam.software_trigger(20)
stream.wait(20, timeout=30)
while stream.frames_written < 20:  # flushed: what a crash leaves in the file
    time.sleep(0.01)
print(stream.writer.pid, stream.ring.spec.name, flush=True)
time.sleep(60)
"""


def test_recover_opens_a_file_no_one_closed_and_refuses_one_still_open(tmp_path, capsys):
    path = tmp_path / "run.h5"
    acquiring = subprocess.Popen(
        [sys.executable, "-c", ACQUIRE, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the writer and all die at once
    )
    try:
        pid, ring = acquiring.stdout.readline().split()
        assert main(["recover", str(path)]) == 1
        assert f"open in process {pid}" in capsys.readouterr().err
    finally:
        os.killpg(acquiring.pid, signal.SIGKILL)  # no process left to close or recover it
        acquiring.wait()
        acquiring.stdout.close()
    while os.path.exists(f"/proc/{pid}") and _state(int(pid)) != "Z":
        time.sleep(0.01)
    with contextlib.suppress(FileNotFoundError):  # its resource tracker died with it
        shared_memory.SharedMemory(name=ring).unlink()
    with pytest.raises(OSError):
        h5py.File(path, "r")  # marked open for writing: plain readers refuse it

    assert main(["recover", str(path)]) == 0
    assert f"{path}: cleared the open-for-writing mark; 20 frames" in capsys.readouterr().out
    cam = SimulatedSCMOS(shape=(32, 48), seed=9)
    cam.open()
    cam.configure(CameraSettings(exposure_time=0.001))
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(cam, 20))
    assert main(["recover", str(path)]) == 0
    assert "was not marked open" in capsys.readouterr().out


def _frames_while_written(path: str) -> int:
    """The frames a reader sees in the file its writer still writes (SWMR)."""
    with h5py.File(path, "r", swmr=True) as f:
        return len(f[layout.DATA])


def _closed(path: str) -> bool:
    """Whether the writer has closed `path`: until then plain readers are refused."""
    try:
        h5py.File(path, "r").close()
    except OSError:
        return False
    return True


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1]
    except OSError:
        return "Z"


ACQUIRE_INTO_CATALOG = """
import sys
from bluesky import RunEngine
from bluesky import plan_stubs as bps, preprocessors as bpp
from bluesky.plans import count
from bluesky_tiled_plugins import TiledWriter
from ophyd_scmos import SCMOSCamera, SimulatedSCMOS, open_catalog
from ophyd_scmos.plans import movie

plan, catalog_dir, write_dir, names, frames_per_point, images = sys.argv[1:]
cams = []
for name in names.split(","):
    cam = SCMOSCamera(
        name=name, driver=SimulatedSCMOS(shape=(256, 320), seed=5), write_dir=write_dir, ring_mb=4
    )
    cam.roi.set((32, 16, 96, 64))
    cam.exposure_time.set(0.001)
    cam.frames_per_point.set(int(frames_per_point))
    cam.save_images.set(images == "yes")
    cams.append(cam)
RE = RunEngine({}, call_returns_result=False)
RE.subscribe(TiledWriter(open_catalog(catalog_dir)))
pages = []

def report(name, doc):
    if name == "start":  # the cameras are staged: their files are made, their writers run
        print(doc["uid"], *(cam.file_path.get() for cam in cams), flush=True)
        print(*(cam._writer.pid for cam in cams), flush=True)
    if name in ("event", "stream_datum"):
        pages.append(name)
        if len(pages) == 30:  # well under way: 30 events, or 30 pages of a movie
            print("under way", flush=True)

RE.subscribe(report)
if plan == "count":
    RE(count(cams, num=100_000))
elif plan == "idle":  # a run waiting before its first point (a slow motor's move)
    md = {"detectors": [cam.name for cam in cams]}
    RE(bpp.stage_wrapper(bpp.run_wrapper(bps.sleep(600), md=md), cams))
else:
    RE(movie(*cams, frames=10_000_000, page_every=0.05))
"""


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory):
    """One catalog for the runs of this module: its server starts once (many seconds), and
    the client held here keeps it up between the acquiring processes."""
    path = tmp_path_factory.mktemp("catalog")
    catalog = open_catalog(path)
    yield path
    catalog.context.close()


def _kill_acquisition(
    catalog_dir,
    write_dir,
    plan="count",
    cameras=("cam",),
    frames_per_point=1,
    until="under way",
    save_images=True,
    with_writers=False,
):
    """Acquire `plan` into the catalog in a process of its own and kill it (SIGKILL) once it
    is well under way, once every file holds a frame (`until="a frame"`), or just after its
    start (`until="start"`), then wait for the cameras' writers to close their files and end
    (a writer reopens its closed file to record the outcome, and recover refuses a file
    still open); `with_writers`: kill them too (a power cut: the files record no run and
    stay marked open). Returns the run's uid and the files."""
    acquiring = subprocess.Popen(
        [
            sys.executable,
            "-c",
            ACQUIRE_INTO_CATALOG,
            plan,
            str(catalog_dir),
            str(write_dir),
            ",".join(cameras),
            str(frames_per_point),
            "yes" if save_images else "no",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=with_writers,
    )
    try:
        uid, *paths = acquiring.stdout.readline().split()
        writers = [int(pid) for pid in acquiring.stdout.readline().split()]
        if until == "under way":
            assert acquiring.stdout.readline() == "under way\n", "the run did not get under way"
        elif until == "a frame":
            for path in paths:
                while _frames_while_written(path) == 0:
                    assert acquiring.poll() is None, "the acquisition ended"
                    time.sleep(0.05)
    finally:
        if with_writers:
            os.killpg(acquiring.pid, signal.SIGKILL)
        else:
            acquiring.kill()  # the RunEngine's process only: its writers close the files
        acquiring.wait()
        acquiring.stdout.close()
    deadline = time.monotonic() + 60
    for pid in writers:
        while _state(pid) != "Z":
            assert time.monotonic() < deadline, "the writer did not end"
            time.sleep(0.05)
    if not with_writers:
        assert all(_closed(path) for path in paths), "a writer ended without closing its file"
    return uid, paths


def test_recover_with_nothing_to_recover_says_what_it_takes(capsys):
    assert main(["recover"]) == 2
    assert "name the HDF5 files to recover (or give --catalog alone" in capsys.readouterr().err


def test_recover_says_of_a_file_it_did_not_write_what_it_is(tmp_path, capsys):
    """An HDF5 file of another program: one written with h5py's defaults (an older
    superblock) is named as not ours, not as "not an HDF5 file"; one of the same format
    without our groups is named with h5py's words, which name no file."""
    empty = tmp_path / "empty.h5"  # a camera's file name, reserved as its run starts
    empty.touch()
    assert main(["recover", str(empty)]) == 1
    assert f"{empty} is empty: a run starting" in capsys.readouterr().err
    older, foreign = tmp_path / "older.h5", tmp_path / "foreign.h5"
    with h5py.File(older, "w") as f:
        f["x"] = [1, 2, 3]
    with h5py.File(foreign, "w", libver="latest") as f:
        f["x"] = [1, 2, 3]
    assert main(["recover", str(older), str(foreign)]) == 1
    first, second = capsys.readouterr().err.splitlines()
    assert first.startswith(f"ophyd-scmos recover: {older}: not a file ophyd-scmos wrote")
    assert second.startswith(f"ophyd-scmos recover: {foreign}: ") and "entry" in second


@pytest.mark.parametrize("plan", ["count", "movie"])
def test_recover_closes_the_run_of_a_killed_acquisition_from_its_file(
    plan, catalog_dir, tmp_path, capsys, monkeypatch
):
    """The RunEngine's process is killed mid-run: its TiledWriter never wrote the images or
    the stop. Recovering the file with --catalog makes the run replay every frame it holds,
    as a Resource and Datums (count) or a StreamResource and StreamDatum (movie) would."""
    uid, (path,) = _kill_acquisition(catalog_dir, tmp_path, plan)
    run = open_catalog(catalog_dir)[uid]
    assert "stop" not in run.metadata and "cam_image" not in run["primary"]

    assert main(["recover", "--catalog", str(catalog_dir), path]) == 0
    assert f"closed run {uid}" in capsys.readouterr().out
    with h5py.File(path, "r") as f:
        numbers = f[layout.FRAME_NUMBER][: layout.stored_frames(f)]
    assert len(numbers) >= 30
    run = open_catalog(catalog_dir)[uid]
    assert run["primary"]["cam_image"].metadata[IMAGE_RUN] == uid  # its file is checked by it
    images = run["primary"]["cam_image"].read()
    driver = SimulatedSCMOS(shape=(256, 320), seed=5)
    driver.open()
    driver.configure(CameraSettings(exposure_time=0.001, roi=ROI(32, 16, 96, 64)))
    expected = np.stack([driver.expected_frame(int(n)) for n in numbers])
    if plan == "count":  # (events, frames per event, H, W)
        expected = expected[:, None]
    assert images.shape == expected.shape
    np.testing.assert_array_equal(images, expected)
    stop = run.metadata["stop"]
    assert stop["exit_status"] == "fail"
    assert "ophyd-scmos recover" in stop["reason"] and path in stop["reason"]
    # a plain TiledWriter kept the count's events in memory: they died with the process
    assert stop["num_events"] == {"primary": 0 if plan == "count" else len(numbers)}

    # Recovered already: a second recovery says so and changes nothing. (`--catalog FILE`:
    # the catalog from the environment, FILE the file to recover.)
    monkeypatch.setenv("OPHYD_SCMOS_CATALOG", str(catalog_dir))
    assert main(["recover", "--catalog", path]) == 0
    assert f"{path}: already registered in run {uid}" in capsys.readouterr().out
    assert open_catalog(catalog_dir)[uid].metadata["stop"] == stop


def test_recover_takes_a_moved_file_that_records_no_run_into_the_run_named(
    catalog_dir, tmp_path, capsys
):
    """Killed with its writer, the file records no run; moved since, it is not where the
    run's descriptor names it, so no run fits it: `--run UID` names the run, and the file
    of that name, gone from where the descriptor says, is taken."""
    uid, (path,) = _kill_acquisition(catalog_dir, tmp_path / "data", with_writers=True)
    moved = tmp_path / "moved" / os.path.basename(path)
    moved.parent.mkdir()
    os.rename(path, moved)
    assert main(["recover", "--catalog", str(catalog_dir), str(moved)]) == 1
    assert "no unfinished run in the catalog names" in capsys.readouterr().err
    assert main(["recover", "--catalog", str(catalog_dir), "--run", uid, str(moved)]) == 0
    assert f"closed run {uid}" in capsys.readouterr().out
    with h5py.File(moved, "r") as f:
        stored = layout.stored_frames(f)
    assert open_catalog(catalog_dir)[uid]["primary"]["cam_image"].shape[0] == stored > 0


def test_recover_closes_the_run_of_a_camera_that_saved_no_images(catalog_dir, tmp_path, capsys):
    """Statistics only (`save_images=False`): the descriptor names the file, which holds no
    image to register; the run is closed all the same, and the file's statistics said to be
    there."""
    uid, (path,) = _kill_acquisition(catalog_dir, tmp_path, save_images=False)
    assert main(["recover", "--catalog", str(catalog_dir), path]) == 0
    out = capsys.readouterr().out
    assert f"{path}: closed run {uid}: the camera saved no images" in out
    run = open_catalog(catalog_dir)[uid]
    assert run.metadata["stop"]["exit_status"] == "fail" and "cam_image" not in run["primary"]
    with h5py.File(path, "r") as f:
        assert layout.DATA not in f and f[layout.FRAME_NUMBER].shape[0] >= 30
    assert main(["recover", "--catalog", str(catalog_dir), path]) == 0
    assert f"{path}: already registered in run {uid}" in capsys.readouterr().out


@pytest.mark.parametrize("together", [True, False], ids=["together", "one_by_one"])
def test_recover_registers_the_file_of_every_camera_of_a_run(
    together, catalog_dir, tmp_path, capsys
):
    """A run of two cameras, killed mid-run: each camera's file becomes its image, whether
    the files are recovered in one call or one by one (the first closes the run, saying it
    still takes the other camera's file; the second finds it by the stop a recovery wrote).
    The run gets one stop, naming both files. Meanwhile `sync` does not copy the run, whose
    other image is what the catalog had: a copy would keep it so."""
    uid, paths = _kill_acquisition(catalog_dir, tmp_path, cameras=("cam0", "cam1"))
    sync = ["sync", "--from", str(catalog_dir), "--to", str(tmp_path / "target"), uid]
    open_catalog(tmp_path / "target")

    if together:
        assert main(["recover", "--catalog", str(catalog_dir), *paths]) == 0
        out = capsys.readouterr().out
        assert out.count(f"closed run {uid}") == 2 and "still takes" not in out
    else:
        assert main(["recover", "--catalog", str(catalog_dir), paths[0]]) == 0
        out = capsys.readouterr().out
        assert f"closed run {uid}" in out and f"run {uid} still takes the files of cam1" in out
        first_stop = open_catalog(catalog_dir)[uid].metadata["stop"]
        assert main(sync) == 1
        out = capsys.readouterr().out
        assert f"partial  {uid}" in out and "without the files of cam1" in out
        assert uid not in open_catalog(tmp_path / "target")
        assert main(["recover", "--catalog", str(catalog_dir), paths[1]]) == 0
        out = capsys.readouterr().out
        assert f"added to run {uid}: primary/cam1_image" in out and "still takes" not in out
    assert main(sync) == 0
    assert capsys.readouterr().out.startswith(f"copied   {uid}")
    run = open_catalog(catalog_dir)[uid]
    copied = open_catalog(tmp_path / "target")[uid]
    for name, path in zip(("cam0", "cam1"), paths, strict=True):
        with h5py.File(path, "r") as f:
            frames = f[layout.DATA][: layout.stored_frames(f)]
        assert len(frames) >= 30
        np.testing.assert_array_equal(run["primary"][f"{name}_image"].read()[:, 0], frames)
        np.testing.assert_array_equal(copied["primary"][f"{name}_image"].read()[:, 0], frames)
    stop = run.metadata["stop"]
    assert stop["exit_status"] == "fail"
    assert all(path in stop["reason"] for path in paths)
    if not together:  # the same stop, naming the second file too
        assert stop["uid"] == first_stop["uid"]


def test_recover_registers_each_camera_of_a_movie_in_its_stream(catalog_dir, tmp_path, capsys):
    """A movie of two cameras has a stream per camera: recovering both files puts each
    camera's every frame in its own stream, and its columns beside them, a row per frame
    (numbers, times, statistics: none of which the catalog had), so each stream reads
    whole."""
    uid, paths = _kill_acquisition(catalog_dir, tmp_path, "movie", cameras=("cam0", "cam1"))
    assert main(["recover", "--catalog", str(catalog_dir), *paths]) == 0
    out = capsys.readouterr().out
    run = open_catalog(catalog_dir)[uid]
    for name, path in zip(("cam0", "cam1"), paths, strict=True):
        assert f"{path}: closed run {uid}: primary_{name}/{name}_image" in out
        stream = run[f"primary_{name}"]
        with h5py.File(path, "r") as f:
            n = layout.stored_frames(f)
            frames = f[layout.DATA][:n]
            columns = {
                f"{name}_frame_number": f[layout.FRAME_NUMBER][:n],
                f"{name}_host_time": f[layout.HOST_TIMESTAMP][:n],
                f"{name}_stats_total": f[layout.stats_path(stats.FRAME, "total")][:n],
            }
        assert len(frames) >= 30
        np.testing.assert_array_equal(stream[f"{name}_image"].read(), frames)
        for key, values in columns.items():
            np.testing.assert_array_equal(stream[key].read(), values)
        assert len(stream.read()[f"{name}_frame_time"]) == len(frames)


def test_recover_closes_each_run_killed_during_its_first_point(catalog_dir, tmp_path, capsys):
    """Two runs of the same camera killed during their first point (16,384 frames), a few
    seconds apart: neither has a descriptor yet, but each file records its run (told with
    the first point), so recover closes each with no images and no guessing, whichever file
    comes first; the files' frames are in no event. (A camera name of its own: the other
    runs of the catalog are no candidates.)"""
    killed = [
        _kill_acquisition(
            catalog_dir, tmp_path, cameras=("pair",), frames_per_point=16_384, until="a frame"
        )
        for _ in range(2)
    ]
    for uid, (path,) in killed:
        with h5py.File(path, "r") as f:
            assert layout.Outcome.read(f).run == uid
        assert "stop" not in open_catalog(catalog_dir)[uid].metadata

    for uid, (path,) in reversed(killed):
        assert main(["recover", "--catalog", str(catalog_dir), path]) == 0
        assert f"{path}: closed run {uid}, which ended before its first event" in (
            capsys.readouterr().out
        )
    for uid, (path,) in killed:
        run = open_catalog(catalog_dir)[uid]
        assert list(run) == []
        stop = run.metadata["stop"]
        assert stop["exit_status"] == "fail" and path in stop["reason"]


def test_recover_refuses_a_file_two_runs_before_their_first_point_could_own(
    catalog_dir, tmp_path, capsys
):
    """Two runs of the same camera killed before their first point (waiting, as for a slow
    motor), a few seconds apart: the files record no run, and either run could be the second
    file's, so recover names both and closes neither; told the run (--run), it closes it.
    The first file's run is then the only one left. (A camera name of its own.)"""
    first, (first_path,) = _kill_acquisition(
        catalog_dir, tmp_path, "idle", cameras=("twin",), until="start"
    )
    second, (second_path,) = _kill_acquisition(
        catalog_dir, tmp_path, "idle", cameras=("twin",), until="start"
    )
    with h5py.File(second_path, "r") as f:
        assert layout.Outcome.read(f).run is None

    assert main(["recover", "--catalog", str(catalog_dir), second_path]) == 1
    err = capsys.readouterr().err
    assert first in err and second in err and "--run" in err
    catalog = open_catalog(catalog_dir)
    assert "stop" not in catalog[first].metadata and "stop" not in catalog[second].metadata

    assert main(["recover", "--catalog", str(catalog_dir), "--run", second, second_path]) == 0
    assert main(["recover", "--catalog", str(catalog_dir), first_path]) == 0
    catalog = open_catalog(catalog_dir)
    assert second_path in catalog[second].metadata["stop"]["reason"]
    assert first_path in catalog[first].metadata["stop"]["reason"]
    assert first_path not in catalog[second].metadata["stop"]["reason"]
