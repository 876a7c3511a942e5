"""What the IPython profile and the commands set up the same way: the RunEngine of a lab
session, and a progress bar of frames fed by a run's documents."""

from __future__ import annotations

import sys
import time
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bluesky import RunEngine

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
