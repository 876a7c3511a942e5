"""The camera's side of its live view: the view's server process, and the file the camera
tells it its state in.

The server is a process of its own (`python -m ophyd_scmos.live`), in a session of its own
(a Ctrl-C at the prompt is not for it), that reads frames best-effort. The camera never waits
for it: it only replaces the announcement file, and reads one line from the server, once,
when it starts.

The view's files (the announcement, the server's log) are in a temporary directory of its
own, which goes with the view however the camera's process ends: `LiveView.close` removes it
(at interpreter exit too, see `ophyd_scmos.live.control`). A killed process (SIGKILL) runs
nothing, so there the server removes it as it leaves (``--own-directory``), which it does
within a second or two of its camera's process: at once, where a sweep of /tmp by the next
view started would wait for one, and would have to tell a dead camera's directory from a
running one's.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ophyd_scmos.live.feed import Announcer

__all__ = ["TOKEN_ENV", "LiveView"]

TOKEN_ENV = "OPHYD_SCMOS_LIVE_TOKEN"  #: the page's access token, for the server
START_TIMEOUT = 60.0


class LiveView:
    """A running live view of the camera `camera`: its address is `url`."""

    def __init__(self, camera: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"ophyd-scmos-live-{camera}-"))
        self.announcer = Announcer(self.dir / "camera.json")
        self.announcer.publish(camera=camera, mode="idle", ring=None, file=None)
        self.log = self.dir / "server.log"
        try:
            self.process, self.url = self._start(host, port)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _start(self, host: str, port: int) -> tuple[subprocess.Popen[bytes], str]:
        command = [sys.executable, "-m", "ophyd_scmos.live", str(self.announcer.path)]
        with open(self.log, "wb") as log:
            process = subprocess.Popen(
                [*command, "--host", host, "--port", str(port), "--own-directory"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env={**os.environ, TOKEN_ENV: secrets.token_urlsafe(24)},
                start_new_session=True,
            )
        assert process.stdout is not None
        with process.stdout:
            ready = select.select([process.stdout], [], [], START_TIMEOUT)[0]
            line = process.stdout.readline() if ready else b""
        if not line:
            process.kill()
            process.wait()
            said = self.log.read_text(errors="replace").strip()[-2000:]
            raise RuntimeError(f"the live view did not start; it said: {said or 'nothing'}")
        return process, json.loads(line)["url"]

    def publish(self, **state: Any) -> None:
        """Tell the view what the camera does now (see `Announcer`)."""
        self.announcer.publish(**state)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        """End the server and remove its files. Safe twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(3)
            except subprocess.TimeoutExpired:  # frozen (SIGSTOP): the camera does not wait
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir)
