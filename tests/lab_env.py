"""A stand-in user for the subprocess tests of the lab setup (profile, `acquire`).

Each command runs as a new user would: HOME and the XDG directories in a temporary
directory, no OPHYD_SCMOS_* or TILED_* variables, no display. So no test reads or writes the
real user's configuration, data, catalog or RunEngine metadata, and the defaults that
apply with no configuration file are the ones exercised. One home per test session: the
first command creates its catalog (Tiled's database setup takes seconds), the rest reuse it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from ophyd_scmos.pipeline import layout

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / "profiles" / "lab.toml"
PROFILE = REPO / "profiles" / "profile_scmos"
BIN = Path(sys.executable).parent  # the venv's console scripts: ophyd-scmos, ipython

_home: list[Path] = []


def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _home:
        _home.append(tmp_path_factory.mktemp("home"))
    return _home[0]


def user_env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPHYD_SCMOS_", "TILED_")) and k not in ("DISPLAY", "WAYLAND_DISPLAY")
    }
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        XDG_CACHE_HOME=str(home / ".cache"),
        IPYTHONDIR=str(home / ".ipython"),
        MPLBACKEND="Agg",
        # One catalog server serves a home's commands one after another, not one each; the
        # test session stops those left (conftest).
        OPHYD_SCMOS_CATALOG_IDLE="60",
    )
    env.update(extra)
    return env


def data_dir(home: Path) -> Path:
    return home / ".local" / "share" / "ophyd-scmos" / "data"


def catalog_dir(home: Path) -> Path:
    return home / ".local" / "share" / "ophyd-scmos" / "catalog"


def metadata_dir(home: Path) -> Path:
    return home / ".local" / "state" / "ophyd-scmos" / "runengine-metadata"


def run(
    command: list[str], home: Path, timeout: float = 300, typed: str | None = None, **extra: str
):
    """Run a command as the stand-in user, in its home; the result, output as text. `typed`:
    what the user types (then end of input), as into an interactive session."""
    return subprocess.run(
        command,
        env=user_env(home, **extra),
        cwd=home,
        capture_output=True,
        text=True,
        timeout=timeout,
        **({"input": typed} if typed is not None else {"stdin": subprocess.DEVNULL}),
    )


def result_line(stdout: str, tag: str = "RESULT") -> str:
    """The text after `tag` on the line a test's code printed it, among a session's output."""
    (line,) = [line for line in stdout.splitlines() if line.startswith(tag + " ")]
    return line[len(tag) + 1 :]


def frames_recorded(directory: Path, pattern: str) -> int:
    """Frames a growing run file holds so far, read beside its writer (SWMR); 0 before the
    file is there or readable."""
    for path in directory.glob(pattern):
        try:
            with h5py.File(path, "r", swmr=True) as f:
                return f[layout.DATA].shape[0]
        except (OSError, KeyError):
            return 0
    return 0
