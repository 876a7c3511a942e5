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
from ophyd_scmos.cli import main
from ophyd_scmos.drivers import ROI, CameraSettings, SimulatedSCMOS
from ophyd_scmos.pipeline import layout
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
from bluesky.plans import count
from bluesky_tiled_plugins import TiledWriter
from ophyd_scmos import SCMOSCamera, SimulatedSCMOS, open_catalog
from ophyd_scmos.plans import movie

plan, catalog_dir, write_dir = sys.argv[1:]
cam = SCMOSCamera(
    name="cam", driver=SimulatedSCMOS(shape=(256, 320), seed=5), write_dir=write_dir, ring_mb=4
)
cam.roi.set((32, 16, 96, 64))
cam.exposure_time.set(0.001)
RE = RunEngine({}, call_returns_result=False)
RE.subscribe(TiledWriter(open_catalog(catalog_dir)))
pages = []

def report(name, doc):
    if name == "start":
        print(doc["uid"], flush=True)
    if name in ("event", "stream_datum"):
        pages.append(name)
        if len(pages) == 30:  # well under way: 30 events, or 30 pages of a movie
            print(cam.file_path.get(), flush=True)

RE.subscribe(report)
if plan == "count":
    RE(count([cam], num=100_000))
else:
    RE(movie(cam, frames=10_000_000, page_every=0.05))
"""


@pytest.mark.parametrize("plan", ["count", "movie"])
def test_recover_closes_the_run_of_a_killed_acquisition_from_its_file(
    plan, tmp_path, capsys, monkeypatch
):
    """The RunEngine's process is killed mid-run: its TiledWriter never wrote the images or
    the stop. Recovering the file with --catalog makes the run replay every frame it holds,
    as a Resource and Datums (count) or a StreamResource and StreamDatum (movie) would."""
    catalog_dir = tmp_path / "catalog"
    acquiring = subprocess.Popen(
        [sys.executable, "-c", ACQUIRE_INTO_CATALOG, plan, str(catalog_dir), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        uid = acquiring.stdout.readline().strip()
        path = acquiring.stdout.readline().strip()
        assert uid and path, "the acquisition did not start"
    finally:
        acquiring.kill()  # the RunEngine's process only: its writer closes the file
        acquiring.wait()
        acquiring.stdout.close()
    deadline = time.monotonic() + 60
    while not _closed(path):
        assert time.monotonic() < deadline, "the writer did not close the file"
        time.sleep(0.05)
    run = open_catalog(catalog_dir)[uid]
    assert "stop" not in run.metadata and "cam_image" not in run["primary"]

    assert main(["recover", "--catalog", str(catalog_dir), path]) == 0
    assert f"closed run {uid}" in capsys.readouterr().out
    with h5py.File(path, "r") as f:
        numbers = f[layout.FRAME_NUMBER][: layout.stored_frames(f)]
    assert len(numbers) >= 30
    run = open_catalog(catalog_dir)[uid]
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

    # Closed now: a second recovery finds no unfinished run and says so. (`--catalog FILE`:
    # the catalog from the environment, FILE the file to recover.)
    monkeypatch.setenv("OPHYD_SCMOS_CATALOG", str(catalog_dir))
    assert main(["recover", "--catalog", path]) == 1
    assert "no unfinished run" in capsys.readouterr().err
