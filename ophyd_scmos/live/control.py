"""A camera's live view and focus mode, as the camera drives them.

Focus mode runs while the view is on and no run is staged: staging a run pauses it (the
view then shows the run's frames), unstaging resumes it. A setting changed in focus mode
takes effect at once: focus mode stops, the camera takes the setting, focus mode starts
again.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from ophyd_scmos.drivers.base import CameraDriver
from ophyd_scmos.live.view import LiveView
from ophyd_scmos.pipeline.focus import FocusLoop
from ophyd_scmos.pipeline.ring import FrameRing

__all__ = ["LiveControl"]

logger = logging.getLogger(__name__)

#: the live controls whose view is on, stopped at interpreter exit (`_stop_at_exit`)
_ON: weakref.WeakSet[LiveControl] = weakref.WeakSet()


def _stop_at_exit() -> None:
    """Stop the views a script left on (it ended without ``cam.destroy()``): focus mode
    first, while the ring it runs into is still there, then the view, whose server ends and
    whose directory goes."""
    for control in list(_ON):
        control.stop()


class LiveControl:
    """The live view of the camera `name` (none until `start`), and its focus mode.
    `ring_for_focus` gives a ring fitting the camera's frames as they are now."""

    def __init__(
        self, name: str, driver: CameraDriver, ring_for_focus: Callable[[], FrameRing]
    ) -> None:
        self.name, self.driver, self._ring_for_focus = name, driver, ring_for_focus
        self.view: LiveView | None = None
        self.focus: FocusLoop | None = None
        self.recording = False
        self._state: dict[str, Any] = {}
        self._where: tuple[str, int] | None = None  #: the view's host and port, as asked
        self._announce_failed = False  #: said once per view
        self._announcing = threading.Lock()  #: focus mode's thread announces its failure

    def start(self, host: str, port: int) -> str:
        """Start the view (if not running, running on another host or port than asked,
        port 0 being any, or no longer told the camera's state) and, unless a run is staged,
        focus mode."""
        where = self._where
        moved = where is None or host != where[0] or port not in (0, where[1])
        if self.view is None or not self.view.alive or moved or self._announce_failed:
            if self.view is not None:
                self.view.close()
            self.view, self._where, self._announce_failed = None, None, False
            self.view = LiveView(self.name, host, port)
            self._where = (host, port)
            self.announce(**self._state)
        if not self.recording:
            try:
                self._start_focus()
            except BaseException:  # no ring for it, say: no view left running unasked
                self.stop()
                raise
        _ON.add(self)
        # atexit runs the hook registered last first: registered again after each start, it
        # runs before the camera's writer ends and takes the ring focus mode runs into.
        atexit.unregister(_stop_at_exit)
        atexit.register(_stop_at_exit)
        return self.view.url

    def stop(self) -> None:
        """Stop focus mode and the view. Safe twice."""
        view, self.view, self._where = self.view, None, None
        _ON.discard(self)
        try:
            self._stop_focus()
        finally:
            if view is not None:
                view.close()

    def announce(self, **state: Any) -> None:
        """What the camera is and does now, for the view (kept for a view started later)."""
        with self._announcing:
            self._state.update(state)
            if self.view is not None:
                self._publish(self.view, state)

    def _publish(self, view: LiveView, state: dict[str, Any]) -> None:
        try:
            view.publish(**state)
        except OSError as exc:  # the view's files (/tmp full, or cleaned): never the run's
            if not self._announce_failed:
                self._announce_failed = True
                logger.warning(
                    "%s live view: cannot tell it the camera's state (%s); it may show old "
                    "frames. cam.live() again starts it afresh.",
                    self.name,
                    exc,
                )

    @contextlib.contextmanager
    def settings_change(self) -> Iterator[None]:
        """Around a change of the camera's settings: focus mode stops for it and starts again
        with the new settings."""
        focusing = self.focus is not None
        self._stop_focus()
        try:
            yield
        finally:
            if focusing:
                self._start_focus()

    def run_staging(self) -> None:
        """A run is being staged: focus mode stops, the camera is the run's."""
        self.recording = True
        self._stop_focus()

    def run_started(self, ring: FrameRing, file: str) -> None:
        self.announce(mode="recording", ring=ring.spec.to_json(), file=file)

    def run_ended(self) -> None:
        """The run's file is closed (or its staging failed): focus mode again if the view is
        on."""
        self.recording = False
        self.announce(mode="idle", file=None)
        if self.view is not None:
            self._start_focus()

    def _start_focus(self) -> None:
        focus = self.focus
        if focus is not None and focus.running and focus.error is None:
            return  # (one that failed says so before its thread ends)
        self._stop_focus()  # one that stopped on its own: the user's settings back first
        ring = self._ring_for_focus()
        focus = FocusLoop(self.driver, ring, on_error=self._focus_failed)
        self.focus = focus
        # Said before the thread starts: a camera that fails at its first frame says so after
        # (a loaded machine showed "focus" over the failure, said first).
        self.announce(mode="focus", ring=ring.spec.to_json(), file=None, error=None)
        try:
            focus.start()
        except BaseException:
            self.focus = None
            self.announce(mode="idle")
            raise

    def _focus_failed(self, error: Exception) -> None:
        """Focus mode stopped on its own (the camera failed): the page says so, and
        `cam.live()` starts it again."""
        self.announce(mode="idle", error=f"focus mode stopped: {error}")

    def _stop_focus(self) -> None:
        focus, self.focus = self.focus, None
        if focus is not None:
            focus.stop()
            self.announce(mode="idle")
