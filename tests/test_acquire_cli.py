"""`ophyd-scmos acquire`, run as a command: what it prints, its exit code, and the file."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest

from ophyd_scmos import SimulatedSCMOS
from ophyd_scmos.cli import main
from ophyd_scmos.drivers import ROI, CameraSettings
from ophyd_scmos.pipeline import layout
from tests.conftest import expected_frames
from tests.lab_env import BIN, EXAMPLE_CONFIG, data_dir, run, shared_home, user_env

ACQUIRE = str(BIN / "ophyd-scmos"), "acquire"

FAST_CAMERA = """
[pipeline]
compression = "none"
ring_mb = 16
[cameras.fast]
options = { shape = [256, 320], seed = 3 }
exposure_time = 0.001
acquire_period = 0.002
roi = [32, 16, 96, 64]
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return shared_home(tmp_path_factory)


def test_acquire_count_prints_uid_and_file_and_the_file_holds_every_frame(home):
    done = run([*ACQUIRE, "--config", str(EXAMPLE_CONFIG), "--num", "20"], home)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(maxsplit=1) for line in done.stdout.splitlines())
    assert set(lines) == {"uid", "file", "frames", "catalog"}
    assert len(lines["uid"]) == 36
    assert lines["frames"] == "20 written, 0 dropped, 0 missed"
    path = lines["file"]
    assert path.startswith(str(data_dir(home))) and path.endswith(".h5")
    with h5py.File(path, "r") as f:
        frames = f[layout.DATA][()]
        assert bool(f["/entry"].attrs["complete"])
    camera = SimulatedSCMOS(shape=(2048, 2048), seed=0)
    camera.open()
    camera.configure(CameraSettings(exposure_time=0.005, roi=ROI(768, 768, 512, 512)))
    np.testing.assert_array_equal(frames, expected_frames(camera, 20))


def test_acquire_movie_records_frames_at_full_rate_and_reports_json(home):
    config = home / "fast.toml"
    config.write_text(FAST_CAMERA)
    argv = [*ACQUIRE, "--config", str(config), "--frames", "300", "--exposure", "0.0015", "--json"]
    done = run(argv, home)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["plan"] == "movie"
    assert (result["frames_written"], result["frames_dropped"], result["frames_missed"]) == (
        300,
        0,
        0,
    )
    assert result["file"].split("/")[-1].startswith("fast_")
    with h5py.File(result["file"], "r") as f:
        assert f[layout.DATA].shape == (300, 64, 96)
        assert f["/entry"].attrs["exposure_time"] == 0.0015  # --exposure over the file's
        numbers = f[layout.FRAME_NUMBER][()]
    np.testing.assert_array_equal(np.diff(numbers), 1)  # the camera's numbers: no gap


def test_ctrl_c_ends_a_movie_early_keeping_its_frames_and_exits_130(home):
    config = home / "interrupted.toml"
    config.write_text(FAST_CAMERA.replace("[cameras.fast]", "[cameras.interrupted]"))
    argv = [*ACQUIRE, "--config", str(config), "--seconds", "60", "--json"]
    process = subprocess.Popen(
        argv, env=user_env(home), cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not list(data_dir(home).glob("interrupted_*.h5")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # recording
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-3000:]
    assert "interrupted; ending the run, keeping the frames taken" in err
    result = json.loads(out)
    assert result["frames_written"] > 0
    with h5py.File(result["file"], "r") as f:
        assert f[layout.DATA].shape[0] == result["frames_written"]
        assert bool(f["/entry"].attrs["complete"])


def test_acquire_with_a_wrong_config_or_camera_exits_2_saying_why(tmp_path, capsys):
    bad = tmp_path / "bad-overflow.toml"
    bad.write_text('[pipeline]\noverflow = "wait"\n')
    assert main(["acquire", "--config", str(bad), "--num", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"lab configuration {bad}: pipeline.overflow: 'wait' is not allowed" in err
    assert "block, drop" in err

    assert main(["acquire", "--config", str(EXAMPLE_CONFIG), "--camera", "side", "--num", "1"]) == 2
    assert "no camera named 'side'; configured: cam" in capsys.readouterr().err


def test_acquire_takes_exactly_one_positive_amount(capsys):
    for argv, message in (
        (["acquire", "--frames", "0"], "must be > 0"),
        (["acquire"], "one of the arguments --num --frames --seconds is required"),
        (["acquire", "--num", "5", "--seconds", "1"], "not allowed with argument"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
