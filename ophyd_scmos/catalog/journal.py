"""A run's documents on disk as they come, so that a killed acquiring process loses none.

`CatalogWriter` holds a run's events for about a second before the catalog gets them; a
process killed meanwhile took them with it, and with them every other device's readings
(motor positions, counters): the camera's file keeps only the frames. So each document a
`CatalogWriter` is handed is first appended to the run's journal, one line of JSON per
document, in one `write` each: the kernel keeps it once the call returns, whatever becomes of
the process (not `fsync`ed: a power cut loses the last seconds, as it does the frames). The
journal is deleted once the catalog has the run's stop. ``ophyd-scmos recover --catalog``
writes the events of a journal that the catalog lacks into the run (`replay`) before it
closes the run from the cameras' files. A journal's first line names the catalog it was
written for (`catalog_of`), so that a run whose start never reached the catalog (it did not
answer as the run began) is made there from its journal (`begin`), and in no other catalog.

A journal grows by about half a kilobyte an event of a dozen readings while its run lasts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from bluesky_tiled_plugins.writing.tiled_writer import RunNormalizer

from ophyd_scmos.catalog.run_writer import TABLE, ExistingRun, RunWriter
from ophyd_scmos.paths import state_dir

__all__ = [
    "JOURNAL_ENV",
    "Journal",
    "begin",
    "catalog_of",
    "default_journal_dir",
    "journal_path",
    "read",
    "replay",
    "stop_of",
]

logger = logging.getLogger(__name__)

#: where journals are kept, if set (default: the user's state directory)
JOURNAL_ENV = "OPHYD_SCMOS_JOURNAL"
#: a document's key that names the document it belongs to, by document name: a run's
#: documents lead to its start through these
_OWNER = {
    "descriptor": "run_start",
    "resource": "run_start",
    "stream_resource": "run_start",
    "stop": "run_start",
    "event": "descriptor",
    "event_page": "descriptor",
    "datum": "resource",
    "datum_page": "resource",
    "stream_datum": "stream_resource",
}
#: the name of a journal's first line, which names its catalog: no document's
_HEADER = "journal"


def default_journal_dir() -> Path:
    return Path(os.environ.get(JOURNAL_ENV) or state_dir() / "journal")


def journal_path(directory: Path, run_uid: str) -> Path:
    return Path(directory) / f"{run_uid}.jsonl"


class Journal:
    """The journals of the runs whose documents `write` is handed, in `directory`, for the
    catalog named `catalog` (`embedded.catalog_location`)."""

    def __init__(self, directory: Path | None = None, catalog: str | None = None):
        self.directory = Path(directory) if directory is not None else default_journal_dir()
        self.catalog = catalog
        self._lock = threading.Lock()
        self._files: dict[str, int] = {}  #: run uid -> its open journal
        #: runs whose journal could not be written: held open all the same (`recover` leaves
        #: a run whose journal a process holds), and written no more
        self._given_up: set[str] = set()
        self._runs: dict[str, str] = {}  #: uid of a descriptor, (stream) resource -> run uid

    def write(self, name: str, doc: Mapping[str, Any]) -> None:
        """Append `doc` to its run's journal (a run whose start it was not handed has none).
        A journal that cannot be written (its disk full) is said once and given up for that
        run, which goes on: the catalog still gets it, and the journal keeps what it had."""
        with self._lock:
            if name == "start":
                run: str | None = doc["uid"]
            else:
                owner = doc.get(_OWNER.get(name, ""))
                run = self._runs.get(owner, owner) if isinstance(owner, str) else None
            if run is None or run in self._given_up or (name != "start" and run not in self._files):
                return
            if name in ("descriptor", "resource", "stream_resource"):
                self._runs[doc["uid"]] = run
            try:
                line = (json.dumps([name, doc], default=_plain) + "\n").encode()
                if name == "start":
                    header = json.dumps([_HEADER, {"catalog": self.catalog}]) + "\n"
                    line = header.encode() + line
                    self.directory.mkdir(parents=True, exist_ok=True)
                    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                    self._files[run] = os.open(journal_path(self.directory, run), flags, 0o644)
                os.write(self._files[run], line)
            except (OSError, TypeError, ValueError) as exc:
                logger.warning(
                    "run %s: its journal in %s could not be written (%s) and is given up: "
                    "if this process dies, the events the catalog has not yet taken are lost",
                    run,
                    self.directory,
                    exc,
                )
                self._given_up.add(run)  # held while the run goes on: it is not a dead one's
                return
            # A stop keeps the journal open until the catalog takes it (`end`): while the
            # process lives and still owes the catalog the run's end, `recover` sees the
            # journal held and leaves the run to it.

    def close(self) -> None:
        """Let go of every run's journal, kept on disk, as the process's end does: `recover`
        then closes the runs whose end the catalog does not have."""
        with self._lock:
            for run in list(self._files):
                self._close(run)

    def _close(self, run: str) -> None:
        self._given_up.discard(run)
        fd = self._files.pop(run, None)
        if fd is not None:
            os.close(fd)

    def end(self, run: str) -> None:
        """The catalog holds all of run `run`: its journal is not needed any more."""
        with self._lock:
            self._close(run)
            self._runs = {uid: owner for uid, owner in self._runs.items() if owner != run}
        with contextlib.suppress(OSError):  # none was written; what is left harms nothing
            journal_path(self.directory, run).unlink()


def _plain(value: Any) -> Any:
    """numpy's numbers and arrays as JSON's."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def read(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """The documents of the journal at `path`, in order; a last line the process was killed
    in the middle of writing is left out."""
    for name, doc in _lines(path):
        if name != _HEADER:
            yield name, doc


def catalog_of(path: Path) -> str | None:
    """The catalog the journal at `path` was written for (None: it does not say)."""
    for name, doc in _lines(path):
        return doc.get("catalog") if name == _HEADER else None
    return None


def stop_of(path: Path) -> dict[str, Any] | None:
    """The stop of the journal at `path`'s run, where the run ended (None: it did not)."""
    return next((doc for name, doc in read(path) if name == "stop"), None)


def _lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, "rb") as f:
        for line in f:
            try:
                name, doc = json.loads(line)
            except ValueError:
                if line.endswith(b"\n"):
                    raise ValueError(f"{path}: a damaged line in a run's journal") from None
                return
            yield name, doc


def begin(catalog: Any, documents: Iterable[tuple[str, dict[str, Any]]]) -> Any:
    """Make in `catalog` the run of `documents` (its journal) from its start, as TiledWriter
    makes it, and return it: the catalog never got the start. `replay` writes the rest."""
    for name, doc in documents:
        if name == "start":
            writer = RunWriter(catalog)
            normalizer = RunNormalizer()
            normalizer.subscribe(writer)
            normalizer(name, doc)
            return writer.root_node
    raise ValueError("the journal holds no run's start")


def replay(run: Any, documents: Iterable[tuple[str, dict[str, Any]]]) -> int:
    """Write into `run` (a catalog's client of it) the events of its `documents` (its
    journal) that its streams lack, with the streams that are missing; return how many.
    Nothing else is written: `recover.close_run` registers the images and writes the stop."""
    writer = _ResumedRunWriter(run)
    normalizer = RunNormalizer()
    normalizer.subscribe(writer)
    for name, doc in documents:
        if name != "stop":
            normalizer(name, doc)
    return writer.finish()


class _ResumedRunWriter(RunWriter):
    """TiledWriter's writer of one run, resumed on the run a catalog holds: its streams and
    their tables are found rather than made, and only events past those they hold are
    written."""

    def __init__(self, run: Any):
        super().__init__(run)
        self.root_node = ExistingRun(run)
        self.run = run
        self.held: dict[str, int] = {}  #: the last event number each stream holds
        self.added = 0

    def start(self, doc: Any) -> None:
        pass  # the catalog has it

    def descriptor(self, doc: Any) -> None:
        name = doc["name"]
        node = self._desc_nodes.get(name)
        if node is not None:
            known = [node.metadata.get("uid")]
            known += [update["uid"] for update in node.metadata.get("_config_updates", [])]
            if doc["uid"] in known:  # the catalog has this one: only map it
                self._desc_nodes[doc["uid"]] = node
                return
        super().descriptor(doc)
        if node is None and name in self.run:
            stream = self._desc_nodes[name]
            self.take_nodes(stream, arrays=True)
            self.held[name] = _last_event(stream)

    def event(self, doc: Any) -> None:
        name = self._desc_nodes[doc["descriptor"]].item["id"]
        if doc["seq_num"] > self.held.get(name, 0):
            super().event(doc)
            self.added += 1

    def stream_resource(self, doc: Any) -> None:
        pass  # images: registered from the cameras' files

    def stream_datum(self, doc: Any) -> None:
        pass

    def finish(self) -> int:
        for name, rows in self._internal_data_cache.items():
            if rows:
                self._write_internal_data(rows, desc_node=self._desc_nodes[name])
                rows.clear()
        return self.added


def _last_event(stream: Any) -> int:
    """The highest event number in the stream's table (0: none)."""
    tables = sorted(key for key in stream if key.startswith(TABLE))
    if not tables:
        return 0
    seq_num = stream[tables[0]].read(["seq_num"])["seq_num"]
    return int(seq_num.max()) if len(seq_num) else 0
