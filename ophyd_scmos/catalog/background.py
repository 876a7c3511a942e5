"""A catalog opened on a thread, for a session that should not wait for it.

Opening a catalog imports bluesky-tiled-plugins (xarray, pandas, dask: seconds) and may wait
for its local server to start. The IPython profile opens it on a thread instead, so that the
prompt comes first: `BackgroundCatalog` stands in for the catalog until it is open (each use
waits for it), and where it was given a namespace, puts the catalog itself in its place.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

__all__ = ["BackgroundCatalog"]


class BackgroundCatalog:
    """The catalog that `opener` returns, opened on a thread by `start`: indexing, iterating,
    attributes and ``repr`` wait for it and are the catalog's. `tiled_writer` is a RunEngine
    callback that writes into it (a `TiledWriter`, made on the same thread)."""

    def __init__(self, opener: Callable[[], Any]) -> None:
        self._opener = opener
        self._started = threading.Event()
        self._opened = threading.Event()
        self._lock = threading.Lock()
        self._catalog: Any = None
        self._writer: Any = None

    def start(self, namespace: MutableMapping[str, Any] | None = None, name: str = "") -> None:
        """Open the catalog on a thread. Once open, ``namespace[name]`` becomes the catalog
        itself, if it still is this stand-in."""

        def open_it() -> None:
            try:
                catalog = self._open()
            except Exception as exc:  # told now; raised again at first use, if it still fails
                print(f"ophyd-scmos: the catalog did not open: {exc}", file=sys.stderr)
            else:
                if namespace is not None and namespace.get(name) is self:
                    namespace[name] = catalog
            finally:
                self._opened.set()

        if self._started.is_set():
            return
        self._started.set()
        # Not a daemon: an interpreter that exits meanwhile waits for it rather than
        # stopping it in the middle of an import.
        threading.Thread(target=open_it, name="scmos-catalog-open").start()

    def start_at_prompt(self, shell: Any, name: str) -> None:
        """`start` as IPython shows its first prompt (into its namespace as `name`): opened
        meanwhile, the catalog's imports would share the interpreter with the session's own
        and hold the prompt back. Without a prompt (input that is not a terminal), at once."""
        app = getattr(getattr(shell, "pt_app", None), "app", None)
        if app is None:
            self.start(shell.user_ns, name)
        else:
            app.pre_run_callables.append(lambda: self.start(shell.user_ns, name))

    def _open(self) -> Any:
        with self._lock:
            if self._catalog is None:
                self._catalog = self._opener()
            if self._writer is None:
                from bluesky_tiled_plugins import TiledWriter

                self._writer = TiledWriter(self._catalog)
            return self._catalog

    def wait(self) -> Any:
        """The catalog, once open (opened here, where the thread could not or was not
        started yet)."""
        if self._started.is_set():
            self._opened.wait()
        return self._open()

    def tiled_writer(self, name: str, doc: dict[str, Any]) -> Any:
        """Write a document into the catalog (subscribe this to the RunEngine)."""
        self.wait()
        return self._writer(name, doc)

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):  # copy, pickle and friends: not the catalog's
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
