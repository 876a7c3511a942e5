"""The live view's temporary directory (the camera's announcement, the server's log) goes
with the view however the camera's process ends: at a normal exit without ``cam.destroy()``,
and, removed by the view's server, when the process is killed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """
import os, signal
from ophyd_scmos import SCMOSCamera, SimulatedSCMOS
cam = SCMOSCamera(name="cam", driver=SimulatedSCMOS(shape=(64, 64)), write_dir={write_dir!r})
cam.live()
print("VIEW", cam._live.view.dir, cam._live.view.process.pid, flush=True)
{end}
"""


def run_camera(tmp_path: Path, end: str) -> tuple[subprocess.CompletedProcess[str], Path, int]:
    """A script that turns the live view on, then ends with `end`; its view's directory and
    server's process id."""
    code = SCRIPT.format(write_dir=str(tmp_path), end=end)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    line = next(line for line in done.stdout.splitlines() if line.startswith("VIEW "))
    _, directory, pid = line.split()
    return done, Path(directory), int(pid)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_script_that_ends_without_destroy_leaves_no_view_behind(tmp_path):
    done, directory, server = run_camera(tmp_path, end="")
    assert done.returncode == 0, done.stderr[-3000:]
    # At once: the script's exit ended the server and removed the directory.
    assert not directory.exists(), sorted(p.name for p in directory.iterdir())
    assert gone(server)


def test_a_killed_cameras_view_directory_goes_with_its_server(tmp_path):
    done, directory, server = run_camera(tmp_path, end="os.kill(os.getpid(), signal.SIGKILL)")
    assert done.returncode == -9
    deadline = time.monotonic() + 20
    while not gone(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(server), "the view outlived its camera's process by 20 s"
    assert not directory.exists(), sorted(p.name for p in directory.iterdir())
