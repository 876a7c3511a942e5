"""A headless Chromium driven over the DevTools protocol: the browser Debian packages
(`chromium`), no download, no test framework. One page; JavaScript evaluated in it;
screenshots as PNG bytes."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

CHROMIUM = "chromium"
WINDOW = (1100, 800)  #: CSS pixels; one device pixel each


def chromium_path() -> str | None:
    return shutil.which(CHROMIUM)


class Browser:
    """A headless Chromium with one page. Close it (or use `with`)."""

    def __init__(self, profile: Path, timeout: float = 30) -> None:
        executable = chromium_path()
        if executable is None:
            raise RuntimeError("no chromium on PATH (Debian: apt-get install chromium)")
        command = [
            executable,
            "--headless=new",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--hide-scrollbars",
            "--mute-audio",
            *(["--no-sandbox"] if os.geteuid() == 0 else []),
            "about:blank",
        ]
        self.log = open(profile.parent / f"{profile.name}.log", "wb")  # noqa: SIM115
        # Its temporary files (org.chromium.Chromium.*), removed with it rather than left in
        # /tmp; a short path, as it puts sockets there
        self.scratch = Path(tempfile.mkdtemp(prefix="chromium-"))
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
            env={**os.environ, "TMPDIR": str(self.scratch)},
        )
        self._ids = itertools.count(1)
        self._connection = contextlib.ExitStack()
        self._socket: ClientConnection | None = None
        try:
            self._socket = self._connection.enter_context(
                connect(self._endpoint(profile, timeout), max_size=None)
            )
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
                "sessionId"
            ]
            self.page("Page.enable")
            self.page(
                "Emulation.setDeviceMetricsOverride",
                width=WINDOW[0],
                height=WINDOW[1],
                deviceScaleFactor=1,
                mobile=False,
            )
        except BaseException:
            self.close()
            raise

    def _endpoint(self, profile: Path, timeout: float) -> str:
        """The browser's DevTools address, from the file Chromium writes once it listens."""
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}")
            lines = active.read_text().split() if active.exists() else []
            if len(lines) == 2:
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            time.sleep(0.05)
        raise TimeoutError(f"chromium did not start in {timeout} s")

    def call(self, method: str, session: str | None = None, **params: Any) -> dict:
        """One DevTools command; its result (events on the way are skipped)."""
        assert self._socket is not None
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self._socket.send(json.dumps(message))
        while True:
            answer = json.loads(self._socket.recv(timeout=60))
            if answer.get("id") == ident:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def page(self, method: str, **params: Any) -> dict:
        return self.call(method, self.session, **params)

    def goto(self, url: str) -> None:
        self.page("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.page(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        """Poll until the expression is truthy; its value. The timeout only bounds a failure:
        a loaded machine may take long."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{expression!r} still {value!r} after {timeout} s")
            time.sleep(0.05)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.page("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        self._socket = None
        self._connection.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # its own group: its helpers too
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):  # a helper it left behind
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
