"""Open the Tiled catalog that runs are written to (`TiledWriter`) and read back from.

Two kinds of catalog, one call::

    catalog = open_catalog()                      # embedded, in the user's data directory
    catalog = open_catalog("/data/scmos/catalog") # embedded, in that directory
    catalog = open_catalog("https://tiled.example.org/api/v1", api_key=...)  # a Tiled server

    RE.subscribe(TiledWriter(catalog))
    frames = open_catalog()[uid]["primary"]["cam_image"].read()   # (N, k, H, W)

The embedded catalog is a Tiled server app running inside this process (no network port):
run metadata in ``<dir>/catalog.db`` (SQLite), event tables in ``<dir>/tables.sqlite``, larger
event arrays in ``<dir>/data``. Image frames stay in the camera's HDF5 files, wherever they
were written; the catalog only points at them.

Why SQLite for the tables and not DuckDB (Tiled's own default): DuckDB takes an exclusive
lock on its file, so a second process (a notebook reading while the RunEngine writes) cannot
open the catalog. SQLite in WAL mode allows one writer and many readers across processes.

Why the whole filesystem is readable by default: Tiled refuses to serve a ``file://`` asset
outside its "readable storage" ("Refusing to serve file://..."), a guard for multi-user
servers where clients must not make the server read arbitrary paths. The embedded catalog is
a single-user server running as the user in the user's own process, so the guard protects
nothing there: it can only read what the user can read anyway. Declaring the filesystem
root(s) readable lets the camera write to any directory (``/data/scmos``, a new disk next
month) and lets a new process open the catalog without being told where the data went.
A persisted list of data directories would break the day files are moved, written somewhere
new from another process, or the list is lost. Pass ``readable=[...]`` to restrict it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

if TYPE_CHECKING:
    from tiled.client.container import Container
    from tiled.client.context import Context

__all__ = ["default_catalog_dir", "open_catalog"]

CATALOG_DB = "catalog.db"  #: run metadata: the Tiled catalog database
TABLES_DB = "tables.sqlite"  #: event tables written by TiledWriter
DATA_DIR = "data"  #: arrays Tiled itself writes (e.g. event arrays too big for a table cell)

PathLike = str | os.PathLike[str]


def default_catalog_dir() -> Path:
    """Where `open_catalog()` keeps the embedded catalog when no path is given."""
    return Path(platformdirs.user_data_dir("ophyd-scmos")) / "catalog"


def open_catalog(
    path: PathLike | None = None,
    *,
    readable: Sequence[PathLike] | None = None,
    api_key: str | None = None,
) -> Container:
    """Open a catalog of Bluesky runs: embedded (a directory) or a Tiled server (a URL).

    `path`: None for `default_catalog_dir()` (its creation is announced on stderr, since the
    user never chose that place), a directory (created if missing) for an embedded catalog,
    or an ``http(s)://`` URL of a Tiled server.
    `readable` (embedded only): the directories whose files the catalog may serve; None (the
    default) means the whole filesystem, see the module docstring for why. The catalog's own
    data directory is always readable.
    `api_key` (server only; ignored by the embedded catalog, which needs none): defaults to
    the ``TILED_API_KEY`` environment variable.

    Opening the same embedded catalog again in the same process returns a new client over the
    same in-process server, so repeated ``open_catalog()[uid]`` calls are cheap. Other
    processes may open it at the same time. The server stops at interpreter exit, or earlier
    by ``catalog.context.close()`` (which ends every client of that catalog in this process;
    the next `open_catalog` starts a new one).
    """
    if path is not None and _is_url(path):
        if readable is not None:
            raise ValueError(
                "readable= applies to embedded catalogs only: a Tiled server's readable "
                "storage is part of the server's configuration"
            )
        from tiled.client import from_uri

        return from_uri(str(path), api_key=api_key or os.environ.get("TILED_API_KEY"))

    from tiled.client import from_context

    announce = path is None
    directory = _absolute(default_catalog_dir() if path is None else path)
    roots = _filesystem_roots() if readable is None else tuple(_absolute(p) for p in readable)
    return from_context(_embedded_context(directory, roots, announce=announce))


def _is_url(path: PathLike) -> bool:
    return isinstance(path, str) and path.lower().startswith(("http://", "https://"))


def _absolute(path: PathLike) -> Path:
    """Absolute but not resolved: Tiled compares paths as text, and resource documents carry
    the path the camera was given, symlinks included."""
    return Path(path).expanduser().absolute()


def _filesystem_roots() -> tuple[Path, ...]:
    if os.name != "nt":
        return (Path("/"),)
    import ctypes
    import string

    mask = ctypes.windll.kernel32.GetLogicalDrives()  # type: ignore[attr-defined]
    return tuple(Path(f"{d}:\\") for i, d in enumerate(string.ascii_uppercase) if mask >> i & 1)


# One in-process server per (catalog directory, readable roots) and process: every client of
# a catalog shares it, so repeated opens neither pay the start-up (~0.5 s) nor leave a server
# thread behind each time. The pid guards against a forked child reusing its parent's server,
# whose event-loop thread does not exist in the child.
@dataclass
class _Server:
    pid: int
    context: Context

    def alive(self) -> bool:
        # starlette's TestClient drops its portal (event-loop thread) when closed.
        portal = getattr(self.context.http_client, "portal", None)
        return self.pid == os.getpid() and portal is not None


_servers: dict[tuple[Path, tuple[Path, ...]], _Server] = {}
_servers_lock = threading.Lock()


def _embedded_context(
    directory: Path, readable: tuple[Path, ...], *, announce: bool = False
) -> Context:
    key = (directory, tuple(sorted(set(readable))))
    with _servers_lock:
        server = _servers.get(key)
        if server is None or not server.alive():
            context = _start_embedded(directory, key[1], announce=announce)
            server = _servers[key] = _Server(os.getpid(), context)
        return server.context


def _start_embedded(directory: Path, readable: tuple[Path, ...], *, announce: bool) -> Context:
    """Build the catalog over `directory` and serve it from an app inside this process."""
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"an embedded catalog is a directory, not a file: {directory}")
    (directory / DATA_DIR).mkdir(parents=True, exist_ok=True)

    from tiled.catalog import from_uri as catalog_from_uri
    from tiled.server.app import build_app

    with _quiet_tiled():
        from tiled.client.context import Context

        db = directory / CATALOG_DB
        with _init_lock(directory):
            _use_wal(directory / TABLES_DB)
            # Tiled initialises a new database in a subprocess (~3 s): only when it is new.
            created = not db.exists() or db.stat().st_size == 0
            tree = catalog_from_uri(
                f"sqlite:///{db}",
                # Makes the root a `CatalogOfBlueskyRuns`: catalog[-1], catalog[scan_id],
                # partial uids. Version 3 is the SQL layout TiledWriter writes.
                specs=[{"name": "CatalogOfBlueskyRuns", "version": "3.0"}],
                writable_storage=[directory / DATA_DIR, f"sqlite:///{directory / TABLES_DB}"],
                readable_storage=list(readable),
                init_if_not_exists=created,
            )
        # from_app starts the app's event loop on a thread and registers its shutdown with
        # threading's exit hooks, which run before non-daemon threads are joined: no hang.
        context = Context.from_app(build_app(tree))
    if created and announce:
        print(f"ophyd-scmos: created a Tiled catalog in {directory}", file=sys.stderr)
    return context


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


def _after_fork_in_child() -> None:
    """Disown the parent's in-process servers in a forked child (multiprocessing's default
    on Linux before Python 3.14).

    Their event-loop threads were not forked. Tiled registers each server's shutdown with
    threading's exit hooks, which a child also runs (multiprocessing calls them when the
    target returns): waiting on a loop that does not exist, the child would hang at exit.
    The parent's database engines are bound to those loops too, so a child that opens a
    catalog must build new ones.
    """
    global _servers_lock
    _servers_lock = threading.Lock()  # may have been held by another thread at fork
    clients = {id(server.context.http_client) for server in _servers.values()}
    _servers.clear()
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
