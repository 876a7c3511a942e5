"""Every run goes to the catalog: the lab configuration's [catalog], else open_catalog()'s
default ($OPHYD_SCMOS_CATALOG, else the embedded catalog in your data directory).
`catalog[-1]` is the latest run."""

from bluesky_tiled_plugins import TiledWriter

catalog = lab.catalog.open()  # noqa: F821 - from 00-config.py
RE.subscribe(TiledWriter(catalog))  # noqa: F821 - from 10-run-engine.py
