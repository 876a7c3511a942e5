"""Focus mode: the camera free-runs into its ring for a live view, and nothing is recorded.

Frames land in two slots in turn (the ring's first and its preview slot), so the newest
stays whole while the next arrives. The camera runs in internal trigger mode, at most
`MAX_RATE` frames/s (a view shows no more), with the user's other settings; theirs come back,
trigger mode and period included, when focus mode stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable

import numpy as np

from ophyd_scmos.drivers.base import CameraDriver, CameraError, TriggerMode
from ophyd_scmos.pipeline.ring import FrameRing

__all__ = ["MAX_RATE", "FocusLoop"]

MAX_RATE = 30.0  #: frames/s at most in focus mode


class FocusLoop:
    """Runs `driver` into `ring` until `stop`; `error` says why it stopped on its own, and
    `on_error` is told."""

    def __init__(
        self,
        driver: CameraDriver,
        ring: FrameRing,
        on_error: Callable[[CameraError], None] | None = None,
    ) -> None:
        if tuple(ring.spec.frame_shape) != tuple(driver.frame_shape) or ring.spec.dtype != (
            np.dtype(driver.dtype).str
        ):
            raise ValueError(f"ring {ring.spec} does not fit the camera's frames")
        self.driver, self.ring = driver, ring
        self.error: CameraError | None = None
        self._on_error = on_error  #: told, on the loop's thread, when it stops on its own
        self._theirs = driver.settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Configure free running and start the camera and the thread that reads it."""
        theirs = self._theirs
        period = max(theirs.acquire_period, theirs.exposure_time, 1 / MAX_RATE)
        focus = dataclasses.replace(
            theirs, trigger_mode=TriggerMode.INTERNAL, acquire_period=period
        )
        self.driver.configure(focus)
        try:
            self.driver.start()
        except BaseException:
            self.driver.configure(theirs)
            raise
        self._thread = threading.Thread(target=self._run, name="scmos-focus", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the camera and the thread; the user's settings are the camera's again."""
        self._stop.set()
        with contextlib.suppress(CameraError):
            self.driver.stop()
        if self._thread is not None:
            self._thread.join(10)
        self.driver.configure(self._theirs)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        ring, slots, landed = self.ring, (0, self.ring.preview), 0
        while not self._stop.is_set():
            target = slots[landed % 2]
            try:
                ring.land(target, lambda out: self.driver.read_into(out, 0.2))
            except TimeoutError:
                continue
            except CameraError as exc:
                if not self._stop.is_set():
                    self.error = exc
                    if self._on_error is not None:
                        self._on_error(exc)
                return
            landed += 1
