"""Shared fixtures: small simulated cameras, a RunEngine that keeps every document."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator

import numpy as np
import pytest
from bluesky import RunEngine

from ophyd_scmos import SCMOSCamera, SimulatedSCMOS
from ophyd_scmos.catalog.journal import JOURNAL_ENV
from ophyd_scmos.catalog.local_server import IDLE_ENV, Address

SENSOR = (256, 320)  # small, non-square: catches swapped axes


@pytest.fixture(scope="session", autouse=True)
def catalog_servers_stop_soon_after_the_tests(tmp_path_factory) -> Iterator[None]:
    """The local catalog servers tests start stop seconds after the test run, not minutes
    (those of the stand-in user's commands, kept longer, at its end); the runs' journals stay
    out of the user's directories."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(IDLE_ENV, "5")
        mp.setenv(JOURNAL_ENV, str(tmp_path_factory.mktemp("journals")))
        yield
    for state in tmp_path_factory.getbasetemp().glob("**/.server-*/*.json"):
        with contextlib.suppress(OSError, ValueError):  # gone meanwhile, or half-written
            os.kill(Address(**json.loads(state.read_text())).pid, signal.SIGTERM)


#: frames a test's simulated camera (that of `cam`, the driver harness's, ...) holds while its
#: reader stalls (a count, not memory): enough for any test's movie, so a loaded machine makes
#: the camera wait, never miss frames that a test expects (tests of missed frames make cameras
#: of their own, with small buffers)
DEEP_CAMERA_BUFFER = 1_000_000


@pytest.fixture
def driver() -> SimulatedSCMOS:
    """The simulated camera of `cam`."""
    return SimulatedSCMOS(shape=SENSOR, seed=7, camera_buffer_frames=DEEP_CAMERA_BUFFER)


@pytest.fixture
def cam(driver: SimulatedSCMOS, tmp_path) -> SCMOSCamera:
    """A camera with a 64x96 ROI and 1 ms exposure writing into a temporary directory."""
    camera = SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path / "data", ring_mb=4)
    camera.roi.set((32, 16, 96, 64))
    camera.exposure_time.set(0.001)
    yield camera
    camera.destroy()  # unstages a run a test left staged, ends the writer process


class Recorder:
    """A RunEngine subscriber that keeps (name, doc) pairs."""

    def __init__(self) -> None:
        self.docs: list[tuple[str, dict]] = []

    def __call__(self, name: str, doc: dict) -> None:
        self.docs.append((name, doc))

    def of(self, name: str) -> list[dict]:
        return [d for n, d in self.docs if n == name]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def RE(recorder: Recorder) -> RunEngine:
    engine = RunEngine({}, call_returns_result=False)
    engine.subscribe(recorder)
    return engine


def expected_frames(driver: SimulatedSCMOS, n: int) -> np.ndarray:
    return np.stack([driver.expected_frame(k) for k in range(n)])
