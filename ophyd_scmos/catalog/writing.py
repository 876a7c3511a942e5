"""Writing runs into a catalog as they happen (`CatalogWriter`).

bluesky-tiled-plugins' `TiledWriter` keeps a run's events and image references in memory
until 10,000 have piled up or the run ends. A run in progress then shows nothing to anyone
else (a second session, an analysis following the scan), and when the acquiring process
dies, every reading of every device in the run dies with it: `recover` gets the images back
from the camera's file, not the motor positions. `CatalogWriter` is a `TiledWriter` that also
writes what it holds whenever it has held something for `interval` seconds: a run's data
reach the catalog within about a second, in one request per table and image per second
however fast the events come. Those requests cost ~0.05-0.25 s on a 2-core machine for a
second of a fast step scan (a few hundred events): where they take longer than 5% of the
time, the next waits longer, so the scan keeps its pace.

This reaches into TiledWriter's per-run writer (`_RunWriter`: its caches and the two methods
that write them, the ones its own batching and stop use); tests/catalog/test_writing.py
checks it against the installed version.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

from bluesky_tiled_plugins import TiledWriter
from bluesky_tiled_plugins.writing.tiled_writer import _RunWriter

__all__ = ["CatalogWriter"]

#: seconds a run's events and image references may wait in memory before they are written
INTERVAL = 1.0
#: at most this share of a run's time goes to writing ahead of its end: a write that took
#: 0.1 s (a fast step scan's second of events, here) puts the next 2 s away, not 1
WRITE_SHARE = 0.05


class _PacedRunWriter(_RunWriter):
    """One run's writer that writes what it holds once the oldest of it is `interval` old.

    Written before a new event or image reference is taken, never just after: an event and
    the image reference that follows it then reach the catalog together."""

    def __init__(self, client: Any, *, interval: float, **kwargs: Any):
        super().__init__(client, **kwargs)
        self.interval = interval
        self._held_since: float | None = None  #: when the oldest unwritten data came
        self._wait = interval  #: how long data waits: `interval`, or longer after slow writes

    def event(self, doc: Any) -> None:
        self.write_if_due()
        super().event(doc)
        self._hold()

    def stream_datum(self, doc: Any) -> None:
        self.write_if_due()
        super().stream_datum(doc)
        self._hold()

    def stop(self, doc: Any) -> None:
        super().stop(doc)
        self._held_since = None

    def _hold(self) -> None:
        if self._held_since is None:
            self._held_since = time.monotonic()

    def write_if_due(self) -> None:
        if self._held_since is not None and time.monotonic() - self._held_since >= self._wait:
            self.write_held()

    def held_again(self) -> None:
        """What could not be written waits as long again before the timer tries again."""
        self._held_since = time.monotonic()

    def write_held(self) -> None:
        """Write the events and image references held, as TiledWriter's batching would."""
        started = time.monotonic()
        for name, rows in self._internal_data_cache.items():
            if rows:
                self._write_internal_data(rows, desc_node=self._desc_nodes[name])
                rows.clear()
        while self._external_data_cache:
            uid, doc = next(iter(self._external_data_cache.items()))
            self._write_external_data(doc)
            del self._external_data_cache[uid]
        self._held_since = None
        self._wait = max(self.interval, (time.monotonic() - started) / WRITE_SHARE)


class CatalogWriter(TiledWriter):
    """A `TiledWriter` (subscribe it to the RunEngine) whose runs reach the catalog as they
    happen: events and image references are written `interval` seconds after they come,
    also while no document comes (a paused run, a long step), instead of at the run's end;
    later where writing takes long (at most `WRITE_SHARE` of the time goes to it). What
    fails to be written on the timer (a server gone for a moment) stays held and is tried
    again; a failure on the RunEngine's thread fails the run, as TiledWriter's."""

    def __init__(self, client: Any, *, interval: float = INTERVAL, **kwargs: Any):
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, not {interval!r}")
        super().__init__(client, **kwargs)
        self.interval = interval
        self._lock = threading.Lock()  # TiledWriter is not made for two threads at once
        self._runs: weakref.WeakSet[_PacedRunWriter] = weakref.WeakSet()
        self._timer: threading.Thread | None = None

    def __call__(self, name: str, doc: Any) -> None:
        with self._lock:
            super().__call__(name, doc)
            if self._timer is None:
                self._timer = threading.Thread(
                    target=self._write_on_time,
                    args=(weakref.ref(self),),
                    name="scmos-catalog-writer",
                    daemon=True,
                )
                self._timer.start()

    def _factory(self, name: str, doc: Any) -> tuple[list[Any], list[Any]]:
        run = _PacedRunWriter(
            self.client,
            interval=self.interval,
            batch_size=self._batch_size,
            max_array_size=self._max_array_size,
            ignore_errors=self.ignore_errors,
        )
        self._runs.add(run)
        if self._normalizer is None:
            return [run], []
        normalizer = self._normalizer(patches=self.patches, spec_to_mimetype=self.spec_to_mimetype)
        normalizer.subscribe(run)
        return [normalizer], []

    @staticmethod
    def _write_on_time(ref: weakref.ref[CatalogWriter]) -> None:
        """Write what runs hold while no document comes; ends with its writer."""
        while (writer := ref()) is not None:
            interval = writer.interval
            with writer._lock:
                for run in list(writer._runs):
                    try:
                        run.write_if_due()
                    except Exception:  # still held: tried again an interval later, by
                        run.held_again()  # this thread or the RunEngine's (where it fails
                        # the run); the run's stop writes it all
            del writer
            time.sleep(interval / 4)
