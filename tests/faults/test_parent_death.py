"""The acquiring process is SIGKILLed: the writer saves what it was given and goes away."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

from ophyd_scmos import SimulatedSCMOS
from ophyd_scmos.drivers import ROI, CameraSettings
from ophyd_scmos.pipeline import layout

SCRIPT = """
import sys, time
from bluesky import RunEngine
from bluesky.plans import count
from ophyd_scmos import SCMOSCamera, SimulatedSCMOS

cam = SCMOSCamera(name="cam", driver=SimulatedSCMOS(shape=(128, 128), seed=2),
                  write_dir=sys.argv[1], ring_mb=2)
cam.roi.set((0, 0, 64, 64))
cam.exposure_time.set(0.001)

def report(name, doc):
    if name == "event" and doc["seq_num"] == 100:
        s = cam._run.stream
        print(s.path, s.ring.spec.name, s.writer.pid, flush=True)

RE = RunEngine({})
RE.subscribe(report)
RE(count([cam], num=10**6))
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purposes
        return f.read().split()[2] != "Z"


def test_writer_outlives_a_killed_parent_closes_the_file_and_leaks_nothing(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    path, ring, writer_pid = parent.stdout.readline().split()
    writer_pid = int(writer_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    parent.stdout.close()

    deadline = time.monotonic() + 30
    while (_alive(writer_pid) or os.path.exists(f"/dev/shm/{ring}")) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert not _alive(writer_pid), "the writer outlived its parent"
    assert not os.path.exists(f"/dev/shm/{ring}"), "the ring leaked in /dev/shm"

    camera = SimulatedSCMOS(shape=(128, 128), seed=2)
    camera.open()
    camera.configure(CameraSettings(exposure_time=0.001, roi=ROI(0, 0, 64, 64)))
    with h5py.File(path, "r") as f:  # closed by the writer itself: a plain open works
        data = f[layout.DATA]
        assert data.shape[0] >= 100
        for k in (0, 50, data.shape[0] - 1):
            np.testing.assert_array_equal(data[k], camera.expected_frame(k))
        assert not f["/entry"].attrs["complete"]
        assert f["/entry"].attrs["frames_written"] == data.shape[0]
