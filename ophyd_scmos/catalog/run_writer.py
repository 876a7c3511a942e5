"""TiledWriter's writer of one run, writing each event and node once (`RunWriter`).

Tiled's client does not try again an append of rows whose request may have reached the
catalog (its answer lost to a timeout, a proxy's 5xx, a dropped connection): appended again,
the rows would be there twice. TiledWriter's writer of a run appends them again all the
same, and notes in the run's stop that rows may be doubled. `RunWriter` tries again without
the events the table holds by then, read back by their `seq_num`. Likewise a node (a
stream's table, a camera's image) whose making may have reached the catalog after Tiled's
client gave up trying (it adopts such a node only within its own tries): made again, the
catalog refuses it (409 Conflict), and every later try of the run fails the same way.
`RunWriter` takes the node the catalog holds instead. `CatalogWriter`'s runs, `sync`'s copies
and `recover`'s events from a journal are all written by it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import pyarrow
import pyarrow.compute
from bluesky_tiled_plugins.writing.tiled_writer import _RunWriter
from tiled.client.utils import retry_context, should_retry

__all__ = ["TABLE", "ExistingRun", "RunWriter", "may_have_reached"]

#: the name (and prefix, for tables split by columns) of a stream's table of events
TABLE = "internal"

T = TypeVar("T")


class RunWriter(_RunWriter):
    """TiledWriter's `_RunWriter`, whose appends of events leave each event in its stream's
    table once, and whose nodes are each made once."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        #: the tables whose last append failed, where the catalog may have taken it
        self._unsure: set[str] = set()
        #: the nodes (their parents' uri, and key) a failed try may have made: by a stream's
        #: uri alone, any of its tables
        self._unsure_made: set[tuple[str, str | None]] = set()

    def start(self, doc: Any) -> None:
        super().start(doc)
        self.run_uid: str = doc["uid"]  #: named in the metadata of each image (`IMAGE_RUN`)

    def take_nodes(self, stream: Any, *, arrays: bool = False) -> None:
        """Write into the tables `stream` holds in the catalog (TiledWriter's would be made
        anew), and with `arrays` into its internal arrays too: not where their making failed,
        as an array is made with its first rows, which may not have come."""
        name = stream.item["id"]
        taken = self._int_array_keys[name] | self._int_ragged_array_keys[name] if arrays else ()
        for key in stream:
            if key.startswith(TABLE):
                self._internal_tables.setdefault(name + key.removeprefix(TABLE), stream[key])
            elif key in taken:
                self._internal_arrays.setdefault(f"{name}/{key}", stream[key])

    def _write_internal_data(self, data_cache: list[dict[str, Any]], desc_node: Any) -> None:
        """TiledWriter's, into the stream's tables the catalog holds where an earlier try
        may have made them."""
        unsure = (desc_node.uri, None)
        if unsure in self._unsure_made:
            self.take_nodes(desc_node)
            self._unsure_made.discard(unsure)
        try:
            super()._write_internal_data(data_cache, desc_node)
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            if may_have_reached(exc):
                self._unsure_made.add(unsure)
            raise

    def _make_node(self, parent: Any, key: str, make: Callable[[], T]) -> tuple[T, bool]:
        """`make()` the node `key` of `parent`, or take the one the catalog holds where an
        earlier try may have made it: nothing but this writer makes nodes in its run. The
        node, and whether this made it (a node taken is as that try made it)."""
        unsure = (parent.uri, key)
        made = not (unsure in self._unsure_made and key in parent)
        if not made:
            node: T = parent[key]
        else:
            try:
                node = make()
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                if may_have_reached(exc):
                    self._unsure_made.add(unsure)
                raise
        self._unsure_made.discard(unsure)
        return node, made

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
                    if may_have_reached(exc):
                        self._unsure.add(df_client.uri)
                    raise
                self._unsure.discard(df_client.uri)


def may_have_reached(exc: httpx.TransportError | httpx.HTTPStatusError) -> bool:
    """Whether the catalog may have done what the failed request asked (its answer lost):
    anything but an answer saying it did not."""
    return not isinstance(exc, httpx.HTTPStatusError) or should_retry(exc)


class ExistingRun:
    """A run's node to `RunWriter`: a stream it asks to make is the catalog's, if there."""

    def __init__(self, run: Any):
        self.run = run

    def create_container(self, key: str, **kwargs: Any) -> Any:
        if key in self.run:
            return self.run[key]
        return self.run.create_container(key=key, **kwargs)
