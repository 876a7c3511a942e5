"""Where ophyd-scmos keeps its things on this machine when nothing says otherwise.

One place for the per-user directories (platformdirs), so the camera, the catalog, the lab
configuration and the IPython profile agree on them.
"""

from __future__ import annotations

from pathlib import Path

import platformdirs

APP = "ophyd-scmos"


def data_dir() -> Path:
    """The user's data directory for ophyd-scmos (runs' files, the embedded catalog)."""
    return Path(platformdirs.user_data_dir(APP))


def state_dir() -> Path:
    """The user's state directory (RunEngine metadata, IPython history)."""
    return Path(platformdirs.user_state_dir(APP))


def default_write_dir() -> Path:
    """Where a camera writes its run files when no `write_dir` is given."""
    return data_dir() / "data"


def default_catalog_dir() -> Path:
    """Where `open_catalog()` keeps the embedded catalog when no path is given."""
    return data_dir() / "catalog"


def default_config_path() -> Path:
    """Where the lab configuration lives when ``$OPHYD_SCMOS_CONFIG`` is not set."""
    return Path(platformdirs.user_config_dir(APP)) / "lab.toml"


def default_metadata_dir() -> Path:
    """Where the RunEngine's metadata (``RE.md``, with the scan id) persists between sessions."""
    return state_dir() / "runengine-metadata"
