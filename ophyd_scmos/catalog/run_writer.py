"""TiledWriter's writer of one run, appending each event once (`RunWriter`).

Tiled's client does not try again an append of rows whose request may have reached the
catalog (its answer lost to a timeout, a proxy's 5xx, a dropped connection): appended again,
the rows would be there twice. TiledWriter's writer of a run appends them again all the
same, and notes in the run's stop that rows may be doubled. `RunWriter` tries again without
the events the table holds by then, read back by their `seq_num`. `CatalogWriter`'s runs,
`sync`'s copies and `recover`'s events from a journal are all written by it.
"""

from __future__ import annotations

from typing import Any

import httpx
import pyarrow
import pyarrow.compute
from bluesky_tiled_plugins.writing.tiled_writer import _RunWriter
from tiled.client.utils import retry_context, should_retry

__all__ = ["RunWriter"]


class RunWriter(_RunWriter):
    """TiledWriter's `_RunWriter`, whose appends of events leave each event in its stream's
    table once."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        #: the tables whose last append failed, where the catalog may have taken it
        self._unsure: set[str] = set()

    def _append_with_retry(self, df_client: Any, table: pyarrow.Table, desc_name: str) -> None:
        """Append `table`'s events to their stream's table, each once. An append that failed
        where the catalog may have taken it (its answer lost to a timeout, a proxy's 5xx)
        is tried again (Tiled's client does not) without the events the table holds by
        then, read back by `seq_num`: TiledWriter appends them all again, and the stream
        then holds those events twice. A part of a table too wide for one has no `seq_num`:
        appended as TiledWriter appends it."""
        if "seq_num" not in table.column_names:
            super()._append_with_retry(df_client, table, desc_name)
            return
        for attempt in retry_context():
            with attempt:
                if df_client.uri in self._unsure:
                    held = df_client.read(columns=["seq_num"])["seq_num"]
                    table = table.filter(
                        pyarrow.compute.invert(
                            pyarrow.compute.is_in(table["seq_num"], pyarrow.array(held))
                        )
                    )
                    if not table.num_rows:
                        self._unsure.discard(df_client.uri)
                        return
                try:
                    df_client.append_partition(0, table)
                except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                    if not isinstance(exc, httpx.HTTPStatusError) or should_retry(exc):
                        self._unsure.add(df_client.uri)
                    raise
                self._unsure.discard(df_client.uri)
