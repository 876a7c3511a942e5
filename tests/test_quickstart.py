"""The README's quick start, run as a user runs it: a plain script, then replay elsewhere."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

from ophyd_scmos import SimulatedSCMOS
from ophyd_scmos.drivers import ROI, CameraSettings
from tests.conftest import expected_frames

SCRIPT = """
from bluesky import RunEngine
from bluesky.plans import count
from ophyd_scmos import CatalogWriter, SCMOSCamera, SimulatedSCMOS, open_catalog

cam = SCMOSCamera(name="cam", driver=SimulatedSCMOS(shape=(512, 512), seed=5),
                  write_dir={data!r})
cam.exposure_time.set(0.001)
cam.roi.set((64, 32, 128, 96))
RE = RunEngine({{}})
RE.subscribe(CatalogWriter(open_catalog({catalog!r})))
(uid,) = RE(count([cam], num={num}))
print("UID", uid)
"""

REPLAY = """
import sys
import numpy as np
from ophyd_scmos import open_catalog
frames = open_catalog(sys.argv[1])[sys.argv[2]]["primary"]["cam_image"].read()
np.save(sys.argv[3], frames)
"""


def test_a_guardless_script_records_a_run_that_a_new_process_replays(tmp_path):
    script = tmp_path / "quickstart.py"  # no `if __name__ == "__main__":` on purpose
    num = 300
    script.write_text(
        SCRIPT.format(data=str(tmp_path / "data"), catalog=str(tmp_path / "catalog"), num=num)
    )
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (uid,) = [line.split()[1] for line in run.stdout.splitlines() if line.startswith("UID")]

    out = tmp_path / "frames.npy"
    replay = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(REPLAY), str(tmp_path / "catalog"), uid, str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replay.returncode == 0, replay.stderr[-3000:]
    frames = np.load(out)

    camera = SimulatedSCMOS(shape=(512, 512), seed=5)
    camera.open()
    camera.configure(CameraSettings(exposure_time=0.001, roi=ROI(64, 32, 128, 96)))
    assert frames.shape == (num, 1, 96, 128)
    np.testing.assert_array_equal(frames[:, 0], expected_frames(camera, num))
