"""A Status that counts frames, so bluesky's progress bars show an acquisition's progress."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ophyd.status import DeviceStatus


class FrameStatus(DeviceStatus):
    """Done when `target` frames are in the file; `update(current)` tells the watchers.

    bluesky's ProgressBarManager calls `watch`; a plain DeviceStatus only tells it when it
    is done ("No progress bar available").
    """

    def __init__(self, device: Any, *, initial: int, target: int, **kwargs: Any):
        super().__init__(device, **kwargs)
        self.initial, self.target = initial, target
        self._watchers: list[Callable[..., None]] = []
        self._started = time.monotonic()

    def __str__(self) -> str:
        """Says why it failed: bluesky's FailedStatus, and so a failed run's stop reason,
        is this text."""
        text = super().__str__()
        if self.done and not self.success:
            text += f": {self.exception(timeout=0)}"
        return text

    __repr__ = __str__

    def watch(self, func: Callable[..., None]) -> None:
        self._watchers.append(func)

    def update(self, current: int) -> None:
        """Tell the watchers; progress never passes the target (lost frames count as taken,
        so the camera's count can run past it)."""
        current = min(current, self.target)
        span = max(1, self.target - self.initial)
        remaining = max(0, self.target - current) / span
        for watcher in list(self._watchers):
            watcher(
                name=self.device.name,
                current=current,
                initial=self.initial,
                target=self.target,
                unit="frames",
                precision=0,
                fraction=remaining,  # ophyd's convention: the fraction still to go
                time_elapsed=time.monotonic() - self._started,
            )
