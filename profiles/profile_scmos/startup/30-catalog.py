"""Every run goes to the catalog: the lab configuration's [catalog], else open_catalog()'s
default ($OPHYD_SCMOS_CATALOG, else the embedded catalog in your data directory).
`catalog[-1]` is the latest run. It opens in the background from the first prompt on, so that
the prompt does not wait for it: until it is open `catalog` stands in for it (a use waits),
then it is the catalog."""

import sys as _sys

from ophyd_scmos.catalog import CatalogUnavailable as _CatalogUnavailable
from ophyd_scmos.session import BackgroundCatalog as _BackgroundCatalog

catalog = _BackgroundCatalog(lab.catalog.open)  # noqa: F821 - from 00-config.py
RE.subscribe(catalog.tiled_writer)  # noqa: F821 - from 10-run-engine.py
# No run starts without it: one that cannot open fails a plan at its start, in one line.
RE.preprocessors.append(catalog.before_runs)  # noqa: F821
get_ipython().set_custom_exc(  # noqa: F821 - IPython's
    (_CatalogUnavailable,),
    lambda shell, kind, error, tb, tb_offset=None: print(
        f"ophyd-scmos: {error}. No run starts without it; fix it and run again "
        f"(configuration: {lab.source})",  # noqa: F821
        file=_sys.stderr,
    ),
)
catalog.start_at_prompt(get_ipython(), "catalog")  # noqa: F821
