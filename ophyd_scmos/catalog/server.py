"""A facility's catalog: the embedded catalog's layout, served by Tiled from PostgreSQL.

`ophyd-scmos serve` writes this configuration and serves it with Tiled's own server app
(`run_server`, as ``tiled serve config`` does), so a facility runs and tunes a plain Tiled
server whose clients are the same class as an embedded catalog's (`open_catalog(url)`). What
it adds: a client is told at once why a file cannot be read, where Tiled answers "500
Internal Server Error" (which its clients retry for 45 s) and keeps the reason in its log.

The database password never appears in the configuration, on a command line or in the log:
Tiled prints its database URI when it starts, so the password comes from the environment
(``PGPASSWORD``) or ``~/.pgpass``, which both PostgreSQL drivers Tiled uses read.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

from ophyd_scmos.catalog.embedded import (
    ADAPTERS_BY_MIMETYPE,
    BLUESKY_CATALOG_SPEC,
    JSON_SEQ,
    JSON_SEQ_EXPORTER,
    PathLike,
    absolute_path,
)

__all__ = ["run_server", "server_command", "server_config", "write_server_config"]

API_KEY_ENV = "TILED_SINGLE_USER_API_KEY"  #: where Tiled's server takes its API key from


def server_config(
    postgres: str,
    data_dir: PathLike,
    readable: Sequence[PathLike],
    *,
    tables: str | None = None,
) -> dict[str, Any]:
    """The Tiled configuration of a shared catalog server on PostgreSQL.

    `postgres`: ``postgresql://user@host:port/database``, an existing database (the server
    makes its tables on first start). No password: the server takes it from ``PGPASSWORD``
    or ``~/.pgpass``, so that it is in no file, log or command line. `data_dir`: where the
    server writes arrays of its own. `readable`: the directories the cameras write into, as
    the server's host sees them; Tiled serves no file outside them, and a facility server
    should not read anywhere a client points it at. `tables`: where TiledWriter's event
    tables go; the same database by default (no password either).

    Beyond ``tiled serve catalog URI -w ... -r ...``, this gives the root the
    `CatalogOfBlueskyRuns` spec, so a client of the server is the same class as a client of
    the embedded catalog (``catalog[-1]``, scan ids, partial uids), and it turns on the
    document stream behind `documents` and `sync`; it reads files through
    `ophyd_scmos.catalog.hdf5`, which refuses a damaged file at once. The API key is left to
    the environment (``TILED_SINGLE_USER_API_KEY``), not written in the file.
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
    for uri in (postgres, tables):
        if uri is not None and urlparse(uri).password is not None:
            raise ValueError(
                "the database URI holds a password, which Tiled prints in its log and a "
                "command line shows to every user: leave it out and set PGPASSWORD (or "
                "write it in ~/.pgpass)"
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
                        _user_as_parameter(tables or f"postgresql{address}"),
                    ],
                    "readable_storage": [str(absolute_path(p)) for p in readable],
                    "adapters_by_mimetype": dict(ADAPTERS_BY_MIMETYPE),
                    "init_if_not_exists": True,
                },
            }
        ],
        "media_types": {"BlueskyRun": {JSON_SEQ: JSON_SEQ_EXPORTER}},
    }


def _user_as_parameter(uri: str) -> str:
    """`uri` with its user name moved to a ``user=`` parameter, which libpq reads as well.

    Tiled's SQL table storage rebuilds a URI that has a user but no password as
    ``user:None@host``: libpq then sends the password "None" instead of the one in
    PGPASSWORD or ~/.pgpass.
    """
    parsed = urlparse(uri)
    if parsed.username is None:
        return uri
    query = "&".join(filter(None, (parsed.query, f"user={parsed.username}")))
    return urlunparse(parsed._replace(netloc=parsed.netloc.rsplit("@", 1)[1], query=query))


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
    """The command that serves a configuration written by `write_server_config`
    (`run_server`, in a process of its own)."""
    return [
        sys.executable,
        *("-m", "ophyd_scmos.catalog", str(config)),
        *("--host", host, "--port", str(port)),
    ]


def run_server(config: PathLike, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve a Tiled configuration as ``tiled serve config`` does, and tell clients why a file
    cannot be read (`answer_unreadable_files`). Returns when the server stops."""
    import uvicorn
    from tiled.config import parse_configs
    from tiled.server.app import build_app_from_config, print_server_info
    from tiled.server.logging_config import LOGGING_CONFIG

    parsed = parse_configs(config)
    app = build_app_from_config(parsed)
    answer_unreadable_files(app)
    # A key Tiled made up is printed for its user to learn; one given is not echoed.
    given_key = os.environ.get(API_KEY_ENV) or parsed.authentication.single_user_api_key
    print_server_info(app, host=host, port=port, include_api_key=not given_key)
    options = {"log_config": LOGGING_CONFIG, **parsed.uvicorn, "host": host, "port": port}
    uvicorn.run(app, **options)


def answer_unreadable_files(app: Any) -> None:
    """Answer a read of a file the server will not or cannot read with a client error (4xx)
    that says why, at once.

    Tiled answers both with "500 Internal Server Error", keeping the reason in its log (with
    a traceback), and its clients retry a 500 for 45 s. A file outside the readable storage
    is 403 Forbidden; a missing, truncated or foreign file (`UnreadableFile`) is 409
    Conflict: the run's record and its file disagree.
    """
    from fastapi.responses import JSONResponse

    from ophyd_scmos.pipeline.recovery import UnreadableFile

    async def unreadable(request: Any, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    async def refused(request: Any, exc: Exception) -> JSONResponse:
        if not str(exc).startswith("Refusing to serve"):
            raise exc  # on to Tiled's own answer (500)
        detail = f"{exc} Add its directory to the server's: ophyd-scmos serve --read DIR"
        return JSONResponse(status_code=403, content={"detail": detail})

    app.add_exception_handler(UnreadableFile, unreadable)
    app.add_exception_handler(RuntimeError, refused)
