"""A simulated camera in focus mode that announces itself as a camera does, the live view's
server run for real on it (`python -m ophyd_scmos.live`), and a headless Chromium."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ophyd_scmos import SimulatedSCMOS
from ophyd_scmos.live.feed import Announcer
from ophyd_scmos.live.view import TOKEN_ENV
from ophyd_scmos.pipeline.focus import FocusLoop
from ophyd_scmos.pipeline.ring import FrameRing
from tests.live.browser import Browser, chromium_path

ROIS = {"spot": [40, 30, 64, 48], "edge": [200, 150, 80, 60]}  #: frame pixels


class FocusCamera:
    """A simulated camera free-running into a ring, announced as `SCMOSCamera` does."""

    def __init__(self, directory: Path, shape: tuple[int, int], rois: dict | None = None):
        self.driver = SimulatedSCMOS(shape=shape, seed=5)
        self.driver.open()
        self.driver.configure(dataclasses.replace(self.driver.settings, exposure_time=0.005))
        self.ring = FrameRing.create(self.driver.frame_shape, self.driver.dtype, 4)
        self.announcer = Announcer(directory / "camera.json")
        rows, cols = shape
        self.announcer.publish(
            camera="cam",
            model=self.driver.model,
            mode="focus",
            ring=self.ring.spec.to_json(),
            file=None,
            settings={
                "exposure_time": 0.005,
                "acquire_period": 0.0,
                "roi": [0, 0, cols, rows],
                "binning": 1,
                "bit_depth": 16,
                "trigger_mode": "software",
                "frames_per_point": 1,
            },
            sensor_shape=[rows, cols],
            rois=ROIS if rois is None else rois,
        )
        self.loop = FocusLoop(self.driver, self.ring)
        self.loop.start()

    def expected(self, frame_number: int, binning: int) -> np.ndarray:
        """The frame as the page should show it: block means of binning x binning pixels,
        the last rows and columns that fill no block left out."""
        frame = self.driver.expected_frame(frame_number).astype(np.float64)
        rows, cols = (n // binning for n in frame.shape)
        whole = frame[: rows * binning, : cols * binning]
        return whole.reshape(rows, binning, cols, binning).mean(axis=(1, 3))

    def close(self) -> None:
        self.loop.stop()
        self.ring.close()
        self.driver.close()


class LiveServer:
    """`python -m ophyd_scmos.live` on an announcement, as the camera starts it."""

    def __init__(self, announcement: Path, token: str, *args: str) -> None:
        self.token = token
        self.log_path = announcement.with_name("server.log")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ophyd_scmos.live", str(announcement), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env={**os.environ, TOKEN_ENV: token},
                start_new_session=True,
            )
        assert self.process.stdout is not None
        ready = select.select([self.process.stdout], [], [], 60)[0]
        line = self.process.stdout.readline() if ready else b""
        if not line:
            self.close()
            raise AssertionError(f"the server did not start: {self.log_path.read_text()}")
        self.started: dict[str, Any] = json.loads(line)
        self.url: str = self.started["url"]
        self.base = self.url.split("/?")[0]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def camera(request, tmp_path) -> Iterator[FocusCamera]:
    """A 256x320 camera (parametrize indirectly for another shape)."""
    focus = FocusCamera(tmp_path, getattr(request, "param", (256, 320)))
    yield focus
    focus.close()


@pytest.fixture
def server(camera: FocusCamera) -> Iterator[LiveServer]:
    live = LiveServer(camera.announcer.path, secrets.token_urlsafe(16))
    yield live
    live.close()


@pytest.fixture
def browser(tmp_path) -> Iterator[Browser]:
    """A headless Chromium; skipped where none is installed (failed under CI)."""
    if chromium_path() is None:
        reason = "the page's tests need a headless browser: apt-get install chromium"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with Browser(tmp_path / "chromium-profile") as chromium:
        yield chromium
