"""`ophyd-scmos live`: the configured camera in focus mode and its page, until Ctrl-C."""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lab_env import user_env
from tests.live.test_server import decode, get

#: the command as the console script runs it, with this checkout's code
LIVE = [sys.executable, "-c", "import sys; from ophyd_scmos.cli import main; sys.exit(main())"]

EYE = """
[data]
dir = "{data}"
[cameras.other]
options = {{ shape = [64, 64] }}
[cameras.eye]
options = {{ shape = [128, 160], seed = 3 }}
exposure_time = 0.002
rois = {{ centre = [40, 32, 80, 64] }}
"""


def start_live(tmp_path: Path, *args: str, sigint: Any = signal.SIG_DFL) -> subprocess.Popen[str]:
    """`ophyd-scmos live ARGS` as a user in `tmp_path` runs it, started with `sigint` as its
    SIGINT disposition (SIG_IGN: as a script's background job starts)."""
    return subprocess.Popen(
        [*LIVE, "live", *args],
        env=user_env(tmp_path, PYTHONFAULTHANDLER="1"),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
    )


def end(process: subprocess.Popen[str], sig: int) -> str:
    """Send `sig` and return what the command said once it ended; if it hangs instead, fail
    with every thread's stack (faulthandler, on SIGABRT), so a rare hang says where it was."""
    process.send_signal(sig)
    try:
        return process.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        try:
            err = process.communicate(timeout=30)[1]
        except subprocess.TimeoutExpired as exc:  # a child holds the pipe open
            err = str(exc.stderr)
        pytest.fail(f"ophyd-scmos live did not end on signal {sig} in 60 s; it was at:\n{err}")


@pytest.mark.parametrize("sigint", [signal.SIG_DFL, signal.SIG_IGN], ids=["default", "ignored"])
def test_live_serves_the_cameras_page_until_ctrl_c_then_lets_the_camera_go(tmp_path, sigint):
    config = tmp_path / "lab.toml"
    config.write_text(EYE.format(data=tmp_path / "data"))
    process = start_live(tmp_path, "--config", str(config), "--camera", "eye", sigint=sigint)
    try:
        assert process.stdout is not None
        ready = select.select([process.stdout], [], [], 120)[0]
        line = process.stdout.readline() if ready else ""
        found = re.fullmatch(r"eye live view: (http://127\.0\.0\.1:\d+/\?token=\S+)\n", line)
        assert found, line
        url = found.group(1)
        base, token = url.split("/?token=")
        assert get(url)[0] == 200 and get(f"{base}/state")[0] == 403
        state = json.loads(get(f"{base}/state?token={token}")[1])
        assert state["camera"] == "eye" and state["mode"] == "focus"
        assert state["rois"] == {"centre": [40, 32, 80, 64]}
        assert state["settings"]["exposure_time"] == 0.002
        header, pixels = decode(get(f"{base}/frame?token={token}")[1])
        assert pixels.shape == (128, 160) and header["mode"] == "focus"
        err = end(process, signal.SIGINT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "Ctrl-C to stop" in err
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())
    with pytest.raises(OSError):  # the page's server is gone with the camera
        get(url)


def test_live_with_an_unknown_camera_is_one_line_and_exit_2(tmp_path, capsys):
    from ophyd_scmos.cli import main

    config = tmp_path / "lab.toml"
    config.write_text(EYE.format(data=tmp_path / "data"))
    assert main(["live", "--config", str(config), "--camera", "nose"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ophyd-scmos live: ") and "nose" in err and len(err.splitlines()) == 1


def test_sigterm_ends_live_as_ctrl_c_does(tmp_path):
    config = tmp_path / "lab.toml"
    config.write_text(EYE.format(data=tmp_path / "data"))
    process = start_live(tmp_path, "--config", str(config))
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("other live view: http://127.0.0.1:"), line
        started = time.monotonic()
        err = end(process, signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert time.monotonic() - started < 30
    with pytest.raises(OSError):
        get(line.split(": ", 1)[1].strip())
