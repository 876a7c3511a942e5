"""The catalogs runs are written to (`TiledWriter`) and read back from.

One module per job: `embedded` (`open_catalog`: the embedded catalog on SQLite, or a Tiled
server by URL), `local_server` (the embedded catalog's server, shared by the processes that
open it), `server` (a facility's Tiled server on PostgreSQL), `transfer` (a run's
documents, and `sync` between catalogs), `summary` (what is in a run, for people), `recover`
(closing a run whose acquiring process died), `hdf5` (the adapter Tiled reads run files with,
which refuses a damaged file at once). Importing this package loads none of Tiled, h5py or
numpy, so the CLI starts fast. The design reasoning is in docs/architecture.md ("Catalogs").
"""

from ophyd_scmos.catalog.embedded import (
    CATALOG_ENV,
    CatalogUnavailable,
    default_catalog_dir,
    is_url,
    open_catalog,
    reaching,
    server_url,
    start_local_server,
)
from ophyd_scmos.catalog.recover import (
    UnfinishedRun,
    close_journaled_run,
    close_run,
    find_unfinished_run,
)
from ophyd_scmos.catalog.server import (
    run_server,
    server_command,
    server_config,
    write_server_config,
)
from ophyd_scmos.catalog.summary import FileStats, RunSummary, file_stats, probe, summarize
from ophyd_scmos.catalog.transfer import SyncResult, documents, sync
from ophyd_scmos.pipeline.recovery import MissingFile, UnreadableFile

__all__ = [
    "CATALOG_ENV",
    "CatalogUnavailable",
    "FileStats",
    "MissingFile",
    "RunSummary",
    "SyncResult",
    "UnfinishedRun",
    "UnreadableFile",
    "close_journaled_run",
    "close_run",
    "default_catalog_dir",
    "documents",
    "file_stats",
    "find_unfinished_run",
    "is_url",
    "open_catalog",
    "probe",
    "reaching",
    "run_server",
    "server_command",
    "server_config",
    "server_url",
    "start_local_server",
    "summarize",
    "sync",
    "write_server_config",
]
