"""Writing runs into a catalog as they happen (`CatalogWriter`).

bluesky-tiled-plugins' `TiledWriter` keeps a run's events and image references in memory
until 10,000 have piled up or the run ends. A run in progress then shows nothing to anyone
else (a second session, an analysis following the scan), and when the acquiring process
dies, every reading of every device in the run dies with it: `recover` gets the images back
from the camera's file, not the motor positions. (`CatalogWriter` also appends every
document to the run's journal as it comes: `ophyd_scmos.catalog.journal`; `recover` writes
the events the catalog lacks from it.) `CatalogWriter` is a `TiledWriter` that also
writes what it holds whenever it has held something for `interval` seconds: a run's data
reach the catalog within about a second, in one request per table and image per second
however fast the events come. Those requests cost ~0.05-0.25 s on a 2-core machine for a
second of a fast step scan (a few hundred events): where they take longer than 5% of the
time, the next waits longer, twice `interval` at most.

The documents are taken, and what they hold written ahead, on a thread of its own, and the
RunEngine never waits for it: each document is queued, and the thread takes the queue in
order, at once for a new stream's descriptor or image, every quarter interval for events. So
the requests that make a stream's nodes (50-70 ms here) and TiledWriter's own work on each
event are done while the RunEngine waits for its devices, not added to the run. A run's
start is taken on the RunEngine's thread where the writer's is not busy, so that the
catalog has the run at once (`recover` finds a killed run by it), and its stop waits for the
writer's thread, then is taken and written as TiledWriter writes it. A catalog server that
stops answering mid-run (whose client retries for many seconds) then neither holds up nor
fails the scan: what could not be written stays held, is tried again later, and is written
at the run's end, or fails there as with TiledWriter; then, unlike TiledWriter, what the run
held is kept and tried again with its stop (`LONGEST_WAIT` apart at most) while the process
lives.

While the catalog does not answer, what is queued grows: once `QUEUE_LIMIT` documents wait,
the RunEngine takes them itself, and so waits for the catalog, as with TiledWriter (and once
10,000 events or image rows of a run are held, TiledWriter's own batching writes them, failing
the run where the catalog still does not answer).

A camera's image is made in the catalog with its first rows and its metadata, one request
where TiledWriter sends three (the node, empty; its rows; its metadata, at the stop): a
third of what a camera adds to a short run's requests.

This reaches into TiledWriter's per-run writer (`_RunWriter`, here `RunWriter`, which
appends each event once: its caches and the methods that write them, the ones its own
batching and stop use); tests/catalog/test_writing.py checks it against the installed
version.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from bluesky_tiled_plugins import TiledWriter
from bluesky_tiled_plugins.writing.consolidators import Patch, consolidator_factory
from bluesky_tiled_plugins.writing.tiled_writer import RunNormalizer
from event_model import DocumentNames

from ophyd_scmos.catalog.embedded import catalog_location, keeps_streams
from ophyd_scmos.catalog.journal import Journal
from ophyd_scmos.catalog.run_writer import ExistingRun, RunWriter, may_have_reached
from ophyd_scmos.catalog.summary import IMAGE_RUN

__all__ = ["CatalogWriter"]

logger = logging.getLogger(__name__)
# event_model's guess at why a start document failed here (a RunRouter factory written for
# its old releases) misleads: the catalog refused the run (its disk full, its server gone),
# and that error is raised.
warnings.filterwarnings("ignore", r"The callback <ophyd_scmos\.catalog\.writing\.", UserWarning)

#: seconds a run's events and image references may wait in memory before they are written
INTERVAL = 1.0
#: at most this share of a run's time goes to writing ahead of its end: a write that took
#: 0.075 s (a fast step scan's second of events, here) puts the next 1.5 s away, not 1; but
#: never more than `SLOWEST` intervals (a run's first write, which makes its tables, takes
#: 0.2 s and more: 4 s and more of events others would not see, were it not capped)
WRITE_SHARE = 0.05
SLOWEST = 2
#: the longest wait between tries to write ahead while the catalog does not answer
LONGEST_WAIT = 60.0
#: documents waiting for the writer's thread beyond which the RunEngine takes them itself
QUEUE_LIMIT = 10_000
#: the documents for which the writer's thread is woken at once (others wait for its round)
_AT_ONCE = frozenset({"descriptor", "resource", "stream_resource"})


class _PacedRunWriter(RunWriter):
    """One run's writer, which writes what it holds before the run ends when `write_if_due`
    (the writer's thread) finds it held long enough. A stop the catalog did not take is
    handed to `unfinished`, and tried again (`finish_if_due`) while the process lives. A
    stream the catalog did not make (it did not answer) is made with the next write, its
    documents held meanwhile, as the rest of a run's are: TiledWriter failed the run."""

    root_node: Any  #: the run's node (TiledWriter's), or while making a stream `ExistingRun`

    def __init__(
        self,
        client: Any,
        *,
        interval: float,
        unfinished: Callable[[_PacedRunWriter], None],
        written: Callable[[str], None],
        close_streams: bool,
        **kwargs: Any,
    ):
        super().__init__(client, **kwargs)
        self.interval = interval
        self._close_streams = close_streams  #: tell the catalog the run's streams ended
        self._unfinished = unfinished
        self._written = written  #: told the run's uid once the catalog has all of it
        self._stop_doc: dict[str, Any] | None = None  #: the stop, until the catalog took it
        self._next_try = 0.0  #: when to try the stop again
        self._held_since: float | None = None  #: when the oldest unwritten data came
        self._wait = interval  #: how long data waits: `interval`, longer after slow writes
        self._failed = False  #: a write ahead failed (said once)
        #: image references counted into their image, whose new rows the catalog has not
        #: taken yet: consolidator -> (its node, the new rows' patches)
        self._unsent: dict[Any, tuple[Any, list[Patch]]] = {}
        #: the images made here, each with its metadata (`_make_image`), as TiledWriter keys
        #: them (by stream resource, and by stream and data key)
        self._made: dict[str, Any] = {}
        #: the documents of streams the catalog did not make, in order, until it does; and
        #: those streams' names and descriptors' uids
        self._unmade: collections.deque[tuple[str, Any]] = collections.deque()
        self._unmade_streams: set[str] = set()
        self._unmade_descriptors: set[str] = set()

    def descriptor(self, doc: Any) -> None:
        if doc["name"] not in self._unmade_streams:
            try:
                super().descriptor(doc)
                return
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                if doc["name"] in self._desc_nodes or not may_have_reached(exc):
                    raise  # made, or refused
                logger.warning(
                    "the catalog did not make stream %r of run %s (%s): its documents are "
                    "held, and it is made with the next write",
                    doc["name"],
                    doc.get("run_start"),
                    exc,
                )
                self._unmade_streams.add(doc["name"])
        self._hold_unmade("descriptor", doc)
        self._hold()

    def event(self, doc: Any) -> None:
        if doc["descriptor"] in self._unmade_descriptors:
            self._hold_unmade("event", doc)
        else:
            super().event(doc)
        self._hold()

    def stream_datum(self, doc: Any) -> None:
        if doc["descriptor"] in self._unmade_descriptors:
            self._hold_unmade("stream_datum", doc)
        else:
            super().stream_datum(doc)
        self._hold()

    def _hold_unmade(self, name: str, doc: Any) -> None:
        """Hold a document of a stream not made yet; as many as TiledWriter's batch: make
        the streams now (failing the run where the catalog still does not answer, as
        TiledWriter's batching does where it holds as many of a made stream's events)."""
        if name == "descriptor":
            self._unmade_descriptors.add(doc["uid"])
        self._unmade.append((name, doc))
        if len(self._unmade) >= self._batch_size:
            self._make_streams()

    def _make_streams(self) -> None:
        """Make the streams the catalog did not, or take them where it made them unanswered,
        and take their documents held meanwhile, in order."""
        while self._unmade:
            name, doc = self._unmade[0]
            if name == "descriptor":
                run = self.root_node  # a stream an earlier try made is taken
                self.root_node = ExistingRun(run)
                try:
                    super().descriptor(doc)
                finally:
                    self.root_node = run
            else:
                getattr(super(), name)(doc)
            self._unmade.popleft()
        self._unmade_streams.clear()
        self._unmade_descriptors.clear()

    def stop(self, doc: Any) -> None:
        self._stop_doc = dict(doc)
        try:
            self._finish()
        except Exception as exc:
            # The events and images held are not dropped with the run: tried again later.
            logger.warning(
                "the catalog did not take the end of run %s (%s): it holds the events and "
                "image references not yet written, and tries again every %d s at most while "
                "this process runs",
                doc.get("run_start"),
                exc,
                LONGEST_WAIT,
            )
            self._wait = self.interval
            self._next_try = time.monotonic() + self._wait
            self._unfinished(self)
            raise

    def _finish(self) -> None:
        """Write all that is held, then the stop (TiledWriter's stop, with nothing left to
        write but its metadata), or raise; what was written is not written again. An image
        made here has its metadata: TiledWriter's stop, which writes every image's, is not
        shown it."""
        assert self._stop_doc is not None
        self._write_held()
        made = {key: self._sres_nodes.pop(key) for key in self._made}
        try:
            super().stop(dict(self._stop_doc))
        finally:
            self._sres_nodes.update(made)
        self._written(self._stop_doc["run_start"])
        self._stop_doc = None
        self._held_since = None

    def _close_stream_tree(self) -> None:
        if self._close_streams:
            for node in {node.uri: node for node in self._made.values()}.values():
                node.close_stream()  # those TiledWriter's stop is not shown
            super()._close_stream_tree()

    def finish_if_due(self) -> bool:
        """Try the stop again, if it is time: whether it is written now."""
        if self._stop_doc is None:
            return True
        if time.monotonic() < self._next_try:
            return False
        uid = self._stop_doc.get("run_start")
        try:
            self._finish()
        except Exception:
            self._wait = min(LONGEST_WAIT, 2 * self._wait)
            self._next_try = time.monotonic() + self._wait
            return False
        logger.warning("the catalog took the end of run %s, tried again", uid)
        return True

    def _hold(self) -> None:
        if self._held_since is None:
            self._held_since = time.monotonic()

    def write_if_due(self) -> None:
        """Write the events and image references held once the oldest has waited long
        enough, as TiledWriter's batching would. A failure keeps them held for the next
        try, twice as far away (at most `LONGEST_WAIT`), and for the run's stop."""
        if self._stop_doc is not None or self._held_since is None:
            return  # (a stop the catalog did not take: `finish_if_due` writes it all)
        if time.monotonic() - self._held_since < self._wait:
            return
        started = time.monotonic()
        try:
            self._write_held()
        except Exception as exc:
            if not self._failed:
                logger.warning(
                    "the catalog did not take the run so far (tried again later; the run's "
                    "stop writes it all): %s",
                    exc,
                )
            self._failed = True
            self._held_since = time.monotonic()
            self._wait = min(LONGEST_WAIT, 2 * self._wait)
            return
        self._held_since = None
        paced = (time.monotonic() - started) / WRITE_SHARE
        self._wait = min(SLOWEST * self.interval, max(self.interval, paced))

    def _write_held(self) -> None:
        """Make the streams not made yet, then write the events and image references held;
        each is written once, also where writing fails part way and is tried again."""
        self._make_streams()
        for name, rows in self._internal_data_cache.items():
            if rows:
                self._write_internal_data(rows, desc_node=self._desc_nodes[name])
                rows.clear()
        # Image references are counted into their image once, then sent: a send that
        # failed is sent again, never counted again (each count adds rows).
        while self._external_data_cache:
            uid, doc = next(iter(self._external_data_cache.items()))
            if not self._make_image(doc):
                node, consolidator, patch = self._update_consolidator(doc)
                self._unsent.setdefault(consolidator, (node, []))[1].append(patch)
            del self._external_data_cache[uid]
        self._send_unsent()

    def _make_image(self, doc: Any) -> bool:
        """Make the image that `doc` (a stream datum) is the first reference to, with its
        rows and its metadata, in one request, where TiledWriter makes it empty, then sends
        its rows and at the stop its metadata (~30 ms each here); whether it did. Made as
        TiledWriter makes it (`get_sres_node`), and kept where TiledWriter keeps it."""
        sres_uid = doc["stream_resource"]
        resource = self._stream_resource_cache.get(sres_uid)
        if sres_uid in self._sres_nodes or resource is None:
            return False
        stream = self._desc_nodes[doc["descriptor"]]
        key = f"{stream.item['id']}_{resource['data_key']}"
        if key in self._sres_nodes:  # another resource of an image made: TiledWriter's
            return False
        consolidator = consolidator_factory(resource, stream.metadata)
        patch = consolidator.consume_stream_datum(doc)
        source = consolidator.get_data_source()
        node, made = self._make_node(
            stream,
            consolidator.data_key,
            lambda: stream.new(
                key=consolidator.data_key,
                structure_family=source.structure_family,
                data_sources=[source],
                metadata={**consolidator.metadata, IMAGE_RUN: self.run_uid},
                specs=[],
                access_tags=self.access_tags,
            ),
        )
        if not made:
            # Made by a try whose answer was lost, with the rows counted then: `doc` has
            # taken in the references that came since, so the image is sent whole.
            self._unsent.setdefault(consolidator, (node, []))[1].append(patch)
        for known in (sres_uid, key):
            self._consolidators[known] = consolidator
            self._sres_nodes[known] = self._made[known] = node
        return True

    def _send_unsent(self) -> None:
        """Give the catalog each image whose rows it has not taken yet, whole (its data
        source as this process counts it): sent again, it is the same."""
        for consolidator, (node, patches) in list(self._unsent.items()):
            patch = Patch.combine_patches(patches)
            self._update_data_source_for_node(node, consolidator.get_data_source(), patch)
            del self._unsent[consolidator]


class EngineNormalizer(RunNormalizer):
    """TiledWriter's `RunNormalizer` for documents straight from a RunEngine: an event is
    not checked against the schema a second time. The RunEngine checked it as it composed
    it (event_model's `compose_event`), and the normalizer only leaves keys out of it. The
    second check cost 0.4-0.6 ms of the acquiring process's CPU per event (`count` 10-20%
    slower for any detector), on the interpreter lock the RunEngine needs. Nor is the
    StreamDatum the normalizer composes from each event's Datum: it checks the normalizer's
    own composing (uids, and the range of the Datum's point, frame or indices, which a
    consolidator then uses as its rows), at ~0.25 ms of CPU an event: the writer's thread
    spent 0.58 ms an event of a 256x256 camera's step scan, 0.33 ms without it. Every other
    document is checked as TiledWriter checks it."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._composed: Any = None  #: the StreamDatum just composed from a Datum

    def _convert_datum_to_stream_datum(self, *args: Any, **kwargs: Any) -> Any:
        resource, self._composed = super()._convert_datum_to_stream_datum(*args, **kwargs)
        return resource, self._composed

    def emit(self, name: DocumentNames, doc: Any) -> None:
        if name is DocumentNames.event or doc is self._composed:
            self.dispatcher.process(name, doc)
        else:
            super().emit(name, doc)


class CatalogWriter(TiledWriter):
    """A `TiledWriter` (subscribe it to the RunEngine) whose runs reach the catalog as they
    happen: events and image references are written `interval` seconds after they come,
    also while no document comes (a paused run, a long step), instead of at the run's end;
    later where writing takes long (at most `WRITE_SHARE` of the time goes to it), within
    `SLOWEST` intervals however slow. Documents but a run's start are taken on its
    thread: the RunEngine never waits for the catalog, but at a run's stop (see the
    module). Its documents go through `EngineNormalizer` unless another `normalizer` is
    given. Each is first appended to its run's journal (which names the catalog): in
    `journal` (a directory), or the default one (True), or none (False). A run's stop tells
    a Tiled server that the run's streams ended, as TiledWriter does, but not the embedded
    catalog, which keeps none to follow (`close_streams`)."""

    def __init__(
        self,
        client: Any,
        *,
        interval: float = INTERVAL,
        journal: bool | str | os.PathLike[str] = True,
        **kwargs: Any,
    ):
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, not {interval!r}")
        kwargs.setdefault("normalizer", EngineNormalizer)
        super().__init__(client, **kwargs)
        self.interval = interval
        #: whether a run's stop tells the catalog its streams ended: not the embedded one's
        self.close_streams = keeps_streams(client.context)
        #: every document, on disk as it comes, until the catalog has its run's stop
        self.journal: Journal | None = None
        if journal is not False:
            directory = None if journal is True else Path(journal)
            self.journal = Journal(directory, catalog=catalog_location(client))
        self._lock = threading.Lock()  #: held to take documents or write: one thread at once
        self._queue: collections.deque[tuple[str, Any]] = collections.deque()
        self._wake = threading.Event()  #: set: the thread takes the queue now
        self._error: BaseException | None = None  #: a document's, taken on the thread
        self._runs: weakref.WeakSet[_PacedRunWriter] = weakref.WeakSet()
        #: runs whose stop the catalog did not take: held (strongly) until it does
        self._unfinished: set[_PacedRunWriter] = set()
        self._thread = threading.Thread(
            target=self._write_ahead,
            args=(weakref.ref(self), self._wake),
            name="scmos-catalog-writer",
        )
        self._thread.daemon = True

    def __call__(self, name: str, doc: Any) -> None:
        if self.journal is not None:
            self.journal.write(name, doc)
        self._queue.append((name, doc))
        if not self._thread.is_alive():
            with self._lock:
                if not self._thread.is_alive():
                    self._thread.start()
        if name in _AT_ONCE:
            self._wake.set()
        # A stop waits for the thread, then takes what is left; a start is taken here if the
        # thread is not busy; any other document is left to the thread (unless too many
        # wait). Each fails the run where one the thread took failed.
        wait = name == "stop" or len(self._queue) >= QUEUE_LIMIT
        if not (wait or name == "start") or not self._lock.acquire(blocking=wait):
            error, self._error = self._error, None
            if error is not None:
                raise error
            return
        try:
            self._take_queued()
        finally:
            self._lock.release()
        if self._error is not None:  # a stop always gets here: no run's error outlives it
            error, self._error = self._error, None
            raise error

    def _take_queued(self) -> None:
        """Take the queued documents, in order, each whatever became of the one before (as
        TiledWriter takes them), the lock held. The first error is raised to the RunEngine
        at the document it is taking, or at its next one where this thread took it."""
        while self._queue:
            name, doc = self._queue.popleft()
            if name == "stop" and self._error is not None:
                # Failed on the thread, and not yet raised: the run's record says so.
                doc = {
                    **doc,
                    "exit_status": "fail",
                    "reason": f"the catalog did not take all of the run: {self._error}",
                }
            try:
                super().__call__(name, doc)
            except Exception as exc:
                self._error = self._error or exc

    def _factory(self, name: str, doc: Any) -> tuple[list[Any], list[Any]]:
        run = _PacedRunWriter(
            self.client,
            interval=self.interval,
            unfinished=self._unfinished.add,
            written=self.journal.end if self.journal is not None else lambda uid: None,
            close_streams=self.close_streams,
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
    def _write_ahead(ref: weakref.ref[CatalogWriter], wake: threading.Event) -> None:
        """Four times an interval, and whenever woken, take what was queued and write what
        runs held long enough; ends with its writer. It waits first: the document that
        started it (a run's start) is the RunEngine's thread's to take."""
        while (writer := ref()) is not None:
            interval = writer.interval
            del writer
            wake.wait(interval / 4)
            wake.clear()
            if (writer := ref()) is None:
                return
            with writer._lock:
                writer._take_queued()
                for run in list(writer._runs):
                    run.write_if_due()
                writer._unfinished.difference_update(
                    [run for run in list(writer._unfinished) if run.finish_if_due()]
                )
                writer._take_queued()
            del writer
