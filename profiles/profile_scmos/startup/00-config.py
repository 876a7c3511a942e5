"""The lab configuration ($OPHYD_SCMOS_CONFIG, else ~/.config/ophyd-scmos/lab.toml, else the
defaults: one simulated camera `cam`, the embedded catalog). A wrong value ends the session
here, with the key and what is allowed, before any camera opens."""

import sys

from ophyd_scmos.catalog import start_local_server
from ophyd_scmos.config import ConfigError, load_config

try:
    lab = load_config()
except ConfigError as _error:
    print(f"ophyd-scmos profile: {_error}", file=sys.stderr)
    raise SystemExit(2) from None

# An embedded catalog's local server, if none runs, starts now on the other core while the
# session loads, so that it is ready when 30-catalog.py opens the catalog.
start_local_server(lab.catalog.location)
