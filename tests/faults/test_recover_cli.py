"""Everything died at once (the machine, say): no stream was left to recover its file, so
`ophyd-scmos recover` does, and refuses while a process still has the file open."""

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

from ophyd_scmos.cli import main
from ophyd_scmos.drivers import CameraSettings, SimulatedSCMOS
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


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1]
    except OSError:
        return "Z"
