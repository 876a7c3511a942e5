"""Real servers for tests: a throwaway PostgreSQL and a Tiled catalog server on 127.0.0.1.

No mocks: `PostgreSQL` runs Debian's (or any) PostgreSQL binaries in a temporary directory,
`CatalogServer` runs ``ophyd-scmos serve`` (Tiled's own server) against it. Both stop cleanly
at teardown, and both die with the test process if it is killed before (`guarded`).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

# Run a command so that Linux stops it when the process that started it dies, even by SIGKILL
# (prctl PR_SET_PDEATHSIG, which survives exec): a killed test run leaves no server behind.
# argv: parent pid, uid, gid, signal, command... The uid and gid are taken first (as root, a
# server may need another user), since changing them clears the setting.
_GUARD = """
import ctypes, os, sys
parent, uid, gid, sig = map(int, sys.argv[1:5])
if uid != os.getuid():
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
libc = ctypes.CDLL(None, use_errno=True)
if hasattr(libc, "prctl"):  # Linux; elsewhere only teardown stops the server
    libc.prctl(1, sig)
if os.getppid() != parent:
    sys.exit("the test process is gone")
os.execv(sys.argv[5], sys.argv[5:])
"""


def guarded(command: list[str], sig: int, user: pwd.struct_passwd | None = None) -> list[str]:
    """`command`, run as `user` (default: this one), sent `sig` if this process dies."""
    uid, gid = (user.pw_uid, user.pw_gid) if user else (os.getuid(), os.getgid())
    ids = (os.getpid(), uid, gid, int(sig))
    return [sys.executable, "-c", _GUARD, *map(str, ids), *command]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin_dir() -> Path | None:
    """Where PostgreSQL's server programs are: Debian keeps them off the PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _version(path: str) -> float:
    return float(Path(path).parts[-3])


def require_postgres() -> Path:
    """The binaries, or a skip that says how to get them; on CI, a failure instead."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        message = "PostgreSQL server not installed (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run installs it")
        pytest.skip(message)
    return bin_dir


class PostgreSQL:
    """A PostgreSQL server of its own on 127.0.0.1, data in a temporary directory.

    initdb refuses to run as root: as root, the server runs as the ``postgres`` user that
    Debian's package creates, and the directory is handed to it.
    """

    user = "scmos"

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ophyd-scmos-pg-"))
        self._as: list[str] = []
        self._owner: pwd.struct_passwd | None = None
        self.process: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            self._owner = pwd.getpwnam("postgres")
            os.chown(self.dir, self._owner.pw_uid, self._owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self._as, str(self.bin_dir / program), *args],
            check=True,
            capture_output=True,
            text=True,
            cwd=self.dir,
        )

    def start(self, timeout: float = 30) -> None:
        data = str(self.dir / "data")
        self._run("initdb", "-D", data, "-U", self.user, "--auth=trust", "--no-sync")
        server = [str(self.bin_dir / "postgres"), "-D", data, "-p", str(self.port)]
        server += ["-c", "listen_addresses=127.0.0.1", "-k", str(self.dir), "-c", "fsync=off"]
        # In the foreground, a child of this process (not pg_ctl's daemon), so that it can be
        # told to stop if this process dies; SIGINT is PostgreSQL's fast shutdown.
        with open(self.dir / "log", "wb") as log:
            self.process = subprocess.Popen(
                guarded(server, signal.SIGINT, self._owner),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
            )
        ready = [str(self.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        deadline = time.monotonic() + timeout
        while subprocess.run(ready).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"PostgreSQL did not start:\n{log}")
            time.sleep(0.1)

    def create_database(self, name: str) -> str:
        """Make a database; return its URI."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class CatalogServer:
    """``ophyd-scmos serve`` on a free port of 127.0.0.1, with an API key."""

    def __init__(self, postgres: str, data_dir: Path, readable: list[Path]) -> None:
        self.api_key = secrets.token_hex(16)  # Tiled takes letters and digits only
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log = data_dir.parent / "server.log"
        script = Path(sys.executable).parent / "ophyd-scmos"
        command = [str(script), "serve", "--postgres", postgres, "--data", str(data_dir)]
        for path in readable:
            command += ["--read", str(path)]
        command += ["--port", str(self.port), "--api-key", self.api_key]
        self.command = guarded(command, signal.SIGTERM)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the catalog server exited:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/api/v1/", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"the catalog server did not answer:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
