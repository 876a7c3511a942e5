"""A facility's catalog: the embedded catalog's layout, served by Tiled from PostgreSQL.

`ophyd-scmos serve` writes this configuration and hands over to Tiled's own server, so a
facility runs and tunes a plain Tiled server whose clients are the same class as an embedded
catalog's (`open_catalog(url)`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ophyd_scmos.catalog.embedded import (
    BLUESKY_CATALOG_SPEC,
    JSON_SEQ,
    JSON_SEQ_EXPORTER,
    PathLike,
    absolute_path,
)

__all__ = ["server_command", "server_config", "write_server_config"]


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
                        str(absolute_path(data_dir)),
                        tables or f"postgresql{address}",
                    ],
                    "readable_storage": [str(absolute_path(p)) for p in readable],
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
