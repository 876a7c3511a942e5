"""What a live view sees of a camera: the camera announces its state in a small JSON file, and
the view copies the newest frame out of the camera's ring, best-effort.

Nothing here can hold the camera up: the camera only ever replaces the announcement file
(`Announcer`), and the view's reads of the ring (`LiveFeed`) never hold a slot, never wait and
are never waited for. A view that is frozen or killed costs the camera nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ophyd_scmos.pipeline.ring import FrameRing, Header, NewestFrame, RingSpec, ring_exists

__all__ = ["MODES", "Announcer", "LiveFeed", "NewestFrame"]

#: idle: no frames come; focus: the camera free-runs into no file; recording: a run
MODES = ("idle", "focus", "recording")
_COUNTERS = {
    "acquired": Header.ACQUIRED,
    "dropped": Header.DROPPED,
    "missed": Header.MISSED,
    "written": Header.WRITTEN,
    "delivered": Header.DELIVERED,
}


class Announcer:
    """The camera's side: replaces the announcement file at once (a reader sees the old state
    or the new one). Keys: camera, model, pid, mode (`MODES`), ring (a `RingSpec` as JSON, or
    None), file (this run's, or None), settings, sensor_shape, rois ({name: [x, y, w, h]} in
    frame pixels), updated (time.time())."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state: dict[str, Any] = {}

    def publish(self, **state: Any) -> None:
        """Update the announcement with `state` and write it."""
        self.state.update(state, pid=os.getpid(), updated=time.time())
        part = self.path.with_suffix(".part")
        part.write_text(json.dumps(self.state))
        os.replace(part, self.path)


class LiveFeed:
    """The view's side: the camera's announced state and its newest frames."""

    def __init__(self, announcement: Path) -> None:
        self.path = announcement
        self._state: dict[str, Any] = {}
        self._seen: tuple[int, int] | None = None  # the announcement last read
        self._ring: FrameRing | None = None

    def state(self) -> dict[str, Any]:
        """The camera's latest announcement ({} before the first); re-read when it changed."""
        try:
            stat = self.path.stat()
            changed = (stat.st_ino, stat.st_mtime_ns)  # each update is a new file
            if changed != self._seen:
                self._state, self._seen = json.loads(self.path.read_text()), changed
        except (OSError, ValueError):  # not yet written, or being replaced: the last one
            pass
        return self._state

    def camera_alive(self) -> bool:
        """The process that announced is still there (a view outlives no camera)."""
        pid = self.state().get("pid")
        if pid is None:
            return True
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def frame(
        self,
        after: int = 0,
        ring: str | None = None,
        read: Callable[[np.ndarray], np.ndarray] = np.copy,
    ) -> NewestFrame | None:
        """The newest frame (`read` of it: see `FrameRing.newest`), if newer than the
        `after`-th of `ring` (another ring: any frame), else None. Tells the producer a view
        watches."""
        current = self._attach()
        if current is None:
            return None
        current.watch()
        return current.newest(after if ring == current.spec.name else 0, read)

    def counters(self) -> dict[str, float]:
        """This run's frames acquired, dropped, missed and written (in the file), frames
        delivered to the ring since it was made, and the ring's fill: the share of its slots
        holding frames the writer has not finished with. Zeros without a ring."""
        ring = self._attach()
        if ring is None:
            return {key: 0 for key in (*_COUNTERS, "ring_fill")}
        header = ring.header.copy()
        counts = {key: int(header[index]) for key, index in _COUNTERS.items()}
        released = int(header[Header.RELEASED]) - int(header[Header.RUN_BASE])
        pending = max(0, counts["acquired"] - released)
        return {**counts, "ring_fill": min(1.0, pending / ring.spec.n_slots)}

    def _attach(self) -> FrameRing | None:
        """The ring the camera announces, attached (again where it changed)."""
        self.let_go()
        spec = self.state().get("ring")
        if self._ring is None and spec and ring_exists(spec["name"]):
            with contextlib.suppress(FileNotFoundError):  # replaced since: the next state
                self._ring = FrameRing.attach(RingSpec.from_json(spec))
        return self._ring

    def let_go(self) -> None:
        """Drop the mapping of a ring the camera no longer announces, or has removed.

        A removed ring's memory stays taken while a view maps it: where /dev/shm is small,
        the camera's next ring (another frame size) would not fit. The server calls this
        every second, pages or none."""
        spec, ring = self.state().get("ring"), self._ring
        if ring is not None and (
            not spec or ring.spec.name != spec["name"] or not ring_exists(ring.spec.name)
        ):
            ring.close()
            self._ring = None

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
