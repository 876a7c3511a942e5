"""The embedded catalog: Tiled's server app inside this process, on SQLite, no network port.

`open_catalog` is the one way to a catalog of runs, embedded or a Tiled server by URL, so code
written against one runs against the other. Every client of an embedded catalog in a process
shares one in-process server, started on first use; why SQLite and why the whole filesystem
is readable is told in docs/architecture.md ("Catalogs").
"""

from __future__ import annotations

import contextlib
import copy
import functools
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

from ophyd_scmos.paths import default_catalog_dir

if TYPE_CHECKING:
    from tiled.client.container import Container
    from tiled.client.context import Context

__all__ = ["CATALOG_ENV", "default_catalog_dir", "open_catalog"]

CATALOG_DB = "catalog.db"  #: run metadata: the Tiled catalog database
TABLES_DB = "tables.sqlite"  #: event tables written by TiledWriter
DATA_DIR = "data"  #: arrays Tiled itself writes (e.g. event arrays too big for a table cell)
#: The root spec that makes a client a `CatalogOfBlueskyRuns` (catalog[-1], scan ids, partial
#: uids). Version 3 is the SQL layout TiledWriter writes.
BLUESKY_CATALOG_SPEC = {"name": "CatalogOfBlueskyRuns", "version": "3.0"}
CATALOG_ENV = "OPHYD_SCMOS_CATALOG"  #: the catalog `open_catalog()` opens when given none
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

    Opening the same embedded catalog again in the same process returns a new client over the
    same in-process server, so repeated ``open_catalog()[uid]`` calls are cheap. Other
    processes may open it at the same time. The server stops at interpreter exit, or earlier
    by ``catalog.context.close()`` (which ends every client of that catalog in this process;
    the next `open_catalog` starts a new one).
    """
    if path is None:
        path = os.environ.get(CATALOG_ENV) or None
    if path is not None and _is_url(path):
        if readable is not None:
            raise ValueError(
                "readable= applies to embedded catalogs only: a Tiled server's readable "
                "storage is part of the server's configuration"
            )
        from tiled.client import from_uri

        return from_uri(
            str(path),
            api_key=api_key or os.environ.get("TILED_API_KEY"),
            structure_clients=_client_classes(),
        )

    from tiled.client import from_context

    announce = path is None
    directory = absolute_path(default_catalog_dir() if path is None else path)
    roots = _filesystem_roots() if readable is None else tuple(absolute_path(p) for p in readable)
    context = _embedded_context(directory, roots, announce=announce)
    return from_context(context, structure_clients=_client_classes())


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
    return _client_map_type().copy_of(DEFAULT_STRUCTURE_CLIENT_DISPATCH["numpy"])


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


def _is_url(path: PathLike) -> bool:
    return isinstance(path, str) and path.lower().startswith(("http://", "https://"))


def absolute_path(path: PathLike) -> Path:
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
                specs=[BLUESKY_CATALOG_SPEC],
                writable_storage=[directory / DATA_DIR, f"sqlite:///{directory / TABLES_DB}"],
                readable_storage=list(readable),
                adapters_by_mimetype=dict(ADAPTERS_BY_MIMETYPE),
                init_if_not_exists=created,
            )
        # from_app starts the app's event loop on a thread and registers its shutdown with
        # threading's exit hooks, which run before non-daemon threads are joined: no hang.
        context = Context.from_app(build_app(tree, serialization_registry=_serializers()))
    if created and announce:
        print(f"ophyd-scmos: created a Tiled catalog in {directory}", file=sys.stderr)
    return context


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
