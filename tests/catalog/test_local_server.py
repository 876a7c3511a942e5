"""The embedded catalog's local server: shared by the processes that open the catalog, a cache
of the catalog's files (what one process writes, the next reads at once; a killed server is
replaced and loses nothing), and gone once no process uses it. Real processes and servers."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import count
from bluesky_tiled_plugins import TiledWriter
from ophyd.sim import det

from ophyd_scmos.catalog import open_catalog, start_local_server
from ophyd_scmos.catalog.local_server import IDLE_ENV, Address, ServerFiles, find_server
from tests.conftest import expected_frames

#: Prints the pid of the server it used; with "hold", holds its client until stdin closes.
OPEN = """
import sys
from ophyd_scmos.catalog import open_catalog
from ophyd_scmos.catalog.local_server import find_server
directory = sys.argv[1]
catalog = open_catalog(directory)
list(catalog)
print("RESULT", find_server(directory).pid, flush=True)
if sys.argv[2:] == ["hold"]:
    sys.stdin.read()
"""

#: Writes a count of ophyd's simulated detector; prints its uid and the values it read.
WRITE = """
import json, sys
from bluesky import RunEngine
from bluesky.plans import count
from bluesky_tiled_plugins import TiledWriter
from ophyd.sim import det
from ophyd_scmos.catalog import open_catalog, start_local_server
values = []
RE = RunEngine({}, call_returns_result=False)
RE.subscribe(lambda name, doc: name == "event" and values.append(doc["data"]["det"]))
RE.subscribe(TiledWriter(open_catalog(sys.argv[1], in_process=sys.argv[2] == "in-process")))
(uid,) = RE(count([det], num=5))
print("RESULT", json.dumps([uid, values]), flush=True)
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty catalog, made once (creating its database takes seconds), no server running."""
    directory = tmp_path_factory.mktemp("template") / "catalog"
    open_catalog(directory, in_process=True).context.close()
    return directory


@pytest.fixture
def directory(template: Path, tmp_path: Path) -> Path:
    """An empty catalog of this test's, no server running."""
    return Path(shutil.copytree(template, tmp_path / "catalog"))


_started: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _reap_processes() -> Iterator[None]:
    """Every process a test started has ended, and its pipes are closed, when the test ends."""
    yield
    while _started:
        process = _started.pop()
        if process.poll() is None:
            process.kill()
        process.wait()
        for pipe in (process.stdin, process.stdout, process.stderr):
            pipe.close()  # type: ignore[union-attr]


def python(code: str, *args: Any, **env: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    _started.append(process)
    return process


def result(process: subprocess.Popen[str], timeout: float = 120) -> str:
    """The RESULT its code printed, once it has."""
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("RESULT "):
            return line.removeprefix("RESULT ").strip()
    _, err = process.communicate(timeout=timeout)
    pytest.fail(f"no RESULT (exit code {process.returncode}):\n{err[-3000:]}")


def wait_until_gone(directory: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while find_server(directory) is not None:
        assert time.monotonic() < deadline, f"the server of {directory} is still running"
        time.sleep(0.05)


def refuses_connections(address: Address) -> bool:
    try:
        socket.create_connection(("127.0.0.1", address.port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_processes_share_one_server_which_answers_only_its_key(directory: Path) -> None:
    first = python(OPEN, directory, **{IDLE_ENV: "60"})
    pid = int(result(first))
    assert first.wait(timeout=30) == 0

    list(open_catalog(directory))  # the first process has gone; its server serves this one
    address = find_server(directory)
    assert address is not None and address.pid == pid
    state = ServerFiles(directory, (Path("/"),)).state
    assert stat.S_IMODE(state.stat().st_mode) == 0o600  # the key is its user's alone
    assert httpx.get(f"{address.url}/metadata/").status_code == 401
    assert httpx.get(f"{address.url}/metadata/", headers=_key(address)).status_code == 200


def test_the_server_takes_off_the_dependency_overrides_that_change_nothing(tmp_path: Path) -> None:
    """While any dependency override is set, FastAPI analyses every dependency of every route
    again at each request. Tiled's one override returns the very settings object its settings
    dependency caches, so the server takes it off (and puts it back for Tiled's shutdown);
    an override that returns anything else stays."""
    from tiled.server.settings import get_settings

    from ophyd_scmos.catalog.embedded import build_app
    from ophyd_scmos.catalog.local_server import _take_settled_overrides

    get_settings.cache_clear()  # Tiled's settings are one object per process: this test's own
    try:
        app, _ = build_app(tmp_path / "catalog", (tmp_path,), api_key="the key")
        taken = _take_settled_overrides(app)
        assert app.dependency_overrides == {} and list(taken) == [get_settings]
        assert get_settings().single_user_api_key == "the key"  # as Tiled's override made it

        app.dependency_overrides[get_settings] = lambda: object()
        assert _take_settled_overrides(app) == {} and get_settings in app.dependency_overrides
    finally:
        get_settings.cache_clear()


def _key(address: Address) -> dict[str, str]:
    return {"Authorization": f"Apikey {address.key}"}


def test_processes_opening_a_new_catalog_at_once_start_one_server(tmp_path: Path) -> None:
    directory = tmp_path / "catalog"
    openers = [python(OPEN, directory) for _ in range(3)]
    assert len({result(opener) for opener in openers}) == 1
    for opener in openers:
        assert opener.wait(timeout=30) == 0


@pytest.mark.parametrize("writer", ["local-server", "in-process"])
def test_a_run_written_by_another_process_is_read_at_once(directory: Path, writer: str) -> None:
    """Whether the writer goes through the server or writes the catalog's files itself, a
    client of the running server sees the run as soon as the writer has written it."""
    catalog = open_catalog(directory)
    assert len(catalog) == 0
    uid, values = json.loads(result(python(WRITE, directory, writer)))
    run = catalog[uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    np.testing.assert_array_equal(run["primary"]["det"].read(), values)


#: Another process writing the catalog's event tables: holds their write lock for a while.
HOLD_TABLES = """
import sqlite3, sys, time
tables = sqlite3.connect(sys.argv[1], isolation_level=None)
tables.execute("BEGIN IMMEDIATE")
print("RESULT held", flush=True)
time.sleep(float(sys.argv[2]))
tables.execute("COMMIT")
"""


@pytest.mark.parametrize("writer", ["local-server", "in-process"])
def test_a_run_waits_for_another_process_writing_the_tables_and_loses_nothing(
    directory: Path, writer: str
) -> None:
    """While another process writes the event tables (an in-process catalog beside the local
    server, say), a run's writes wait for it instead of failing with "database is locked"."""
    catalog = open_catalog(directory, in_process=writer == "in-process")
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(TiledWriter(catalog, batch_size=1))
    RE(count([det], num=2))  # the run's tables exist, as after any first run
    holder = python(HOLD_TABLES, directory / "tables.sqlite", 3)
    assert result(holder) == "held"
    started = time.monotonic()
    (uid,) = RE(count([det], num=5))
    assert time.monotonic() - started > 1  # it waited for the other process
    assert holder.wait(timeout=30) == 0
    run = open_catalog(directory)[uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    np.testing.assert_array_equal(run["primary"]["det"].read(), [det.read()["det"]["value"]] * 5)


def test_a_server_killed_during_a_run_is_replaced_and_nothing_is_lost(
    directory: Path, cam: Any, driver: Any
) -> None:
    """SIGKILL between two of TiledWriter's requests: the next request finds no server and
    starts another, which serves everything the first had written."""
    catalog = open_catalog(directory)
    killed = find_server(directory)
    assert killed is not None

    def kill_at_the_fifth_event(name: str, doc: dict[str, Any]) -> None:
        if name == "event" and doc["seq_num"] == 5:
            os.kill(killed.pid, signal.SIGKILL)
            wait_until_gone(directory, timeout=10)

    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(kill_at_the_fifth_event)  # before TiledWriter: it runs first
    RE.subscribe(TiledWriter(catalog, batch_size=1))  # every event written as it comes
    (uid,) = RE(count([cam], num=10))

    replacement = find_server(directory)
    assert replacement is not None and replacement.pid != killed.pid
    assert refuses_connections(killed)
    for client in (catalog, open_catalog(directory)):
        run = client[uid]
        assert run.metadata["stop"]["exit_status"] == "success"
        np.testing.assert_array_equal(run["primary"]["cam_frame_number"].read(), range(10))
        frames = run["primary"]["cam_image"].read()
        np.testing.assert_array_equal(frames[:, 0], expected_frames(driver, 10))
    catalog.context.close()  # this process keeps it no more: it stops when idle


def test_a_server_killed_just_before_a_process_first_asks_it_is_replaced(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process keeps the server; it dies after this process found it alive and
    before Tiled's first request: the client starts another server and uses that."""
    import tiled.client.context
    import tiled.client.utils

    holder = python(OPEN, directory, "hold")
    first = int(result(holder))
    monkeypatch.setattr(tiled.client.utils, "TILED_RETRY_ATTEMPTS", 2)  # not 25 s of retries
    build = tiled.client.context.Context.__init__
    killed = []

    def kill_first(self: Any, *args: Any, **kwargs: Any) -> None:
        if not killed:
            os.kill(first, signal.SIGKILL)
            killed.append(first)
            wait_until_gone(directory, timeout=10)
        build(self, *args, **kwargs)

    monkeypatch.setattr(tiled.client.context.Context, "__init__", kill_first)
    catalog = open_catalog(directory)
    assert list(catalog) == [] and killed == [first]
    replacement = find_server(directory)
    assert replacement is not None and replacement.pid != first
    catalog.context.close()


def test_a_server_killed_as_it_starts_is_started_once_more(directory: Path) -> None:
    """Killed before it said where it listens: the process waiting for it starts another."""
    from ophyd_scmos.catalog.local_server import MODULE

    start_local_server(directory)
    killed = None
    deadline = time.monotonic() + 30
    while killed is None and time.monotonic() < deadline:
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                words = cmdline.read_bytes().split(b"\0")
                if MODULE.encode() in words and str(directory).encode() in words:
                    killed = int(cmdline.parent.name)
                    os.kill(killed, signal.SIGKILL)
    assert killed is not None, "no server process seen"
    catalog = open_catalog(directory)
    assert list(catalog) == []
    server = find_server(directory)
    assert server is not None and server.pid != killed
    catalog.context.close()


def test_a_deleted_state_file_is_written_again_by_its_server(directory: Path) -> None:
    """Someone clears the catalog's "stale" files while its server runs: the server writes
    where it listens again, and a new process uses it."""
    catalog = open_catalog(directory)
    server = find_server(directory)
    assert server is not None
    (state,) = (directory / ".server-0").glob("*.json")
    state.unlink()
    assert int(result(python(OPEN, directory))) == server.pid
    assert state.exists()
    catalog.context.close()


def test_a_catalog_deleted_and_made_anew_gets_a_server_of_its_own(
    directory: Path, template: Path
) -> None:
    """The old server, which has the deleted database open, leaves within its tick (it wrote
    its address into the new directory, and every run into it failed: "attempt to write a
    readonly database"); a run then goes into the new catalog."""
    open_catalog(directory).context.close()
    old = find_server(directory)
    assert old is not None
    anew = shutil.copytree(template, directory.with_name("anew"))
    (anew / ".server-0").mkdir()  # as a process that looked for a server in it leaves it
    shutil.rmtree(directory)
    os.rename(anew, directory)  # at once: before the old server's next look
    time.sleep(2)  # it looks every second
    uid, _ = json.loads(result(python(WRITE, directory, "served")))
    assert uid in open_catalog(directory)
    assert refuses_connections(old)


def test_the_server_stops_once_no_process_holds_its_clients_and_it_is_idle(
    directory: Path,
) -> None:
    """It stays while a process holds a client of it, however idle; once that process has
    gone, it stops after its idle time (1 s here), leaving no port open."""
    holder = python(OPEN, directory, "hold", **{IDLE_ENV: "1"})
    pid = int(result(holder))
    time.sleep(2.5)  # idle for more than its idle time, but held
    address = find_server(directory)
    assert address is not None and address.pid == pid

    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0
    wait_until_gone(directory, timeout=15)
    assert refuses_connections(address)
    assert not ServerFiles(directory, (Path("/"),)).state.exists()


def test_a_process_that_drops_its_clients_no_longer_keeps_the_server(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(IDLE_ENV, "1")
    catalog = open_catalog(directory)
    time.sleep(2.5)  # idle for more than its idle time, but held
    assert find_server(directory) is not None
    del catalog
    gc.collect()
    wait_until_gone(directory, timeout=15)


def test_a_server_started_ahead_serves_the_next_open(directory: Path) -> None:
    start_local_server(directory)  # returns at once, the server starting meanwhile
    start_local_server(directory)  # already starting
    start_local_server("http://catalog.example.org:8000")  # a server's URL: nothing to start
    assert len(open_catalog(directory)) == 0
    assert find_server(directory) is not None


def test_in_process_starts_no_server(directory: Path) -> None:
    catalog = open_catalog(directory, in_process=True)
    assert type(catalog).__name__ == "CatalogOfBlueskyRuns" and len(catalog) == 0
    assert find_server(directory) is None and not list(directory.glob(".server*"))
    catalog.context.close()


def test_a_wrong_idle_time_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(IDLE_ENV, "soon")
    with pytest.raises(ValueError, match=f"{IDLE_ENV}='soon': expected seconds"):
        open_catalog(tmp_path / "catalog")


def test_a_stopped_server_is_named_with_what_to_do(directory: Path) -> None:
    """A frozen server (SIGSTOP) holds its catalog, and each process waited on it, then
    failed in httpx's bare words: the error names its process, and a command says it in a
    line."""
    from ophyd_scmos.catalog import CatalogUnavailable, reaching

    catalog = open_catalog(directory)
    server = find_server(directory)
    assert server is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        with pytest.raises(httpx.ReadTimeout, match=rf"process {server.pid}\) did not answer"):
            catalog.context.http_client.get(catalog.uri, timeout=0.5)
        with (
            pytest.raises(CatalogUnavailable, match=rf"kill {server.pid}: the next use"),
            reaching(str(directory)),
        ):
            catalog.context.http_client.get(catalog.uri, timeout=0.5)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    catalog.context.close()
