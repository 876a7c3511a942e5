"""The IPython profile, started as a person starts it, non-interactively: `ophyd-scmos ipython`
and plain `ipython --profile-dir`, with the example configuration, with none, with a bad one."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import time

import numpy as np
import pytest

from ophyd_scmos import SimulatedSCMOS, open_catalog
from ophyd_scmos.catalog.local_server import IDLE_ENV
from ophyd_scmos.cli import main
from ophyd_scmos.config import CONFIG_ENV
from ophyd_scmos.drivers import ROI, CameraSettings
from ophyd_scmos.session import LabMetadata
from tests.conftest import expected_frames
from tests.lab_env import (
    BIN,
    EXAMPLE_CONFIG,
    PROFILE,
    REPO,
    catalog_dir,
    data_dir,
    metadata_dir,
    result_line,
    shared_home,
    user_env,
)
from tests.lab_env import run as run_as_user


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return shared_home(tmp_path_factory)


def run(command, home, **kwargs):
    """A command run as the stand-in user (`tests.lab_env.run`), whose catalog server stops a
    minute after the last session rather than ten: the next session finds it still running."""
    return run_as_user(command, home, **{IDLE_ENV: "60"}, **kwargs)


COUNT_50 = """
import threading
print("LOADING", [t.name for t in threading.enumerate() if t.name.startswith("scmos-load")])
(uid,) = RE(count([cam], num=50))
print("RESULT", uid)
"""


def test_ipython_with_the_example_config_counts_50_frames_into_the_catalog(home):
    session = run(
        [
            str(BIN / "ophyd-scmos"),
            "ipython",
            "--config",
            str(EXAMPLE_CONFIG),
            "--",
            "-c",
            COUNT_50,
        ],
        home,
    )
    assert session.returncode == 0, session.stderr[-3000:]
    uid = result_line(session.stdout)
    # The banner names the camera as configured; the table shows the camera's frame numbers.
    assert "cam      Simulated sCMOS, 512x512, exposure 5 ms, software trigger" in session.stdout
    assert f"config   {EXAMPLE_CONFIG}" in session.stdout
    assert "cam_frame_number" in session.stdout
    # Input that is not a terminal draws no prompt: the catalog and the table load at the
    # first run, on the session's own thread, not on threads importing beside its code.
    assert result_line(session.stdout, "LOADING") == "[]"

    run_ = open_catalog(catalog_dir(home))[uid]
    frames = run_["primary"]["cam_image"].read()
    assert frames.shape == (50, 1, 512, 512)
    camera = SimulatedSCMOS(shape=(2048, 2048), seed=0)
    camera.open()
    camera.configure(CameraSettings(exposure_time=0.005, roi=ROI(768, 768, 512, 512)))
    np.testing.assert_array_equal(frames[:, 0], expected_frames(camera, 50))
    start = run_.metadata["start"]
    assert start["instrument"] == "sCMOS test bench"  # [metadata] of the configuration


ALIGN = """
import json
from bluesky.callbacks.fitting import PeakStats
peaks = [PeakStats("motor_x", key) for key in ("cam_stats_total", "cam_spot_total")]
RE(bp.scan([cam], motor_x, -2, 2, 41), peaks)
print("RESULT", json.dumps([peak.cen for peak in peaks]))
"""


def test_the_simulated_camera_comes_with_motors_and_a_sample_a_scan_finds(home):
    """The example configuration's session: its camera is the simulated one, so motor_x and
    motor_y move a sample hidden at motor_x = 1.2 (25-sample.py), and a scan finds it."""
    command = [str(BIN / "ophyd-scmos"), "ipython", "--config", str(EXAMPLE_CONFIG), "--"]
    session = run([*command, "-c", ALIGN], home)
    assert session.returncode == 0, session.stderr[-3000:]
    assert "sample   motor_x, motor_y move a hidden sample: RE(bp.scan([cam]" in session.stdout
    # The whole frame's total and its region's: both peak within half a step of the sample.
    assert json.loads(result_line(session.stdout)) == pytest.approx([1.2, 1.2], abs=0.05)


def _read_only_mounts() -> bool:
    import shutil
    import subprocess

    unshare = shutil.which("unshare")
    return unshare is not None and subprocess.run([unshare, "-m", "true"]).returncode == 0


@pytest.mark.skipif(
    not _read_only_mounts(),
    reason="needs `unshare -m` (root, or a user namespace) to mount the profile read-only",
)
def test_a_read_only_profile_starts(home, tmp_path):
    """A shared checkout or a system-wide install: a profile the user cannot write to, and
    without the directories IPython makes in a profile (a fresh clone has none)."""
    import shutil

    profile, read_only = tmp_path / "profile", tmp_path / "read-only"
    shutil.copytree(PROFILE / "startup", profile / "startup")
    shutil.copy2(PROFILE / "ipython_config.py", profile)
    read_only.mkdir()
    session = run(
        ["unshare", "-m", "sh", "-c",
         f'mount --bind "{profile}" "{read_only}" && mount -o remount,bind,ro "{read_only}" && '
         f'exec "{BIN / "ophyd-scmos"}" ipython --profile-dir "{read_only}" -- '
         '-c "print(\'RESULT\', len(cam.read()))"'],
        home,
    )  # fmt: skip
    assert session.returncode == 0, session.stderr[-3000:]
    assert int(result_line(session.stdout)) > 0
    assert sorted(p.name for p in profile.iterdir()) == ["ipython_config.py", "startup"]


UNAVAILABLE_CATALOG = """
RE(bps.mv(motor_x, 0.5))
print("MOVED", motor_x.position)
RE(count([cam], num=2))
"""


def test_a_catalog_that_cannot_open_starts_no_run_and_says_so_in_one_line(home, tmp_path):
    """A damaged catalog database: the session starts (motors move), and a run is refused
    at its start, before the camera makes a file, in one line naming the database and the
    configuration, with no traceback."""
    damaged = tmp_path / "catalog"
    damaged.mkdir()
    (damaged / "catalog.db").write_text("not sqlite")
    config = tmp_path / "lab.toml"
    config.write_text(
        f'[catalog]\npath = "{damaged}"\n'
        f'[cameras.cam]\nwrite_dir = "{tmp_path / "data"}"\noptions = {{ shape = [64, 64] }}\n'
    )
    command = [str(BIN / "ophyd-scmos"), "ipython", "--config", str(config), "--"]
    session = run([*command, "-c", UNAVAILABLE_CATALOG], home)
    assert "MOVED 0.5" in session.stdout
    assert "Traceback" not in session.stderr, session.stderr[-3000:]
    (line,) = [line for line in session.stderr.splitlines() if "No run starts" in line]
    assert f"{damaged / 'catalog.db'} is not an SQLite database" in line
    assert f"(configuration: {config})" in line
    assert not (tmp_path / "data").exists() or not list((tmp_path / "data").iterdir())


NO_CONFIG_SESSION = """
import json
from ophyd import Signal
shutter = Signal(name="shutter", value="open")
facts = {"model": cam.driver.model, "shape": list(cam.driver.frame_shape)}
cam.roi.set((0, 0, 256, 256))
try:
    RE(darks(cam, num=2))
except ValueError as error:
    refused = str(error)
RE.md["sample"] = "beads"
(uid,) = RE(darks(cam, num=2, shutter=shutter))
print("RESULT", json.dumps({
    **facts,
    "write_dir": str(cam.write_dir),
    "cameras": list(cameras),
    "md_type": type(RE.md).__name__,
    "hook": type(RE.waiting_hook).__name__,
    "refused": refused,
    "uid": uid,
    "shutter": shutter.get(),
    "scan_id": RE.md["scan_id"],
    "catalog": type(catalog).__name__,
}))
"""


def test_profile_starts_with_no_config_file_with_a_simulated_cam_and_persistent_metadata(home):
    session = run([str(BIN / "ipython"), f"--profile-dir={PROFILE}", "-c", NO_CONFIG_SESSION], home)
    assert session.returncode == 0, session.stderr[-3000:]
    facts = json.loads(result_line(session.stdout))
    assert "config   defaults (no configuration file; it would be " in session.stdout
    assert facts["cameras"] == ["cam"]
    assert facts["model"] == "Simulated sCMOS" and facts["shape"] == [2048, 2048]
    assert facts["write_dir"] == str(data_dir(home))
    assert (facts["md_type"], facts["hook"]) == ("LabMetadata", "ProgressBarManager")
    assert "has no shutter" in facts["refused"] and "covered=True" in facts["refused"]
    assert facts["shutter"] == "open"  # closed for the darks, given back after
    assert facts["catalog"] == "CatalogOfBlueskyRuns"  # the catalog itself, once open

    start = open_catalog(catalog_dir(home))[facts["uid"]].metadata["start"]
    assert (start["frame_type"], start["dark_method"]) == ("dark", "shutter shutter")
    assert start["sample"] == "beads"
    # What the next session (or `ophyd-scmos acquire`) starts from: the metadata on disk.
    saved = LabMetadata(metadata_dir(home))
    assert saved["sample"] == "beads" and saved["scan_id"] == facts["scan_id"]


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        # a wrong value, refused when the file is read
        ('[cameras.cam]\ntrigger_mode = "hardware"\n',
         ["cameras.cam.trigger_mode: 'hardware'", "software, internal, external"]),
        # a value of the right type the camera itself refuses when it opens
        ("[cameras.cam]\nbinning = 3\n",
         ["cameras.cam.binning: 3 refused by Simulated sCMOS", "(1, 2, 4)"]),
    ],
)  # fmt: skip
def test_a_wrong_config_ends_the_profile_at_start_naming_the_key(home, toml, says):
    bad = home / "bad.toml"
    bad.write_text(toml)
    session = run(
        [str(BIN / "ipython"), f"--profile-dir={PROFILE}", "-c", "print('REACHED')"],
        home,
        OPHYD_SCMOS_CONFIG=str(bad),
    )
    assert session.returncode == 2, session.stderr
    assert "REACHED" not in session.stdout
    assert f"lab configuration {bad}: {says[0]}" in session.stderr
    assert says[1] in session.stderr


def test_ophyd_scmos_ipython_refuses_a_wrong_config_before_starting_ipython(
    tmp_path, capsys, monkeypatch
):
    # Unset for the test and after it, though `ipython` sets it: a later test's sessions
    # must not find this file.
    monkeypatch.setenv(CONFIG_ENV, "")
    monkeypatch.delenv(CONFIG_ENV)
    bad = tmp_path / "bad.toml"
    bad.write_text('[catalog]\napi_key = "secret"\n')
    assert main(["ipython", "--config", str(bad), "--", "-c", "print('REACHED')"]) == 2
    out, err = capsys.readouterr()
    assert "REACHED" not in out
    assert f"lab configuration {bad}: catalog.api_key: unknown key" in err
    assert "never read from this file" in err


def test_a_wheel_install_starts_the_profile_it_carries(home, tmp_path):
    """Outside a source checkout `ophyd-scmos ipython` finds the profile the wheel installed
    in <prefix>/share/ophyd-scmos. The wheel goes into a fresh venv that borrows this one's
    dependencies (a .pth line), so the package and the profile come from the wheel alone."""
    import site
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", tmp_path],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("ophyd_scmos-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    (purelib,) = venv.glob("lib/python*/site-packages")
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q",
         "--no-deps", wheel],
        check=True,
        capture_output=True,
    )  # fmt: skip
    code = "import ophyd_scmos; print('RESULT', ophyd_scmos.__file__, len(cam.read()))"
    session = run([str(venv / "bin" / "ophyd-scmos"), "ipython", "--", "-c", code], home)
    assert session.returncode == 0, session.stderr[-3000:]
    package, fields = result_line(session.stdout).split()
    assert package.startswith(str(venv)) and int(fields) > 0
    installed = venv / "share" / "ophyd-scmos" / "profile_scmos" / "startup"
    shipped = sorted((PROFILE / "startup").glob("*.py"))
    assert [p.read_text() for p in sorted(installed.glob("*.py"))] == [
        p.read_text() for p in shipped
    ]


# The note's lambda binds what it uses: at exit the session's names are gone (the point).
LEAVE_SESSION = """\
import pathlib
note = pathlib.Path({mark!r})
cam.driver.close = lambda close=cam.driver.close, note=note: (close(), note.write_text("closed"))
print("RESULT", cam.name)
"""


def test_leaving_the_session_gives_the_cameras_back_without_a_traceback(home, tmp_path):
    """A session typed into and left (end of input), as a person does: IPython empties the
    session's namespace before the interpreter's exit hooks run, and the profile's hook must
    still reach the cameras."""
    mark = tmp_path / "closed"
    session = run(
        [str(BIN / "ophyd-scmos"), "ipython"], home, typed=LEAVE_SESSION.format(mark=str(mark))
    )
    assert session.returncode == 0, session.stderr[-3000:]
    assert "RESULT cam" in session.stdout
    assert "Traceback" not in session.stderr, session.stderr[-3000:]
    assert mark.read_text() == "closed"  # the camera's driver was closed at exit


def test_code_given_at_a_terminal_finds_the_catalog_and_the_table_in_their_places(home):
    """`ipython -c` in a terminal draws no prompt, so nothing starts the loading threads: the
    first run loads the catalog and the table itself, and they take their names' places."""
    code = (
        "(uid,) = RE(count([cam], num=2)); "
        "print('PLACED', type(catalog).__name__, type(bec).__name__, uid in catalog)"
    )
    pid, terminal = pty.fork()
    if pid == 0:  # the session, in the pseudo-terminal
        argv = ["ophyd-scmos", "ipython", "--", "-c", code]
        os.execve(str(BIN / "ophyd-scmos"), argv, user_env(home))
    seen = b""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if select.select([terminal], [], [], 1)[0]:
                try:
                    chunk = os.read(terminal, 1 << 16)
                except OSError:  # the session ended: its terminal is gone
                    break
                if not chunk:
                    break
                seen += chunk
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, seen[-3000:].decode(errors="replace")
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(terminal)
    assert b"PLACED CatalogOfBlueskyRuns BestEffortCallback True" in seen, seen[-3000:]


def test_at_a_terminal_the_catalog_and_the_table_load_once_the_prompt_is_shown(home):
    """In a terminal (a pty here), the prompt comes before the imports of the catalog and of
    the BestEffortCallback (no display: no plots); both load from the first prompt on, take
    their names' places, and the first run is written and tabled."""
    pid, terminal = pty.fork()
    if pid == 0:  # the session, in the pseudo-terminal
        os.execve(str(BIN / "ophyd-scmos"), ["ophyd-scmos", "ipython"], user_env(home))
    seen = b""

    def read_until(text: bytes, timeout: float = 120) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while text not in seen:
            assert time.monotonic() < deadline, seen[-2000:].decode(errors="replace")
            if select.select([terminal], [], [], 1)[0]:
                seen += os.read(terminal, 1 << 16)

    try:
        read_until(b"In [")
        # A stand-in's `wait` returns once it has given its name to what it loaded.
        os.write(
            terminal, b"getattr(catalog, 'wait', list)(); print('OPENED', type(catalog).__name__)\r"
        )
        read_until(b"OPENED CatalogOfBlueskyRuns")
        os.write(terminal, b"getattr(bec, 'wait', list)(); print('LOADED', type(bec).__name__)\r")
        read_until(b"LOADED BestEffortCallback")
        os.write(terminal, b"uid, = RE(count([cam], num=2)); print('WRITTEN', uid in catalog)\r")
        read_until(b"WRITTEN True")
        assert b"cam_frame_number" in seen  # the table's header
        os.write(terminal, b"exit\r")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(terminal)
