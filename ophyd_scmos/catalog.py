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

A facility runs the same catalog as a Tiled server on PostgreSQL (`server_config`, started by
``ophyd-scmos serve``); `open_catalog(url)` returns the same client class for both, so code
written against one runs against the other. Both serve each run's documents back
(`documents`), which is how `sync` copies runs from a lab's embedded catalog to a server.
`summarize` and `file_stats` answer "what is in this run" for people (``ophyd-scmos runs``,
``ophyd-scmos show``).
"""

from __future__ import annotations

import contextlib
import copy
import filecmp
import functools
import logging
import math
import os
import shutil
import sqlite3
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import platformdirs

if TYPE_CHECKING:
    import numpy as np
    from tiled.client.container import Container
    from tiled.client.context import Context

__all__ = [
    "FileStats",
    "RunSummary",
    "SyncResult",
    "default_catalog_dir",
    "documents",
    "file_stats",
    "open_catalog",
    "server_command",
    "server_config",
    "summarize",
    "sync",
    "write_server_config",
]

CATALOG_DB = "catalog.db"  #: run metadata: the Tiled catalog database
TABLES_DB = "tables.sqlite"  #: event tables written by TiledWriter
DATA_DIR = "data"  #: arrays Tiled itself writes (e.g. event arrays too big for a table cell)
#: The root spec that makes a client a `CatalogOfBlueskyRuns` (catalog[-1], scan ids, partial
#: uids). Version 3 is the SQL layout TiledWriter writes.
BLUESKY_CATALOG_SPEC = {"name": "CatalogOfBlueskyRuns", "version": "3.0"}
CATALOG_ENV = "OPHYD_SCMOS_CATALOG"  #: the catalog `open_catalog()` opens when given none
JSON_SEQ = "application/json-seq"  #: the media type of a run's document stream
JSON_SEQ_EXPORTER = "bluesky_tiled_plugins.exporters:json_seq_exporter"

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

    `path`: a directory (created if missing) for an embedded catalog, or an ``http(s)://``
    URL of a Tiled server. None: ``$OPHYD_SCMOS_CATALOG`` (either kind) where it is set, so
    a facility points unchanged scripts at its server by configuration alone; otherwise
    `default_catalog_dir()` (its creation is announced on stderr, since the user never chose
    that place).
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
    directory = _absolute(default_catalog_dir() if path is None else path)
    roots = _filesystem_roots() if readable is None else tuple(_absolute(p) for p in readable)
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
def _client_map_type() -> type:
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
                specs=[BLUESKY_CATALOG_SPEC],
                writable_storage=[directory / DATA_DIR, f"sqlite:///{directory / TABLES_DB}"],
                readable_storage=list(readable),
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
# A facility catalog: the same catalog, served by Tiled from PostgreSQL


def server_config(
    postgres: str,
    data_dir: PathLike,
    readable: Sequence[PathLike],
    *,
    tables: str | None = None,
) -> dict[str, Any]:
    """The Tiled configuration of a shared catalog server on PostgreSQL.

    `postgres`: ``postgresql://user:password@host:port/database``, an existing database (the
    server makes its tables on first start). `data_dir`: where the server writes arrays of
    its own. `readable`: the directories the cameras write into, as the server's host sees
    them; Tiled serves no file outside them, and a facility server should not read anywhere
    a client points it at. `tables`: where TiledWriter's event tables go; the same database
    by default.

    Beyond ``tiled serve catalog URI -w ... -r ...``, this gives the root the
    `CatalogOfBlueskyRuns` spec, so a client of the server is the same class as a client of
    the embedded catalog (``catalog[-1]``, scan ids, partial uids), and it turns on the
    document stream behind `documents` and `sync`. The API key is left to the environment
    (``TILED_SINGLE_USER_API_KEY``), not written in the file.
    """
    scheme = urlparse(postgres).scheme
    if scheme.split("+")[0] not in ("postgresql", "postgres"):
        # Not the URI itself in the message: it may hold a password.
        raise ValueError(f"expected a postgresql:// URI, got one starting {scheme}://")
    if not readable:
        raise ValueError(
            "name the directories the cameras write into (readable): the server reads no "
            "image outside them"
        )
    address = postgres[len(scheme) :]
    return {
        "trees": [
            {
                "path": "/",
                "tree": "catalog",
                "args": {
                    "uri": f"postgresql+asyncpg{address}",
                    "specs": [BLUESKY_CATALOG_SPEC],
                    # Tiled's SQL table storage speaks plain postgresql:// (ADBC).
                    "writable_storage": [
                        str(_absolute(data_dir)),
                        tables or f"postgresql{address}",
                    ],
                    "readable_storage": [str(_absolute(p)) for p in readable],
                    "init_if_not_exists": True,
                },
            }
        ],
        "media_types": {"BlueskyRun": {JSON_SEQ: JSON_SEQ_EXPORTER}},
    }


def write_server_config(path: PathLike, config: dict[str, Any]) -> Path:
    """Write a server configuration as YAML, readable by its owner alone: the database URI in
    it may hold a password."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        yaml.safe_dump(config, f, sort_keys=False)
    return path


def server_command(config: PathLike, *, host: str = "127.0.0.1", port: int = 8000) -> list[str]:
    """The command that serves a configuration written by `write_server_config`: Tiled's own
    ``tiled serve config``, so a facility runs and tunes a plain Tiled server."""
    return [
        sys.executable,
        *("-m", "tiled", "serve", "config", str(config)),
        *("--host", host, "--port", str(port)),
    ]


# ---------------------------------------------------------------------------------------------
# Documents, and copying runs between catalogs


def documents(run: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield a run's documents as ``(name, doc)`` pairs, to replay into any callback.

    The catalog rebuilds them from what it stored: start; each stream's descriptor and
    events; a StreamResource and StreamDatum for each image (TiledWriter turned the camera's
    Resource and Datum into these when it wrote the run); stop. Each is a plain dict of its
    own: callbacks such as TiledWriter change what they are given, and ``run.documents()``
    hands out read-only documents.
    """
    from tiled.client.utils import ClientError

    try:
        for name, doc in run.documents():
            yield name, doc.to_dict()
    except ClientError as err:
        if err.response.status_code != 406:
            raise
        raise RuntimeError(
            f"the catalog at {run.uri} does not export documents ({JSON_SEQ}); serve it "
            "with `ophyd-scmos serve`, or add to the Tiled server's configuration: "
            f"media_types: {{BlueskyRun: {{{JSON_SEQ}: {JSON_SEQ_EXPORTER}}}}}"
        ) from None


@dataclass
class SyncResult:
    """What `sync` did with one run."""

    uid: str
    status: str  #: "copied", "present" (the target had it) or "running" (no stop yet: left)
    files: list[str] = field(default_factory=list)  #: data files the target's run points at
    error: str | None = None  #: why the target cannot read the run's images, if it cannot


def sync(
    source: Container,
    target: Container,
    uids: Iterable[str] | None = None,
    *,
    copy_data_to: PathLike | None = None,
    on_result: Callable[[SyncResult], None] | None = None,
) -> list[SyncResult]:
    """Copy finished runs from `source` to `target` (a lab's embedded catalog to a facility
    server), skipping those the target has; all runs, oldest first, unless `uids` are given.

    Each run's `documents` go through a TiledWriter of the target, so the target indexes the
    run exactly as if it had been written there. The data files stay where they are and the
    target's run points at them: the target must read that path (a shared disk). With
    `copy_data_to`, each file is first copied into that directory (one the target reads)
    and the run points at the copy. Each result says whether the target can read the
    images (it reads the last frame): if not, extend the server's readable storage and the
    run reads at once, with nothing to sync again.

    A run the target holds without a stop document (a sync that died half-way) is an error:
    it is incomplete there, so delete it on the target and sync again.
    """
    from bluesky_tiled_plugins import TiledWriter

    results = []
    for key in source if uids is None else uids:
        run = source[key]
        uid = run.metadata["start"]["uid"]
        if not run.metadata.get("stop"):
            result = SyncResult(uid, "running")
        elif uid in target:
            if not target[uid].metadata.get("stop"):
                raise RuntimeError(
                    f"run {uid} is in the target catalog without a stop document, from an "
                    "earlier copy that did not finish: delete it there and sync again"
                )
            result = SyncResult(uid, "present", _run_files(target[uid]))
        else:
            docs = list(documents(run))
            files = []
            for name, doc in docs:
                if name == "stream_resource" and doc["uri"].startswith("file:"):
                    if copy_data_to is not None:
                        doc["uri"] = _file_uri(_copy_file(_local_path(doc["uri"]), copy_data_to))
                    files.append(str(_local_path(doc["uri"])))
            writer = TiledWriter(target)
            for name, doc in docs:
                writer(name, doc)
            result = SyncResult(uid, "copied", files)
        if result.status != "running":
            result.error = _unreadable(target[uid])
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _local_path(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path))


def _file_uri(path: Path) -> str:
    return Path(path).absolute().as_uri()


def _copy_file(path: Path, directory: PathLike) -> Path:
    """Copy `path` into `directory` under its own name; an identical copy already there is
    reused, a different file of that name is an error (never overwritten)."""
    target = _absolute(directory) / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        if filecmp.cmp(path, target, shallow=False):
            return target
        raise FileExistsError(f"{target} exists and differs from {path}; not overwritten")
    partial = target.with_name(f".{target.name}.partial")
    shutil.copy2(path, partial)
    partial.replace(target)  # a reader never sees half a file under the real name
    return target


def _image_nodes(run: Any) -> Iterator[tuple[str, str, Any]]:
    """(stream, data key, array client) of each image (external array) in a run, the primary
    stream first."""
    for stream in sorted(run, key=lambda name: (name != "primary", name)):
        events = run[stream]
        for key, info in events.metadata.get("data_keys", {}).items():
            if info.get("external") and len(info.get("shape") or ()) >= 2:
                try:
                    node = events[key]
                except KeyError:  # not written yet: a run going on
                    continue
                yield stream, key, node


def _node_files(node: Any) -> list[str]:
    return [
        str(_local_path(asset.data_uri))
        for source in node.data_sources()
        for asset in source.assets
        if asset.data_uri.startswith("file:")
    ]


def _run_files(run: Any) -> list[str]:
    return [path for _, _, node in _image_nodes(run) for path in _node_files(node)]


def _unreadable(run: Any) -> str | None:
    """Why the catalog cannot read the run's images (it tries the last frame), or None."""
    for stream, key, node in _image_nodes(run):
        try:
            with _no_retries():
                node[-1]
        except Exception as err:  # whatever the cause, the user's answer is the same
            files = ", ".join(_node_files(node))
            return (
                f"{stream}/{key} ({files}): {str(err).splitlines()[0]}; a server refuses "
                "files outside its readable storage (ophyd-scmos serve --read DIR)"
            )
    return None


@contextlib.contextmanager
def _no_retries() -> Iterator[None]:
    """Turn off Tiled's client retries (process-wide, for as long as this lasts).

    A server answers a file outside its readable storage with the same 500 as a passing
    fault, and the client retries that for up to 45 s: a probe wants the first answer.
    """
    import stamina

    active = stamina.is_active()
    stamina.set_active(False)
    try:
        yield
    finally:
        stamina.set_active(active)


# ---------------------------------------------------------------------------------------------
# What is in a run, for people (`ophyd-scmos runs`, `ophyd-scmos show`)


@dataclass
class RunSummary:
    """A run and its images as the catalog knows them: cheap, no frame is read."""

    uid: str
    scan_id: int | None
    plan_name: str | None
    start_time: float
    exit_status: str | None  #: None while the run is going on
    stream: str | None  #: where the images are; None for a run without images
    key: str | None
    shape: tuple[int, ...]  #: as the catalog replays it: (events, frames per event, H, W)
    dtype: str | None
    file: str | None  #: the file the frames are in

    @property
    def frames(self) -> int:
        return math.prod(self.shape[:-2]) if self.shape else 0


def summarize(run: Any, key: str | None = None) -> RunSummary:
    """Summarize `run` and its image `key` (default: its first image)."""
    start, stop = run.metadata["start"], run.metadata.get("stop") or {}
    found = next((n for n in _image_nodes(run) if key is None or n[1] == key), None)
    if found is None and key is not None:
        raise KeyError(f"run {start['uid']} has no image {key!r}")
    stream, key, node = found or (None, None, None)
    files = [] if node is None else _node_files(node)
    return RunSummary(
        uid=start["uid"],
        scan_id=start.get("scan_id"),
        plan_name=start.get("plan_name"),
        start_time=start["time"],
        exit_status=stop.get("exit_status"),
        stream=stream,
        key=key,
        shape=() if node is None else tuple(node.shape),
        dtype=None if node is None else node.dtype.str,
        file=files[0] if files else None,
    )


@dataclass
class FileStats:
    """What a camera's HDF5 file (our layout, `ophyd_scmos.pipeline.layout`) says about its
    frames: how they are stored, which are missing, and how regularly they came."""

    path: str
    size: int  #: bytes of the file on disk
    frames: int
    frame_shape: tuple[int, ...]
    dtype: str
    raw_bytes: int  #: the frames uncompressed
    stored_bytes: int  #: the frames as stored
    filters: list[str]  #: the HDF5 filters (compression) of the frame dataset
    frames_written: int | None  #: the writer's counts, recorded when it closed the file
    frames_dropped: int | None
    frames_missed: int | None
    complete: bool | None
    gaps: list[tuple[int, int]]  #: missing frame numbers, as (first, last) ranges
    intervals: np.ndarray = field(repr=False)  #: seconds between frames, camera clock

    @property
    def compression_ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else float("nan")

    @property
    def missing_frames(self) -> int:
        return sum(last - first + 1 for first, last in self.gaps)


def file_stats(path: PathLike) -> FileStats:
    """Read the statistics of a camera file, written or being written (SWMR)."""
    import h5py
    import numpy as np

    from ophyd_scmos.pipeline import layout

    def attr(name: str) -> Any:
        value = f[layout.ENTRY].attrs.get(name)
        return None if value is None else value.item()

    # locking=False: a writer that still holds the file must not make this read fail.
    with h5py.File(path, "r", locking=False) as f:
        data = f[layout.DATA]
        frames = data.shape[0]
        # Per-frame metadata grows in steps ahead of the frames: only the first `frames` count.
        numbers = f[layout.FRAME_NUMBER][:frames]
        times = f[layout.TIMESTAMP][:frames]
        plist = data.id.get_create_plist()
        filters = [
            plist.get_filter(i)[3].decode(errors="replace").split(";")[0]
            for i in range(plist.get_nfilters())
        ]
        stats = FileStats(
            path=str(path),
            size=os.stat(path).st_size,
            frames=frames,
            frame_shape=tuple(data.shape[1:]),
            dtype=data.dtype.str,
            raw_bytes=frames * int(np.prod(data.shape[1:])) * data.dtype.itemsize,
            stored_bytes=data.id.get_storage_size(),
            filters=filters,
            frames_written=attr("frames_written"),
            frames_dropped=attr("frames_dropped"),
            frames_missed=attr("frames_missed"),
            complete=attr("complete"),
            gaps=_gaps(numbers),
            intervals=np.diff(times),
        )
    return stats


def _gaps(numbers: np.ndarray) -> list[tuple[int, int]]:
    import numpy as np

    jumps = np.flatnonzero(np.diff(numbers) > 1)
    return [(int(numbers[i]) + 1, int(numbers[i + 1]) - 1) for i in jumps]


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
