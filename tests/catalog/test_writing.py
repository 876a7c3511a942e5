"""`CatalogWriter`: a run's events and images reach the catalog while it runs, so another
process sees them, and they outlive an acquiring process killed mid-run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import count

from ophyd_scmos import CatalogWriter, SCMOSCamera, SimulatedSCMOS, open_catalog
from ophyd_scmos.cli import main
from ophyd_scmos.drivers import ROI, CameraSettings
from ophyd_scmos.pipeline import layout

ROI_XYWH = (32, 16, 96, 64)

#: five points of a motor scan, then a sixth frame taken (never read: the file holds one more
#: frame than the catalog names) and a step that lasts: no document comes meanwhile
SCAN_THEN_WAIT = """
import sys
import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky import RunEngine
from ophyd.sim import det, motor
from ophyd_scmos import CatalogWriter, SCMOSCamera, SimulatedSCMOS, open_catalog

catalog_dir, write_dir = sys.argv[1:]
cam = SCMOSCamera(name="cam", driver=SimulatedSCMOS(shape=(256, 320), seed=5),
                  write_dir=write_dir, ring_mb=4)
cam.roi.set((32, 16, 96, 64))
cam.exposure_time.set(0.001)
RE = RunEngine({}, call_returns_result=False)
RE.subscribe(CatalogWriter(open_catalog(catalog_dir), interval=0.2))

@bpp.stage_decorator([cam])
@bpp.run_decorator()
def plan():
    for position in range(5):
        yield from bps.mv(motor, position)
        yield from bps.trigger_and_read([cam, det, motor])
    yield from bps.trigger(cam, wait=True)
    print(cam.file_path.get(), cam._writer.pid, flush=True)
    yield from bps.sleep(600)

RE(plan())
"""


def _expected(n: int) -> np.ndarray:
    driver = SimulatedSCMOS(shape=(256, 320), seed=5)
    driver.open()
    driver.configure(CameraSettings(exposure_time=0.001, roi=ROI(*ROI_XYWH)))
    return np.stack([driver.expected_frame(k) for k in range(n)])


def _wait_for_rows(catalog_dir, rows: int, timeout: float = 30):
    """The latest run of the catalog once its primary stream holds `rows` events."""
    deadline = time.monotonic() + timeout
    while True:
        run = open_catalog(catalog_dir).values().last()
        stream = run.get("primary", {})
        if "motor" in stream and len(stream["motor"].read()) >= rows:
            return run
        assert time.monotonic() < deadline, f"the catalog did not show {rows} events"
        time.sleep(0.1)


def test_a_running_run_is_in_the_catalog_and_outlives_its_killed_process(tmp_path, capsys):
    """Another process sees the scan's events and images while the scan is in a long step
    (written by the timer: no document comes), only the frames of those events although the
    file holds more; the acquiring process is then killed, and the events stay. `recover`
    closes the run over the images already there, with every frame of the file."""
    catalog_dir, write_dir = tmp_path / "catalog", tmp_path / "data"
    acquiring = subprocess.Popen(
        [sys.executable, "-c", SCAN_THEN_WAIT, str(catalog_dir), str(write_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        path, writer = acquiring.stdout.readline().split()
        run = _wait_for_rows(catalog_dir, 5)
        assert "stop" not in run.metadata  # still running
        np.testing.assert_array_equal(run["primary"]["motor"].read(), np.arange(5))
        images = run["primary"]["cam_image"].read()
        np.testing.assert_array_equal(images, _expected(5)[:, None])
    finally:
        acquiring.send_signal(signal.SIGKILL)
        acquiring.wait()
        acquiring.stdout.close()
    deadline = time.monotonic() + 60
    while subprocess.run(["kill", "-0", writer], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the writer did not end"
        time.sleep(0.05)

    run = open_catalog(catalog_dir).values().last()
    np.testing.assert_array_equal(run["primary"]["motor"].read(), np.arange(5))
    np.testing.assert_array_equal(run["primary"]["det"].read().shape, (5,))
    assert main(["recover", "--catalog", str(catalog_dir), path]) == 0
    assert "closed run" in capsys.readouterr().out
    run = open_catalog(catalog_dir).values().last()
    assert run.metadata["stop"]["exit_status"] == "fail"
    with h5py.File(path, "r") as f:
        stored = layout.stored_frames(f)
    assert stored == 6
    np.testing.assert_array_equal(run["primary"]["cam_image"].read(), _expected(stored)[:, None])
    np.testing.assert_array_equal(run["primary"]["motor"].read(), np.arange(5))


@pytest.mark.parametrize("interval", [1e-6, 1e3], ids=["every_event", "at_the_end"])
def test_a_run_written_in_pieces_reads_as_one(interval, tmp_path):
    """Written an event at a time, or all at the end (as TiledWriter does), the run reads
    back the same: every event, and every frame of the file under its image."""
    catalog = open_catalog(tmp_path / "catalog")
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(CatalogWriter(catalog, interval=interval))
    driver = SimulatedSCMOS(shape=(256, 320), seed=5)
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path / "data", ring_mb=4)
    try:
        cam.roi.set(ROI_XYWH)
        cam.exposure_time.set(0.001)
        (uid,) = RE(count([cam], num=12))
    finally:
        cam.destroy()
    run = catalog[uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    np.testing.assert_array_equal(run["primary"]["cam_frame_number"].read(), np.arange(12))
    np.testing.assert_array_equal(run["primary"]["cam_image"].read(), _expected(12)[:, None])


def test_an_interval_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="interval must be > 0"):
        CatalogWriter(open_catalog(tmp_path / "catalog"), interval=0)
