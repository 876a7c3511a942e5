"""The embedded catalog's local server: one Tiled server per catalog directory and user, shared
by every process that opens the catalog, started by the first and stopped when unused.

Building Tiled's server app costs seconds in every process (FastAPI analyses each of Tiled's
~60 routes when the app is built, and again at the first request); a server that outlives one
command lets the next `ophyd-scmos runs`, notebook or session answer at once. It is a cache:
the catalog's files (SQLite databases, tables, data) are the truth, committed before the server
answers, so a server that dies (killed, crashed) loses nothing it reported written, and the
next request that finds it gone starts another.

The server listens on 127.0.0.1 and answers only requests with its API key, which is in a file
only its user can read. Its files are in a directory of its user's, ``<catalog>/.server-UID/``
(users who share a catalog each have their own), per host and readable roots (the `tag`):

* ``<tag>.json``: its port, API key and process id (mode 0600);
* ``<tag>.log``: what it says (Tiled's messages, tracebacks);
* ``<tag>.start``: locked (exclusively) by a server while it starts and while it stops, so two
  never start at once and a client never finds one half-started or half-stopped;
* ``<tag>.alive``: locked (exclusively) by the server for as long as it runs: the kernel
  releases it when the process dies, however it dies;
* ``<tag>.kept``: locked (shared) by each process for as long as it holds clients of the
  server: it stops once no process holds the lock and no request came for
  ``$OPHYD_SCMOS_CATALOG_IDLE`` seconds (600).

`LocalServer` starts it as ``python -m ophyd_scmos.catalog.local_server --idle S DIR ROOT...``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import secrets
import select
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ophyd_scmos.pipeline.recovery import MissingFile, UnreadableFile

if TYPE_CHECKING:
    import httpx
    from tiled.client.context import Context

    from ophyd_scmos.catalog.embedded import PathLike

__all__ = ["IDLE_ENV", "Address", "CatalogServerError", "LocalServer", "find_server"]

IDLE_ENV = "OPHYD_SCMOS_CATALOG_IDLE"  #: seconds unused before a server stops
DEFAULT_IDLE = 600.0
START_TIMEOUT = 120.0  #: a new catalog's database takes seconds to create; a loaded host more
#: The response header naming the exception a request raised in the server, which the client
#: raises in its turn, as the catalog served in its own process would have.
ERROR_HEADER = "X-Ophyd-Scmos-Error"
SERVER_EXCEPTIONS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (UnreadableFile, MissingFile, OSError, RuntimeError, ValueError, KeyError)
}
#: Requested by the server itself before it says it is ready: FastAPI analyses a router's
#: routes at its first request (~1 s), which would otherwise be the first client's wait.
WARM_UP = ("/api/v1/", "/api/v1/metadata/", "/api/v1/search/")
MODULE = "ophyd_scmos.catalog.local_server"


@dataclass(frozen=True)
class Address:
    """Where a local server listens, the API key it answers to, and its process."""

    port: int
    key: str
    pid: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"


@dataclass
class Lock:
    """A held file lock (`fcntl.flock`): closing it, or the process ending, releases it. A
    plain descriptor, so that one kept for the life of the process is no resource leak."""

    fd: int

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ServerFiles:
    """The files by which the processes using one catalog find, start and keep its server."""

    def __init__(self, directory: Path, readable: tuple[Path, ...]) -> None:
        served = "\0".join([socket.gethostname(), *map(str, readable)])
        self.tag = hashlib.sha256(served.encode()).hexdigest()[:16]
        self.dir = directory / f".server-{os.getuid()}"
        self.state = self.dir / f"{self.tag}.json"
        self.log = self.dir / f"{self.tag}.log"

    def hold(self, name: str, *, shared: bool = False) -> Lock:
        """The lock `name`, once no other process holds it in a way that excludes this one."""
        lock = self._open(name)
        fcntl.flock(lock.fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        return lock

    def try_hold(self, name: str, *, shared: bool = False) -> Lock | None:
        """`hold`, or None at once where another process holds it."""
        lock = self._open(name)
        try:
            fcntl.flock(lock.fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return None
        return lock

    def _open(self, name: str) -> Lock:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return Lock(os.open(self.dir / f"{self.tag}.{name}", os.O_RDONLY | os.O_CREAT, 0o600))

    def server_alive(self) -> bool:
        probe = self.try_hold("alive", shared=True)
        if probe is None:
            return True
        probe.close()
        return False

    def read(self) -> Address | None:
        try:
            return Address(**json.loads(self.state.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def write(self, address: Address) -> None:
        """Replace the state file at once: a reader sees the old one or the new one."""
        part = self.state.with_suffix(".part")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(address), f)
        os.replace(part, self.state)

    def forget(self, address: Address) -> None:
        """Remove the state file if it still names `address`."""
        if self.read() == address:
            with contextlib.suppress(FileNotFoundError):
                self.state.unlink()


def find_server(directory: PathLike, readable: Sequence[PathLike] | None = None) -> Address | None:
    """The running local server of the catalog in `directory` (opened with `readable`, as
    `open_catalog` takes it), or None."""
    from ophyd_scmos.catalog.embedded import absolute_path, readable_roots

    files = ServerFiles(absolute_path(directory), readable_roots(readable))
    return files.read() if files.dir.is_dir() and files.server_alive() else None


# ---------------------------------------------------------------------------------------------
# The client side


class LocalServer:
    """This process's way to the local server of one catalog: finds it or starts one (without
    waiting for it: the caller imports what it needs meanwhile), and replaces it when it is
    gone."""

    def __init__(self, directory: Path, readable: tuple[Path, ...]) -> None:
        self.directory, self.readable = directory, readable
        self.files = ServerFiles(directory, readable)
        self.idle = idle_seconds()  # refused here, in one line, rather than in the server
        self.created = False  #: a server started for this process created the catalog
        self._lock = threading.Lock()
        self._kept: Lock | None = None
        self._address: Address | None = None
        self._starting: subprocess.Popen[bytes] | None = None
        self._find_or_start()

    def _find_or_start(self) -> None:
        starting = self.files.try_hold("start", shared=True)
        if starting is not None:  # no server is starting or stopping
            with starting:
                if self.files.server_alive():
                    self._address = self.files.read()
        if self._address is None:
            # Where another server is starting, this one waits for it and names it instead.
            with open(self.files.log, "ab") as log:
                self._starting = subprocess.Popen(
                    [
                        *(sys.executable, "-m", MODULE, "--idle", str(self.idle)),
                        *map(str, (self.directory, *self.readable)),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    start_new_session=True,  # a Ctrl-C in the terminal is not for it
                )

    def address(self) -> Address:
        """Where the server listens, once it does. A server that ended before saying so
        (killed as it started) is started once more."""
        with self._lock:
            if self._address is None:
                try:
                    self._address = self._wait()
                except _EndedUnready:
                    self._find_or_start()
                    self._address = self._wait()
            return self._address

    def replace(self, gone: Address) -> Address:
        """The server that answers now, where the one at `gone` did not: a new one, unless
        another thread or process has started it already."""
        with self._lock:
            if self._address == gone:
                self._address = None
                self._find_or_start()
        return self.address()

    def _wait(self) -> Address:
        process, self._starting = self._starting, None
        assert process is not None and process.stdout is not None
        process.wait()  # it forks the server and ends
        with process.stdout:
            ready = select.select([process.stdout], [], [], START_TIMEOUT)[0]
            line = process.stdout.readline() if ready else b""
        if not line:
            log = self.files.log.read_text(errors="replace").strip().splitlines()
            raise (_EndedUnready if ready else CatalogServerError)(
                f"the catalog server of {self.directory} did not start"
                f"{'' if ready else f' in {START_TIMEOUT:g} s'}: "
                f"{_last_error(log)} (its log: {self.files.log})"
            )
        state = json.loads(line)
        self.created = state.pop("created") or self.created
        return Address(**state)

    def context(self) -> Context:
        """A Tiled client context on the server, whose requests follow it where it is
        replaced. The server does not stop while the context is open, until it is garbage
        (one context per `LocalServer`)."""
        import httpx
        from tiled.client.context import Context
        from tiled.client.transport import Transport

        # Waits only for a server that is stopping: it holds the lock until it exits.
        self._kept = self._kept or self.files.hold("kept", shared=True)
        address = self.address()
        if not self.files.server_alive():  # it stopped before this process kept it
            address = self.replace(address)

        def connect(address: Address) -> Context:
            # trust_env=False: a proxy set for the outside world must not see 127.0.0.1.
            # Uncompressed: on this machine compressing costs more than it saves (a whole
            # run's frames read at half the speed).
            return Context(
                address.url,
                api_key=address.key,
                trust_env=False,
                verify=False,
                headers={"accept-encoding": "identity"},
            )

        try:
            context = connect(address)
        except httpx.ConnectError:  # it died after the check, before Tiled's first request
            context = connect(self.replace(address))
        except httpx.TimeoutException as exc:
            raise _not_answering(exc, address) from None
        transport = context.http_client._transport  # Tiled's own: caching, compression
        assert isinstance(transport, Transport), type(transport)
        transport.transport.close()
        transport.transport = to_server = ServerTransport(self)
        weakref.finalize(context, to_server.close)  # its connections, and the server's lock
        return context

    def close(self) -> None:
        """This process no longer keeps the server: it may stop when idle."""
        if self._kept is not None:
            self._kept.close()
            self._kept = None


def _last_error(log: list[str]) -> str:
    """The exception a server's log ends on (the line naming it), else its last line."""
    named = [line for line in log if re.match(r"[\w.]*(Error|Exception)\b.*: ", line)]
    return (named or log or ["it said nothing"])[-1].strip()


class CatalogServerError(RuntimeError):
    """The catalog's local server did not start (a damaged catalog, say); the message is one
    line, with the last of the server's log."""


class _EndedUnready(CatalogServerError):
    """The server ended without saying where it listens."""


class ServerTransport:
    """Sends each request to the catalog's local server where it listens now: a request that
    finds no server (so was never sent, and is safe to send again whatever it does) starts a
    new one and goes there. An exception raised in the server is raised here, as the catalog
    served in this process would have raised it."""

    def __init__(self, server: LocalServer) -> None:
        import httpx

        self.server = server
        self.http = httpx.HTTPTransport(verify=False)  # no TLS; verify=False loads no CAs

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        import httpx

        address = self.server.address()
        try:
            response = self.http.handle_request(_to(request, address))
        except httpx.ConnectError:
            response = self.http.handle_request(_to(request, self.server.replace(address)))
        except httpx.TimeoutException as exc:
            raise _not_answering(exc, address, request) from None
        name = response.headers.get(ERROR_HEADER)
        if name is not None:
            with contextlib.closing(response):
                detail = json.loads(response.read()).get("detail", "")
            cls = SERVER_EXCEPTIONS.get(name)
            raise cls(detail) if cls is not None else RuntimeError(f"{name}: {detail}")
        return response

    def close(self) -> None:
        self.http.close()
        self.server.close()


def _not_answering(
    exc: httpx.TimeoutException, address: Address, request: httpx.Request | None = None
) -> httpx.TimeoutException:
    """`exc`, of its type (a writer's retries go on), naming the server that did not answer
    and what frees its catalog."""
    if request is None:
        with contextlib.suppress(RuntimeError):  # httpx's: no request set
            request = exc.request
    return type(exc)(
        f"the catalog's server (process {address.pid}) did not answer in time: it is stopped "
        f"(kill -CONT {address.pid}) or stuck (kill {address.pid}: the next use of the catalog "
        "starts another)",
        request=request,
    )


def _to(request: httpx.Request, address: Address) -> httpx.Request:
    """`request`, to the server at `address`. Its Host header stays the first server's, so the
    links in the answers (Tiled builds them from it) do not change when servers do."""
    request.url = request.url.copy_with(host="127.0.0.1", port=address.port)
    request.headers["Authorization"] = f"Apikey {address.key}"
    return request


# ---------------------------------------------------------------------------------------------
# The server side


def serve(directory: Path, readable: tuple[Path, ...], idle: float) -> None:
    """Serve the catalog in `directory` on 127.0.0.1 until no process uses it and no request
    came for `idle` seconds. Says where it listens on stdout, one JSON line; where a server
    already serves the catalog, says where that one listens and returns."""
    # The process that started this one ends at once, and the client reaps it: the server is no
    # one's child, so no client is left holding a process it did not wait for.
    if os.fork():
        os._exit(0)
    files = ServerFiles(directory, readable)
    starting = files.hold("start")
    alive = _hold_alive(files)
    if alive is None:
        serving = files.read()
        if serving is not None:  # else no line: the client says the server did not start
            _say_ready(serving, created=False)
        return
    os.truncate(files.log, 0)  # this server's own log (its stderr, opened for appending)

    import httpx
    import uvicorn

    from ophyd_scmos.catalog.embedded import build_app

    key = secrets.token_hex(32)
    app, created = build_app(directory, readable, api_key=key)
    app.add_exception_handler(Exception, functools.partial(_raise_in_client, directory))
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    address = Address(listening.getsockname()[1], key, os.getpid())
    os.chdir(directory)  # not the starting process's directory, which it would keep busy
    usage = _Usage(files, address, idle)

    class Server(uvicorn.Server):
        overrides: dict[Any, Any] = {}

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            self.overrides = _take_settled_overrides(app)
            headers = {"Authorization": f"Apikey {key}"}
            base = f"http://127.0.0.1:{address.port}"
            async with httpx.AsyncClient(base_url=base, headers=headers, trust_env=False) as c:
                for path in WARM_UP:
                    await c.get(path)
            files.write(address)
            _say_ready(address, created=created)
            starting.close()

        async def on_tick(self, counter: int) -> bool:
            if counter % 10 == 0:
                if usage.over(self.server_state):
                    return True
                if files.read() != address:  # deleted (a clean-up of "stale" files?)
                    files.write(address)  # or new processes would find no server to use
            return bool(await super().on_tick(counter))

        async def shutdown(self, sockets: Any = None) -> None:
            usage.stop()  # also when told to (SIGTERM), not only when unused
            app.dependency_overrides.update(self.overrides)  # Tiled's shutdown reads them
            await super().shutdown(sockets=sockets)

    try:
        Server(uvicorn.Config(app, log_level="warning", access_log=False)).run([listening])
    finally:
        files.forget(address)
        # Before the start lock, which a stopping server holds until it exits: the next server,
        # which waits for that lock, must find this one gone.
        alive.close()


def _take_settled_overrides(app: Any) -> dict[Any, Any]:
    """Take the app's dependency overrides off it, where each returns the very object the
    dependency it overrides returns (then they change nothing), and return them.

    While any override is set, FastAPI analyses every dependency of every route again at each
    request (fastapi/fastapi#14441): a sixth of this server's time, ~5 ms a request here.
    Tiled's one override, of `get_settings`, edits and returns the settings object that
    `get_settings` caches: once it ran (Tiled's startup runs it), the two are the same."""
    import inspect

    overrides = dict(app.dependency_overrides)
    for original, override in overrides.items():
        takes_none = not (
            inspect.signature(original).parameters or inspect.signature(override).parameters
        )
        if not takes_none or override() is not original():
            return {}
    app.dependency_overrides.clear()
    return overrides


def _hold_alive(files: ServerFiles) -> Lock | None:
    """The lock that says this server runs, or None where another server serves the catalog.
    One that holds it without saying where it listens is ending (killed as it started, say: the
    kernel may release its start lock first): wait for it to go."""
    deadline = time.monotonic() + 10.0
    while (alive := files.try_hold("alive")) is None:
        if files.read() is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    return alive


def _say_ready(address: Address, *, created: bool) -> None:
    """Tell the client that started this process where the server listens, then say nothing
    more on stdout (that client stops reading, or has gone)."""
    with contextlib.suppress(BrokenPipeError):
        print(json.dumps({**asdict(address), "created": created}), flush=True)
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), sys.stdout.fileno())


async def _raise_in_client(directory: Path, request: Any, exc: Exception) -> Any:
    """Name the exception that a request raised, for `ServerTransport` to raise."""
    from fastapi.responses import JSONResponse

    if "database or disk is full" in str(exc):  # SQLite's words, amid its SQL statement
        exc = OSError(
            errno.ENOSPC,
            f"the catalog's disk is full ({directory}): free space there, or move the catalog "
            "(ophyd-scmos catalog sync); SQLite could not write",
        )
    return JSONResponse(
        status_code=500, content={"detail": str(exc)}, headers={ERROR_HEADER: type(exc).__name__}
    )


class _Usage:
    """Whether a server is still used: requests within its idle time, or processes that keep
    it."""

    def __init__(self, files: ServerFiles, address: Address, idle: float) -> None:
        self.files, self.address, self.idle = files, address, idle
        self.requests, self.last_request = 0, time.monotonic()
        self.held: list[Lock] = []  # the locks a stopping server keeps until it exits
        self.catalog = _identity(files.dir.parent)

    def serves_its_catalog(self) -> bool:
        """Its catalog's directory is still the one it opened: not deleted, nor deleted and
        made anew (a server of the old database would send the new one's clients there,
        to fail writing a file that is gone)."""
        return _identity(self.files.dir.parent) == self.catalog

    def over(self, state: Any) -> bool:
        """No request for `idle` seconds and no process keeping the server; or its catalog
        deleted, or replaced."""
        if not self.serves_its_catalog():
            return True
        if state.total_requests != self.requests or state.tasks:
            self.requests, self.last_request = state.total_requests, time.monotonic()
            return False
        if time.monotonic() - self.last_request < self.idle:
            return False
        unused = self.files.try_hold("kept")
        if unused is None:
            return False
        self.held.append(unused)  # a process that comes now waits until this one has gone
        return True

    def stop(self) -> None:
        """Hold the start lock until the process exits, and forget where it listened: a
        client meanwhile starts a new server, which starts once this one has gone."""
        if self.serves_its_catalog():
            self.held.append(self.files.hold("start"))
            self.files.forget(self.address)


def _identity(directory: Path) -> tuple[int, int] | None:
    """Which directory is at `directory` now (device and inode), None where there is none."""
    try:
        found = os.stat(directory)
    except OSError:
        return None
    return (found.st_dev, found.st_ino)


def idle_seconds() -> float:
    """How long a server waits, unused, before it stops: ``$OPHYD_SCMOS_CATALOG_IDLE``."""
    text = os.environ.get(IDLE_ENV) or str(DEFAULT_IDLE)
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ValueError(f"{IDLE_ENV}={text!r}: expected seconds, a number >= 0")
    return seconds


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--idle", type=float, default=DEFAULT_IDLE, help="seconds unused")
    parser.add_argument("directory", type=Path)
    parser.add_argument("readable", type=Path, nargs="+")
    args = parser.parse_args()
    serve(args.directory, tuple(args.readable), args.idle)
