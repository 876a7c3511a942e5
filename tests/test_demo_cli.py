"""`ophyd-scmos demo` as a newcomer meets it: its options refused in one line before a frame,
Ctrl-C ending the run with what it took."""

from __future__ import annotations

import signal
import subprocess
import time

import h5py
import pytest

from ophyd_scmos.cli import main
from ophyd_scmos.pipeline import layout
from tests.lab_env import BIN, frames_recorded, user_env


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--num", "0"], "argument --num: must be > 0 and finite, got 0"),
        (["--roi", "-5"], "argument --roi: must be > 0 and finite, got -5"),
        (["--exposure", "0"], "argument --exposure: must be > 0 and finite, got 0"),
        (["--num", "ten"], "argument --num: invalid int value: 'ten'"),
        (["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    ],
)
def test_a_malformed_option_is_refused_by_the_command_line(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", *argv])
    assert exit_.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("command", [["live"], ["serve", "--postgres", "postgresql://x/y"]])
def test_a_port_out_of_range_is_refused_by_the_command_line(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--port", "70000"])
    assert exit_.value.code == 2
    assert "argument --port: must be a port, 0 to 65535, got 70000" in capsys.readouterr().err


def test_an_option_the_camera_refuses_is_one_line_and_leaves_nothing(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    for argv, says in (
        (["--roi", "5000"], "--roi 5000: the sensor is 2048x2048"),
        (["--exposure", "1e6"], "exposure_time must be"),
        (["--write-dir", str(afile)], "--write-dir: cannot create write directory"),
        (["--align", "--roi", "16"], "--roi 16: --align looks for the sample in 32x32 pixels"),
    ):
        catalog = tmp_path / "catalog"
        assert main(["demo", *argv, "--catalog", str(catalog)]) == 2, argv
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and says in err, err
        assert not catalog.exists()  # refused before the catalog was opened


def test_ctrl_c_ends_the_demo_keeping_the_frames_taken(tmp_path):
    demo = subprocess.Popen(
        [str(BIN / "ophyd-scmos"), "demo", "--num", "100000", "--catalog", "catalog"],
        env=user_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while frames_recorded(tmp_path, "**/cam_*.h5") == 0:  # the run has taken frames
        assert time.monotonic() < deadline and demo.poll() is None, "the demo did not start"
        time.sleep(0.1)
    demo.send_signal(signal.SIGINT)
    out, err = demo.communicate(timeout=60)
    assert demo.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "RE.resume()" not in err
    (said,) = [line for line in err.splitlines() if line.startswith("ophyd-scmos demo:")]
    assert "interrupted; run" in said
    kept = int(said.split("ends with the ")[1].split()[0])
    (path,) = tmp_path.rglob("cam_*.h5")
    with h5py.File(path, "r") as f:
        assert 0 < layout.stored_frames(f) == kept
