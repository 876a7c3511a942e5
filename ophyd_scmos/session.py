"""What the IPython profile and the commands set up the same way: the RunEngine of a lab
session, a progress bar of frames fed by a run's documents, and stand-ins for what the
profile loads on a thread once the prompt is there (the catalog, the BestEffortCallback)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bluesky import RunEngine
    from bluesky.utils import Msg

    from ophyd_scmos.config import LabConfig


def make_run_engine(lab: LabConfig, *, progress: bool, sigint: bool = True) -> RunEngine:
    """A RunEngine for the lab: its metadata (``RE.md``, with the scan id) persists in the
    lab's metadata directory, so scan ids go on across IPython sessions and
    ``ophyd-scmos acquire``; the lab's [metadata] goes into every run's start document.

    `progress`: bluesky's progress bars while it waits for a status (the interactive
    session). `sigint`: the RunEngine's own Ctrl-C handling (pause, ask); a command that
    handles Ctrl-C itself passes False.
    """
    from bluesky import RunEngine
    from bluesky.utils import PersistentDict, ProgressBarManager

    RE = RunEngine(context_managers=None if sigint else [])
    lab.metadata_dir.mkdir(parents=True, exist_ok=True)
    # bluesky types these attributes narrower than it takes them (any mapping, any hook).
    RE.md = PersistentDict(str(lab.metadata_dir))  # type: ignore[assignment]
    for key in ("uid", "time"):  # kept by an older configuration: every run would fail
        RE.md.pop(key, None)
    RE.md.update(lab.metadata)
    if progress:
        RE.waiting_hook = ProgressBarManager()  # type: ignore[assignment]
    return RE


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
