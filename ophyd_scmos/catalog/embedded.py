"""The embedded catalog: Tiled's server app on SQLite, for this user, no network port opened to
others.

`open_catalog` is the one way to a catalog of runs, embedded or a Tiled server by URL, so code
written against one runs against the other. An embedded catalog is served by its local server
(`ophyd_scmos.catalog.local_server`), which the first process to open it starts and every other
shares, or on request by an app inside the process. Why SQLite and why the whole filesystem is
readable is told in docs/architecture.md ("Catalogs").
"""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import copy
import errno
import functools
import ipaddress
import logging
import os
import socket
import sqlite3
import sys
import threading
import urllib.parse
import urllib.request
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ophyd_scmos.paths import default_catalog_dir

if TYPE_CHECKING:
    from tiled.client.container import Container
    from tiled.client.context import Context

    from ophyd_scmos.catalog.local_server import LocalServer

__all__ = [
    "CATALOG_ENV",
    "CatalogUnavailable",
    "default_catalog_dir",
    "open_catalog",
    "reaching",
    "server_url",
    "start_local_server",
]

CATALOG_DB = "catalog.db"  #: run metadata: the Tiled catalog database
SQLITE_HEADER = b"SQLite format 3\x00"  #: how every SQLite database file begins
TABLES_DB = "tables.sqlite"  #: event tables written by TiledWriter
PLACE = ".place"  #: the directory the database names its tables and arrays in
DATA_DIR = "data"  #: arrays Tiled itself writes (e.g. event arrays too big for a table cell)
#: The root spec that makes a client a `CatalogOfBlueskyRuns` (catalog[-1], scan ids, partial
#: uids). Version 3 is the SQL layout TiledWriter writes.
BLUESKY_CATALOG_SPEC = {"name": "CatalogOfBlueskyRuns", "version": "3.0"}
CATALOG_ENV = "OPHYD_SCMOS_CATALOG"  #: the catalog `open_catalog()` opens when given none
#: Local servers need `fcntl`'s file locks (POSIX); elsewhere each process serves its own.
LOCAL_SERVERS = os.name == "posix"
JSON_SEQ = "application/json-seq"  #: the media type of a run's document stream
JSON_SEQ_EXPORTER = "bluesky_tiled_plugins.exporters:json_seq_exporter"
#: Tiled reads run files with this adapter, which first checks that the file is whole
#: (`ophyd_scmos.catalog.hdf5`); an import path, as a server's configuration names it.
ADAPTERS_BY_MIMETYPE = {"application/x-hdf5": "ophyd_scmos.catalog.hdf5:CheckedHDF5Adapter"}

PathLike = str | os.PathLike[str]


def open_catalog(
    path: PathLike | None = None,
    *,
    readable: Sequence[PathLike] | None = None,
    api_key: str | None = None,
    in_process: bool = False,
) -> Container:
    """Open a catalog of Bluesky runs: embedded (a directory) or a Tiled server (a URL).

    `path`: a directory (created if missing) for an embedded catalog, or an ``http(s)://``
    URL of a Tiled server. None: ``$OPHYD_SCMOS_CATALOG`` (either kind) where it is set, so
    a facility points unchanged scripts at its server by configuration alone; otherwise
    `default_catalog_dir()` (its creation is announced on stderr, since the user never chose
    that place).
    `readable` (embedded only): the directories whose files the catalog may serve; None (the
    default) means the whole filesystem, see docs/architecture.md ("Catalogs") for why. The
    catalog's own data directory is always readable.
    `api_key` (server only; ignored by the embedded catalog, which needs none): defaults to
    the ``TILED_API_KEY`` environment variable.
    `in_process` (embedded only): serve the catalog from an app inside this process instead
    of the catalog's local server, which the first process to open the catalog starts and
    later ones share (it stops once no process holds a client of it and it has had no
    request for ``$OPHYD_SCMOS_CATALOG_IDLE`` seconds, 600 by default). In-process, every
    process pays Tiled's start-up (2-4 s) and leaves nothing running behind it. Always so
    where there is no ``fcntl`` (Windows).

    Opening the same embedded catalog again in the same process returns a new client over the
    same connection (or in-process app), so repeated ``open_catalog()[uid]`` calls are cheap.
    Other processes may open it at the same time, and see at once what each writes. A
    connection ends once no client of it is left (an in-process app at interpreter exit), or
    earlier by ``catalog.context.close()`` (which ends every client of that catalog in this
    process; the next `open_catalog` opens a new one).
    """
    if path is None:
        path = os.environ.get(CATALOG_ENV) or None
    if is_url(path):
        if readable is not None or in_process:
            raise ValueError(
                "readable= and in_process= apply to embedded catalogs only: a Tiled server's "
                "readable storage is part of the server's configuration"
            )
        from tiled.client import from_uri

        _refuse_unreachable(str(path))
        return from_uri(
            str(path),
            api_key=api_key or os.environ.get("TILED_API_KEY"),
            structure_clients=_client_classes(),
        )

    announce = path is None
    directory = embedded_directory(path)
    assert directory is not None  # not a URL, here
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"an embedded catalog is a directory, not a file: {directory}")
    _check_database(directory / CATALOG_DB)
    context = _embedded_context(
        directory,
        readable_roots(readable),
        announce=announce,
        in_process=in_process or not LOCAL_SERVERS,
    )
    from tiled.client import from_context

    return from_context(context, structure_clients=_client_classes())


def _check_database(db: Path) -> None:
    """Refuse a catalog database that is no SQLite database (cut short, overwritten) before
    a server starts on it, adding its tables beside it."""
    with contextlib.suppress(FileNotFoundError), open(db, "rb") as f:
        head = f.read(len(SQLITE_HEADER))
        if head and head != SQLITE_HEADER:
            raise OSError(
                f"{db} is not an SQLite database (damaged, or overwritten?): the catalog "
                "cannot be opened; restore it from a copy"
            )


def start_local_server(
    path: PathLike | None = None, *, readable: Sequence[PathLike] | None = None
) -> None:
    """Have the embedded catalog's local server start now, without waiting for it, where
    none runs: this process's next `open_catalog` of that catalog finds it started (or
    starting). For a session with imports to do meanwhile, on the other core (the IPython
    profile). Nothing for a server's URL, or where there are no local servers.
    """
    directory = embedded_directory(path)
    if directory is None or not LOCAL_SERVERS:
        return
    key = (directory, readable_roots(readable))
    with _servers_lock:
        connected = _servers.get((*key, False))
        if key not in _started and (connected is None or connected.context() is None):
            _started[key] = _local_server(*key)


def _client_classes() -> Any:
    """A private copy of the map from Tiled specs to client classes, for each catalog client.

    bluesky-tiled-plugins' ``.v2`` views (databroker's v2 API: ``catalog.v2``, ``run.v2``,
    and ``catalog.v1``, which reads through them) copy their client's map with `copy.copy`
    and point "BlueskyRun" at the v2 class in the copy. Tiled's `OneShotCachedMap` shares its
    dict between copies, so the change reached every client in the process, and
    ``run["primary"]["cam_image"]`` failed with KeyError from then on. A map whose copies
    are real copies keeps each view to itself.
    """
    from tiled.client.container import DEFAULT_STRUCTURE_CLIENT_DISPATCH, Container

    Container.discover_clients_from_entrypoints()  # adds BlueskyRun & co. to the defaults
    classes = _client_map_type().copy_of(DEFAULT_STRUCTURE_CLIENT_DISPATCH["numpy"])
    classes.set("array", _array_client_type)
    return classes


@functools.cache
def _array_client_type() -> type[Any]:
    from tiled.client.array import ArrayClient

    class ArrayOfItsShape(ArrayClient):
        """Tiled's array client, whose whole read is the rows its shape names. A node taken
        while its run grew (a step scan's images, read once the scan went on) says the
        shape it had then; Tiled's server refuses to send an array whole in another shape
        than the client expects (500, retried for ~25 s), and sends a slice of it."""

        def read(self, slice: Any = None) -> Any:
            if slice is None and self.shape:
                slice = (builtins.slice(0, self.shape[0]),)
            return super().read(slice)

    return ArrayOfItsShape


@functools.cache
def _client_map_type() -> type[Any]:
    from tiled.utils import OneShotCachedMap

    class ClientClasses(OneShotCachedMap):
        @classmethod
        def copy_of(cls, mapping: OneShotCachedMap) -> ClientClasses:
            clone = cls.__new__(cls)
            clone.__setstate__(dict(mapping.__getstate__()))
            return clone

        def __copy__(self) -> ClientClasses:
            return self.copy_of(self)

    return ClientClasses


def is_url(path: PathLike | None) -> bool:
    """Whether `open_catalog(path)` opens a Tiled server (an http(s) URL), not a directory."""
    return isinstance(path, str) and path.lower().startswith(("http://", "https://"))


def embedded_directory(location: PathLike | None) -> Path | None:
    """The directory of the embedded catalog `open_catalog(location)` opens (None: after
    ``$OPHYD_SCMOS_CATALOG``, the default one); None for a server's URL."""
    if location is None:
        location = os.environ.get(CATALOG_ENV) or None
    if is_url(location):
        return None
    return absolute_path(default_catalog_dir() if location is None else location)


def server_url(location: str | None) -> str | None:
    """The URL of the catalog server `open_catalog(location)` opens, None for an embedded
    catalog."""
    location = location or os.environ.get(CATALOG_ENV)
    return location if is_url(location) else None


class CatalogUnavailable(OSError):
    """The catalog cannot be used: its server not reached, or an embedded catalog's
    directory or database unusable. Says where, and what to check."""


@contextlib.contextmanager
def reaching(location: str | None) -> Iterator[None]:
    """Around opening (or using) the catalog at `location`, as `open_catalog` takes it: a
    server that cannot be reached (refused, no such host, no answer, after Tiled's own
    retries), or an embedded catalog whose directory cannot be used (a file, not writable, a
    damaged database its server cannot start on) raises `CatalogUnavailable` in one line:
    the fix is the URL, the server or the directory, not the run."""
    import httpx

    url = server_url(location)
    if url is None:
        from ophyd_scmos.catalog.local_server import CatalogServerError

        try:
            yield
        except CatalogUnavailable:
            raise
        except (OSError, CatalogServerError, httpx.TransportError) as exc:
            raise CatalogUnavailable(f"cannot open the catalog: {exc}") from None
        return

    try:
        yield
    except httpx.TransportError as exc:
        raise _unreachable(url, exc) from None


def _unreachable(url: str, why: BaseException) -> CatalogUnavailable:
    return CatalogUnavailable(
        f"cannot reach the catalog at {url} ({why}): check that its server is running and "
        "that the URL is right"
    )


#: seconds a first connection to a catalog server may take before Tiled's client is left to it
CONNECT_SECONDS = 3.0


def _refuse_unreachable(url: str) -> None:
    """Raise `CatalogUnavailable` at once where nothing can answer at the URL's host and
    port (connection refused, no such host, no route), instead of after Tiled's client has
    retried for ~25 s. A network that does not answer, and a URL reached through a proxy,
    are left to the client and its retries."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return  # not a port: the client says so
    host = parts.hostname
    proxies = urllib.request.getproxies()
    proxied = proxies.get(parts.scheme) or proxies.get("all")
    if host is None or (proxied and not urllib.request.proxy_bypass(host)):
        return
    try:
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
    except (ConnectionRefusedError, socket.gaierror) as exc:
        raise _unreachable(url, exc) from None
    except OSError as exc:
        if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            raise _unreachable(url, exc) from None


def absolute_path(path: PathLike) -> Path:
    """Absolute but not resolved: Tiled compares paths as text, and resource documents carry
    the path the camera was given, symlinks included."""
    return Path(path).expanduser().absolute()


def readable_roots(readable: Sequence[PathLike] | None) -> tuple[Path, ...]:
    """The directories an embedded catalog serves files from, given `open_catalog`'s
    `readable`: sorted, each once."""
    if readable is None:
        return _filesystem_roots()
    return tuple(sorted({absolute_path(p) for p in readable}))


def _filesystem_roots() -> tuple[Path, ...]:
    if os.name != "nt":
        return (Path("/"),)
    import ctypes
    import string

    mask = ctypes.windll.kernel32.GetLogicalDrives()  # type: ignore[attr-defined]
    return tuple(Path(f"{d}:\\") for i, d in enumerate(string.ascii_uppercase) if mask >> i & 1)


# One connection (or in-process app) per (catalog directory, readable roots) and process: every
# client of a catalog shares it, so repeated opens neither pay the start-up nor leave a thread
# or socket behind each time. An in-process app is held for the life of the process (so is its
# event-loop thread); a connection to a local server only as long as clients of it are alive,
# since it keeps the server from stopping (`LocalServer.context`). The pid guards against a
# forked child reusing its parent's: an app's event-loop thread does not exist in the child,
# and a connection must not be shared between processes.
@dataclass
class _Server:
    pid: int
    held: Context | None  #: an in-process app's context
    ref: weakref.ref[Context]

    def context(self) -> Context | None:
        """The context, where it is still open (and this process's)."""
        context = self.ref()
        if context is None or self.pid != os.getpid():
            return None
        client = context.http_client
        # starlette's TestClient (the in-process transport) drops its portal when closed.
        closed = client.is_closed or getattr(client, "portal", True) is None
        return None if closed else context


_servers: dict[tuple[Path, tuple[Path, ...], bool], _Server] = {}
_servers_lock = threading.Lock()
_started: dict[tuple[Path, tuple[Path, ...]], LocalServer] = {}  # by `start_local_server`


def keeps_streams(context: Context) -> bool:
    """Whether the catalog of `context` keeps streams that followers of a node subscribe to,
    so that a writer tells it when a node's stream ends (Tiled's ``close_stream``). The
    embedded catalog's server (`build_app`) keeps none: telling it would cost a request a node
    (~15 ms here, four for a camera's run) that changes nothing."""
    return _embedded_directory_of(context) is None


def catalog_location(client: Any) -> str:
    """What names the catalog node `client` is of, alike in every process that opens it: an
    embedded catalog's directory (its local server's port changes), else the node's URL. A
    run's journal keeps it, so `recover` writes a run the catalog never got only into that
    catalog."""
    directory = _embedded_directory_of(client.context)
    if directory is None:
        return str(client.uri)
    return "/".join([str(directory), *(part for part in client.path_parts if part)])


def same_catalog(one: str, other: str) -> bool:
    """Whether two `catalog_location`s name one catalog: the same, or a server's node by
    two names of this machine (``localhost``, ``127.0.0.1``, ``[::1]``), as a journal
    written through one and `recover` given the other say it."""
    if one == other:
        return True
    a, b = urllib.parse.urlsplit(one), urllib.parse.urlsplit(other)
    try:
        ports = (a.port, b.port)
    except ValueError:  # not a URL's port: not a server's location
        return False
    return (
        (a.scheme, ports[0], a.path, a.query) == (b.scheme, ports[1], b.path, b.query)
        and a.scheme in ("http", "https")
        and _loopback(a.hostname)
        and _loopback(b.hostname)
    )


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name
        return False


def _embedded_directory_of(context: Context) -> Path | None:
    """The directory of the embedded catalog `context` is a connection to (None: a server's)."""
    with _servers_lock:
        return next((key[0] for key, server in _servers.items() if server.ref() is context), None)


def _embedded_context(
    directory: Path, readable: tuple[Path, ...], *, announce: bool, in_process: bool
) -> Context:
    key = (directory, readable, in_process)
    with _servers_lock:
        server = _servers.get(key)
        context = server.context() if server is not None else None
        if context is None:
            if in_process:
                context, created = _start_in_process(directory, readable)
            else:
                local = _started.pop((directory, readable), None)
                local = local or _local_server(directory, readable)
                context, created = _connect(local), local.created
            if created and announce:
                print(f"ophyd-scmos: created a Tiled catalog in {directory}", file=sys.stderr)
            held = context if in_process else None
            _servers[key] = _Server(os.getpid(), held, weakref.ref(context))
        return context


def _local_server(directory: Path, readable: tuple[Path, ...]) -> LocalServer:
    """The catalog's local server: found, or starting (`ophyd_scmos.catalog.local_server`)."""
    from ophyd_scmos.catalog.local_server import LocalServer

    return LocalServer(directory, readable)


def _connect(server: LocalServer) -> Context:
    """A context on a local server, once it answers."""
    # What the clients need, imported while a server starts (in another process, on another
    # core): the root's client class imports bluesky-tiled-plugins, the longest of them.
    import bluesky_tiled_plugins  # noqa: F401
    import tiled.client.context  # noqa: F401

    return server.context()


def _start_in_process(directory: Path, readable: tuple[Path, ...]) -> tuple[Context, bool]:
    """Serve the catalog from an app inside this process; and whether it was created."""
    with _quiet_tiled():
        from tiled.client.context import Context

        app, created = build_app(directory, readable)
        # from_app starts the app's event loop on a thread and registers its shutdown with
        # threading's exit hooks, which run before non-daemon threads are joined: no hang.
        return Context.from_app(app), created


def build_app(
    directory: Path, readable: tuple[Path, ...], *, api_key: str | None = None
) -> tuple[Any, bool]:
    """Tiled's server app over the catalog in `directory` (created if new), answering requests
    with `api_key` (None: Tiled makes one up), and whether the catalog was created."""
    (directory / DATA_DIR).mkdir(parents=True, exist_ok=True)

    from tiled.catalog import from_uri as catalog_from_uri
    from tiled.config import Authentication
    from tiled.server.app import build_app as build_tiled_app

    db = directory / CATALOG_DB
    _wait_for_locked_tables()
    with _init_lock(directory):
        _use_wal(directory / TABLES_DB)
        created = not db.exists() or db.stat().st_size == 0
        if created:
            _initialize(f"sqlite:///{db}")
        _follow_a_move(directory)
        tree = catalog_from_uri(
            f"sqlite:///{db}",
            specs=[BLUESKY_CATALOG_SPEC],
            writable_storage=[directory / DATA_DIR, f"sqlite:///{directory / TABLES_DB}"],
            readable_storage=list(readable),
            adapters_by_mimetype=dict(ADAPTERS_BY_MIMETYPE),
        )
    app = build_tiled_app(
        tree,
        authentication=Authentication(single_user_api_key=api_key),
        serialization_registry=_serializers(),
    )
    return app, created


def _follow_a_move(directory: Path) -> None:
    """The catalog's database names the event tables and the arrays Tiled wrote by their
    absolute paths: a catalog directory moved (or copied) read its runs' columns from where
    it was, or from nowhere. Named here again, under the lock of its opening. `PLACE` keeps
    where they are named for, so that an opening where nothing moved leaves the database
    alone (a forked child's SQLite must not meet its parent's locks)."""
    here, place = directory.resolve(), directory / PLACE
    with contextlib.suppress(OSError):
        if place.read_text(encoding="utf-8") == str(here):
            return
    with contextlib.closing(sqlite3.connect(directory / CATALOG_DB)) as db, db:
        tables = db.execute(
            "SELECT DISTINCT data_uri FROM assets WHERE data_uri LIKE ?",
            (f"sqlite://localhost/%/{TABLES_DB}",),
        ).fetchall()
        for (uri,) in tables:
            there = Path(uri[len("sqlite://localhost/") : -len(TABLES_DB) - 1])
            if there.resolve() == here:
                continue
            db.execute(
                "UPDATE assets SET data_uri = ? WHERE data_uri = ?",
                (f"sqlite://localhost/{directory / TABLES_DB}", uri),
            )
            old = f"file://localhost{there / DATA_DIR}/"
            db.execute(
                "UPDATE assets SET data_uri = ? || substr(data_uri, ?) WHERE data_uri LIKE ?",
                (f"file://localhost{directory / DATA_DIR}/", len(old) + 1, old + "%"),
            )
    with contextlib.suppress(OSError):  # a catalog this user only reads: checked each time
        place.write_text(str(here), encoding="utf-8")


def _initialize(uri: str) -> None:
    """Create the tables of a new catalog database and stamp their schema's revision, as
    ``tiled catalog init`` does, but in this process: Tiled's ``init_if_not_exists`` runs
    that command in a new Python, ~5 s of imports here (half a new catalog's server start),
    because its caller may run an event loop. A thread of its own runs none."""
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine
    from tiled.alembic_utils import stamp_head
    from tiled.catalog.alembic_constants import ALEMBIC_DIR, ALEMBIC_INI_TEMPLATE_PATH
    from tiled.catalog.core import initialize_database
    from tiled.utils import ensure_specified_sql_driver

    uri = ensure_specified_sql_driver(uri)

    async def create_tables() -> None:
        engine = create_async_engine(uri)
        try:
            await initialize_database(engine)
        finally:
            await engine.dispose()

    def initialize() -> None:
        asyncio.run(create_tables())
        stamp_head(ALEMBIC_INI_TEMPLATE_PATH, ALEMBIC_DIR, uri)

    with (
        warnings.catch_warnings(),  # Alembic's, about the configuration Tiled writes for it
        concurrent.futures.ThreadPoolExecutor(1, "scmos-catalog-init") as thread,
    ):
        warnings.filterwarnings("ignore", "No path_separator found", DeprecationWarning)
        thread.submit(initialize).result()


def _serializers() -> Any:
    """Tiled's exporters plus the run document stream that ``run.documents()`` asks for,
    which Tiled does not offer unless told (a server gets it from `server_config`)."""
    from tiled.media_type_registration import default_serialization_registry
    from tiled.utils import import_object

    # A deep copy: a shallow one shares its lookup table with Tiled's process-wide default.
    registry = copy.deepcopy(default_serialization_registry)
    registry.register("BlueskyRun", JSON_SEQ, import_object(JSON_SEQ_EXPORTER))
    return registry


def _use_wal(path: Path) -> None:
    """Put an SQLite database in write-ahead-log mode (persistent, stored in the file).

    Tiled does so for its catalog database but not for SQL table storage, which it opens
    through ADBC with no busy timeout: in the default rollback-journal mode a process reading
    a run's table while another appends to it fails at once with "database is locked". In WAL
    mode readers and the writer do not block each other.
    """
    # Errors are left to Tiled: busy (another process is switching it), or a read-only copy.
    with (
        contextlib.suppress(sqlite3.Error),
        contextlib.closing(sqlite3.connect(path, timeout=10)) as connection,
    ):
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            connection.execute("PRAGMA journal_mode=WAL")


#: How long a use of the event tables waits for another process's write (seconds): as long
#: as the catalog database's own writes wait (Tiled's SQLAlchemy engine), and twice over.
TABLES_BUSY_TIMEOUT = 10.0


@functools.cache
def _wait_for_locked_tables() -> None:
    """Make each use of the event tables (Tiled's SQLite through ADBC) wait for another
    process's write rather than fail; once per process.

    ADBC opens SQLite with no busy timeout, and keeps a deferred transaction open on every
    connection, in which Tiled reads before it writes: SQLite cannot wait to turn such a read
    into a write, and fails at once with "database is locked" while another process writes
    the file (an in-process catalog beside the local server, a server replaced after a kill).
    The run being written then loses its events and its stop in the catalog. So each
    connection, when taken from the pool, starts its transaction by taking the write lock,
    which waits up to the busy timeout.
    """
    import adbc_driver_manager.dbapi
    import sqlalchemy.event
    import sqlalchemy.pool

    def is_sqlite(connection: Any) -> bool:
        return isinstance(connection, adbc_driver_manager.dbapi.Connection) and (
            connection.adbc_get_info().get("vendor_name") == "SQLite"
        )

    def on_connect(connection: Any, record: Any) -> None:
        record.info["scmos_sqlite"] = sqlite = is_sqlite(connection)
        if sqlite:
            with connection.cursor() as cursor:
                cursor.execute(f"PRAGMA busy_timeout = {int(TABLES_BUSY_TIMEOUT * 1000)}")

    def on_checkout(connection: Any, record: Any, _proxy: Any) -> None:
        if record.info.get("scmos_sqlite"):
            with connection.cursor() as cursor:  # ends ADBC's deferred BEGIN, which holds
                cursor.execute("ROLLBACK")  # nothing yet, for one that waits for the lock
                cursor.execute("BEGIN IMMEDIATE")

    sqlalchemy.event.listen(sqlalchemy.pool.Pool, "connect", on_connect)
    sqlalchemy.event.listen(sqlalchemy.pool.Pool, "checkout", on_checkout)


@contextlib.contextmanager
def _quiet_tiled() -> Iterator[None]:
    """Hide what Tiled says on every in-process start: its version on stderr, and starlette's
    warning that its TestClient (Tiled's in-process transport) prefers `httpx2`."""
    app_logger = logging.getLogger("tiled.server.app")  # sets its own level when imported
    level = app_logger.level
    app_logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*starlette\.testclient.*httpx2")
            yield
    finally:
        app_logger.setLevel(level)


@contextlib.contextmanager
def _init_lock(directory: Path) -> Iterator[Any]:
    """Serialise "is the database new? then create it" between processes opening a new
    catalog at the same moment (POSIX only; elsewhere the race is left open)."""
    try:
        import fcntl
    except ImportError:
        yield None
        return
    with open(directory / ".init.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield lock
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# Forked children


def _after_fork_in_child() -> None:
    """Disown the parent's connections and in-process apps in a forked child
    (multiprocessing's default on Linux before Python 3.14).

    A connection is the parent's to use, and an app's event-loop thread was not forked. Tiled
    registers each app's shutdown with threading's exit hooks, which a child also runs
    (multiprocessing calls them when the target returns): waiting on a loop that does not
    exist, the child would hang at exit. The parent's database engines are bound to those
    loops too, so a child that opens a catalog in-process must build new ones.
    """
    global _servers_lock
    _servers_lock = threading.Lock()  # may have been held by another thread at fork
    contexts = (server.ref() for server in _servers.values())
    clients = {id(context.http_client) for context in contexts if context is not None}
    _servers.clear()
    _started.clear()
    hooks = getattr(threading, "_threading_atexits", None)
    if clients and isinstance(hooks, list):
        hooks[:] = [
            hook
            for hook in hooks
            if id(getattr(getattr(hook, "func", None), "__self__", None)) not in clients
        ]
    pools = sys.modules.get("tiled.server.connection_pool")
    if clients and pools is not None:
        pools._connection_pools.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
