"""Every run goes to the catalog: the lab configuration's [catalog], else open_catalog()'s
default ($OPHYD_SCMOS_CATALOG, else the embedded catalog in your data directory).
`catalog[-1]` is the latest run. It opens in the background from the first prompt on, so that
the prompt does not wait for it: until it is open `catalog` stands in for it (a use waits),
then it is the catalog."""

from ophyd_scmos.session import BackgroundCatalog

catalog = BackgroundCatalog(lab.catalog.open)  # noqa: F821 - from 00-config.py
RE.subscribe(catalog.tiled_writer)  # noqa: F821 - from 10-run-engine.py
catalog.start_at_prompt(get_ipython(), "catalog")  # noqa: F821 - IPython's
