"""``python -m ophyd_scmos.catalog CONFIG [--host HOST] [--port PORT]``: serve a catalog
configuration (`ophyd_scmos.catalog.server.run_server`), as ``ophyd-scmos serve`` does once
it has written the configuration."""

from __future__ import annotations

import argparse

from ophyd_scmos.catalog.server import run_server

parser = argparse.ArgumentParser(prog="python -m ophyd_scmos.catalog", description=__doc__)
parser.add_argument("config", help="a Tiled configuration, as `ophyd-scmos serve` writes")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8000)
args = parser.parse_args()
run_server(args.config, host=args.host, port=args.port)
