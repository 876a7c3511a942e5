"""Real servers for tests: a throwaway PostgreSQL and a Tiled catalog server on 127.0.0.1.

No mocks: `PostgreSQL` runs Debian's (or any) PostgreSQL binaries in a temporary directory,
`CatalogServer` runs ``ophyd-scmos serve`` (Tiled's own server) against it. Both stop cleanly
and leave nothing behind.
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
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self._as, str(self.bin_dir / program), *args],
            check=True,
            capture_output=True,
            text=True,
            cwd=self.dir,
        )

    def start(self) -> None:
        data = str(self.dir / "data")
        self._run("initdb", "-D", data, "-U", self.user, "--auth=trust", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        self._run("pg_ctl", "-D", data, "-o", options, "-l", str(self.dir / "log"), "-w", "start")

    def create_database(self, name: str) -> str:
        """Make a database; return its URI."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
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
        self.command = [*command, "--port", str(self.port), "--api-key", self.api_key]
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
