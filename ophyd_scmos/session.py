"""What the IPython profile and the commands set up the same way: the RunEngine of a lab
session, a progress bar of frames fed by a run's documents, and stand-ins for what the
profile loads on a thread once the prompt is there (the catalog, the BestEffortCallback)."""

from __future__ import annotations

import copy
import fcntl
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote

if TYPE_CHECKING:
    from bluesky import RunEngine
    from bluesky.utils import Msg

    from ophyd_scmos.config import LabConfig


def make_run_engine(lab: LabConfig, *, progress: bool, sigint: bool = True) -> RunEngine:
    """A RunEngine for the lab: its metadata (``RE.md``, with the scan id) is the lab's
    `LabMetadata`, shared at once by every session and ``ophyd-scmos acquire`` of the lab,
    which hands out its scan ids; the lab's [metadata] goes into every run's start document.

    `progress`: bluesky's progress bars while it waits for a status (the interactive
    session). `sigint`: the RunEngine's own Ctrl-C handling (pause, ask); a command that
    handles Ctrl-C itself passes False.
    """
    from bluesky import RunEngine
    from bluesky.utils import ProgressBarManager

    md = LabMetadata(lab.metadata_dir)
    RE = RunEngine(context_managers=None if sigint else [], scan_id_source=md.next_scan_id)
    # bluesky types these attributes narrower than it takes them (any mapping, any hook).
    RE.md = md  # type: ignore[assignment]
    for key in ("uid", "time"):  # kept by an older configuration: every run would fail
        RE.md.pop(key, None)
    RE.md.update(lab.metadata)
    if progress:
        RE.waiting_hook = ProgressBarManager()  # type: ignore[assignment]
    return RE


class LabMetadata(MutableMapping[str, Any]):
    """``RE.md`` as every session of a lab shares it, at once: IPython sessions and
    ``ophyd-scmos acquire`` side by side see each other's changes and never take the same
    scan id (`next_scan_id`). bluesky's `PersistentDict` kept a copy per session, written
    back over the others' (and failed at exit when another session had rewritten a key).

    It is one JSON file in `directory` (what a start document holds): each change is made
    under a file lock to what the file holds then, and written whole by a rename, so a crash
    leaves the file before or after it; a read sees the file as it is. A change inside a
    value (``RE.md["sample"]["shape"] = ...``) is not kept: assign the key again. The first
    use takes over what a `PersistentDict` kept in `directory`.
    """

    FILE = "metadata.json"

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / self.FILE
        self._lock_path = self.directory / ".metadata.lock"
        self._thread_lock = threading.RLock()
        self._data: dict[str, Any] = {}
        self._seen: tuple[int, int, int] | None = None  #: the file read: inode, time, size
        #: the scan id `next_scan_id` last gave this session's RunEngine: its ``scan_id``
        self._handed: int | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self._change(self._take_over_persistent_dict)
        self._refresh()

    def next_scan_id(self, md: Any = None) -> int:
        """The RunEngine's `scan_id_source`: the scan id after the last one any session
        took, taken at once. This session's ``scan_id`` is it from then on (the RunEngine
        writes it back, which changes nothing, and reads it into the run's start document,
        while another session may already have taken the next), until it is set here."""

        def take(data: dict[str, Any]) -> None:
            data["scan_id"] = data.get("scan_id", 0) + 1

        self._change(take)
        self._handed = self._data["scan_id"]
        return self._handed

    # -- the mapping ----------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key == "scan_id" and self._handed is not None:
            return self._handed
        return self._refresh()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._refresh()))

    def __len__(self) -> int:
        return len(self._refresh())

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "scan_id" and self._handed is not None and value == self._handed:
            return  # the RunEngine writing back what it was handed: the file has it already
        self.update({key: value})

    def __delitem__(self, key: str) -> None:
        def delete(data: dict[str, Any]) -> None:
            del data[key]

        self._change(delete)
        if key == "scan_id":
            self._handed = None

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set every key given in one change."""
        values = dict(other, **kwargs)
        self._change(lambda data: data.update(values))
        if "scan_id" in values:  # set here: the lab's count goes on from it
            self._handed = None

    def __repr__(self) -> str:
        return f"<LabMetadata {self.path} {dict(self)!r}>"

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        """What it holds now, as a plain dict (the RunEngine copies ``RE.md`` into a run's
        start document)."""
        return copy.deepcopy(dict(self), memo)

    # -- the file -------------------------------------------------------------------------
    def _refresh(self) -> dict[str, Any]:
        """What the file holds now (read again only when it changed)."""
        with self._thread_lock:
            try:
                info = os.stat(self.path)
            except FileNotFoundError:
                self._data, self._seen = {}, None
                return self._data
            seen = (info.st_ino, info.st_mtime_ns, info.st_size)
            if seen != self._seen:
                self._data, self._seen = self._read(), seen
            return self._data

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError) as exc:
            raise ValueError(f"the lab's RE.md, {self.path}, does not read: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"the lab's RE.md, {self.path}, holds no mapping")
        return data

    def _change(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Apply `change` to what the file holds now, under the lock, and write it whole."""
        with self._thread_lock, open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._seen = None
            data = self._refresh()
            change(data)
            try:
                text = json.dumps(data, default=_plain, indent=1)
            except (TypeError, ValueError) as exc:
                self._seen = None  # the change is dropped: read the file again
                raise TypeError(f"RE.md holds what a start document holds (JSON): {exc}") from None
            part = self.path.with_name(f".{self.FILE}.{os.getpid()}")
            part.write_text(text, encoding="utf-8")
            os.replace(part, self.path)
            info = os.stat(self.path)
            self._seen = (info.st_ino, info.st_mtime_ns, info.st_size)

    def _take_over_persistent_dict(self, data: dict[str, Any]) -> None:
        """What bluesky's `PersistentDict` kept in the directory, once (under the lock: a
        session that came first did it already): a file per key, named by zict (the key
        quoted, then ``#N``), its value in msgpack."""
        if self.path.exists():
            return
        import msgpack
        import msgpack_numpy

        for entry in self.directory.iterdir():
            if entry.name[0] != "." and entry.is_file():
                value = msgpack.unpackb(
                    entry.read_bytes(), object_hook=msgpack_numpy.decode, raw=False
                )
                data[unquote(entry.name.split("#")[0])] = value


def _plain(value: Any) -> Any:
    """numpy's numbers and arrays as JSON takes them; anything else is refused."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{value!r} ({type(value).__name__}) is not JSON")


class FrameProgress:
    """A RunEngine subscriber drawing a bar of the frames a run has recorded (on stderr; none
    where it is not a terminal): each event's frames in a step scan, StreamDatum pages in a
    movie.

    Its clock runs from the run's start document to its last frame, so its rate is the
    camera's: neither the set-up before the run (the catalog, the writer) nor the tail after
    the last frame (closing the file, the catalog's stop) counts. A timed movie's total is an
    estimate; the bar grows to the frames actually taken instead of counting past it.
    """

    def __init__(
        self, total: int, name: str, *, file: IO[str] | None = None, disable: bool | None = None
    ):
        from tqdm import tqdm

        # Every count is drawn (miniters=1, mininterval=0), so the last drawing is the last
        # frame's, which `close` relies on.
        self.bar = tqdm(
            total=total,
            unit="frames",
            desc=name,
            file=file or sys.stderr,
            disable=disable,
            miniters=1,
            mininterval=0,
        )
        self.frames = 0
        self.frames_per_event = 1
        self.started: float | None = None
        self.last_frame: float | None = None

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            self.bar.reset(total=self.bar.total)  # the clock starts with the run
            self.started = time.monotonic()
        elif name == "descriptor":
            shape: list[int] = next(
                (v["shape"] for v in doc["data_keys"].values() if v.get("dtype") == "array"), []
            )
            self.frames_per_event = shape[0] if len(shape) == 3 else 1
        elif name == "event":
            self._count(self.frames + self.frames_per_event)
        elif name == "stream_datum":
            self._count(doc["indices"]["stop"])

    def _count(self, frames: int) -> None:
        if frames <= self.frames:
            return
        if self.bar.total is not None and frames > self.bar.total:
            self.bar.total = frames
        self.bar.update(frames - self.frames)
        self.frames = frames
        self.last_frame = time.monotonic()

    @property
    def elapsed(self) -> float | None:
        """Seconds from the run's start to its last frame (None before a frame)."""
        if self.started is None or self.last_frame is None:
            return None
        return self.last_frame - self.started

    def close(self) -> None:
        """Draw the final count and rate, with the clock stopped at the last frame."""
        self.bar.unpause()  # restarts the clock from the last drawing: the last frame
        self.bar.close()


# Two threads importing at once can each hold a module the other's import needs: Python then
# hands one of them a partly initialized module, and its import fails. The BestEffortCallback's
# matplotlib and the catalog's pandas and Tiled share such modules (dateutil, numpy's parts).
# The loads wait for one another instead: they share one interpreter lock, so running them
# side by side saved little anyway.
_ONE_LOAD_AT_A_TIME = threading.Lock()


class Background:
    """What `load` returns, loaded on a thread by `start`, for a session that should not wait
    for its imports (the catalog: bluesky-tiled-plugins, xarray, pandas; the
    BestEffortCallback: matplotlib). Until then it stands in for it: calling, indexing,
    iterating, attributes and ``repr`` wait for it and are its; where it was given a
    namespace, it puts the loaded object itself in its place. `failed` says what a failure
    to load means, before the error's own words (it is tried again at the next use)."""

    def __init__(self, load: Callable[[], Any], failed: str) -> None:
        self._load = load
        self._failed = failed
        self._started = threading.Event()
        self._loaded = threading.Event()
        self._lock = threading.Lock()
        self._value: Any = None
        self._namespace: MutableMapping[str, Any] = {}
        self._name = ""

    def start(self, namespace: MutableMapping[str, Any] | None = None, name: str = "") -> None:
        """Load it on a thread. Once loaded, here or at a use, ``namespace[name]`` becomes
        it, if it still is this stand-in."""

        def load_it() -> None:
            try:
                self._get()
            except Exception as exc:  # told now; raised again at first use, if it still fails
                # Unless the session is over (`ipython -c` done while this loaded): then no
                # use comes, and the failure is only the interpreter's shutting down.
                if threading.main_thread().is_alive():
                    print(f"ophyd-scmos: {self._failed}: {exc}", file=sys.stderr)
            finally:
                self._loaded.set()

        if namespace is not None:
            self._namespace, self._name = namespace, name
        if self._started.is_set():
            return
        self._started.set()
        # Not a daemon: an interpreter that exits meanwhile waits for it rather than
        # stopping it in the middle of an import.
        threading.Thread(target=load_it, name=f"scmos-load-{self._name or 'background'}").start()

    def start_at_prompt(self, shell: Any, name: str) -> None:
        """`start` once IPython has drawn its first prompt (into its namespace as `name`):
        loaded meanwhile, its imports would share the interpreter with the session's own and
        with drawing the prompt, and hold the prompt back. Without a prompt (input that is not
        a terminal) it loads at its first use, on the thread that uses it: there is no prompt
        to free, and a thread would import beside the session's own code (see
        `_ONE_LOAD_AT_A_TIME`)."""
        # A use before any prompt (startup code, `ipython -c`, which never draws one) loads it
        # there and also gives the loaded object its place.
        self._namespace, self._name = shell.user_ns, name
        app = getattr(getattr(shell, "pt_app", None), "app", None)
        if app is not None:  # every drawing calls it; only the first starts
            app.after_render += lambda _: self.start()

    def _get(self) -> Any:
        with self._lock:
            if self._value is None:
                with _ONE_LOAD_AT_A_TIME:
                    self._value = self._load()
                if self._namespace.get(self._name) is self:
                    self._namespace[self._name] = self._value
            return self._value

    def wait(self) -> Any:
        """The object, once loaded (loaded here, where the thread could not or was not
        started yet)."""
        if self._started.is_set():
            self._loaded.wait()
        return self._get()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.wait()(*args, **kwargs)

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):  # copy, pickle and friends: not the object's
            raise AttributeError(attribute)
        return getattr(self.wait(), attribute)

    def __getitem__(self, key: Any) -> Any:
        return self.wait()[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.wait())

    def __len__(self) -> int:
        return len(self.wait())

    def __contains__(self, key: Any) -> bool:
        return key in self.wait()

    def __dir__(self) -> list[str]:
        return dir(self.wait())

    def __repr__(self) -> str:
        return repr(self.wait())


class BackgroundCatalog(Background):
    """The catalog that `opener` returns, opened on a thread; `tiled_writer` is a RunEngine
    callback that writes into it (a `CatalogWriter`, made on the same thread)."""

    def __init__(self, opener: Callable[[], Any]) -> None:
        self._writer: Any = None

        def open_with_writer() -> Any:
            from ophyd_scmos.catalog.writing import CatalogWriter

            catalog = opener()
            self._writer = CatalogWriter(catalog)
            return catalog

        super().__init__(open_with_writer, "no run starts until the catalog opens")

    def tiled_writer(self, name: str, doc: dict[str, Any]) -> Any:
        """Write a document into the catalog (subscribe this to the RunEngine)."""
        self.wait()
        return self._writer(name, doc)

    def before_runs(self, plan: Iterator[Msg]) -> Iterator[Msg]:
        """A RunEngine preprocessor: a plan's first stage or run waits for the catalog,
        and where it cannot open, the plan fails there with `CatalogUnavailable`, before any
        device is staged (no file made, no scan id spent), and without bluesky's "Run
        aborted" traceback: no run was. A plan that only moves motors never waits for it,
        and once the catalog is open, plans go through untouched."""
        if self._writer is not None:
            return plan
        from bluesky.preprocessors import plan_mutator

        if _quiet_unavailable not in logging.getLogger("bluesky").filters:
            logging.getLogger("bluesky").addFilter(_quiet_unavailable)

        def once_open(msg: Msg) -> Iterator[Msg]:
            self.wait()
            return (yield msg)

        def first_stage_or_run(msg: Msg) -> tuple[Iterator[Msg] | None, None]:
            if msg.command in ("stage", "open_run") and self._writer is None:
                return once_open(msg), None
            return None, None

        return plan_mutator(plan, first_stage_or_run)


def _quiet_unavailable(record: logging.LogRecord) -> bool:
    """Drops bluesky's log of a plan that `BackgroundCatalog.before_runs` stopped."""
    from ophyd_scmos.catalog import CatalogUnavailable

    return not (record.exc_info and isinstance(record.exc_info[1], CatalogUnavailable))
