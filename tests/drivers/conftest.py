"""Every driver the machine can run, behind one harness, for the contract suite and the ends.

Always: the simulated camera. With pymmcore-plus and mm-test-adapters: Micro-Manager's
DemoCamera. With Aravis: Aravis's fake GigE Vision camera, a separate process started here on
127.0.0.1 (broadcast discovery does not see it, so it is opened by address). With
``OPHYD_SCMOS_TEST_CAMERA=<spec>`` (see `driver_from_spec`): your camera too.

The contract suite runs once per entry of `HARNESSES`: to run it on a new driver, add a
function that returns its `Harness` (`probed_harness` fits any camera) and list it there.

Where a stack is missing its tests skip and say what to install; under CI (``CI`` set) a
missing stack fails instead, so a green CI never hides an untested driver.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ophyd_scmos.drivers import ROI, CameraDriver, SimulatedSCMOS, driver_from_spec
from tests.conftest import DEEP_CAMERA_BUFFER

FAKE_GV = "arv-fake-gv-camera-0.8"
FAKE_ADDRESS = "127.0.0.1"
ENV_CAMERA = "OPHYD_SCMOS_TEST_CAMERA"
ENV_UNPLUG = "OPHYD_SCMOS_TEST_UNPLUG"


def missing(reason: str) -> None:
    """Skip with the install that would run the test; fail under CI, where all is installed."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run every driver: {reason}")
    pytest.skip(reason)


@dataclass
class Harness:
    """One driver under test: how to make it, a small ROI it takes, how to make it vanish."""

    name: str
    make: Callable[[bool], CameraDriver]  #: small_buffer -> a new, unopened driver
    roi: ROI  #: small and valid on this camera, divisible by 4 everywhere
    exposure: float = 0.002  #: s, short but allowed
    overflow_after: float = 0.5  #: s of not reading that surely overflow the small buffer
    unplug: Callable[[CameraDriver], None] | None = None
    gone_within: float = 10.0  #: s from unplug to CameraError
    opened: list[CameraDriver] = field(default_factory=list)

    def open(self, small_buffer: bool = False) -> CameraDriver:
        driver = self.make(small_buffer)
        driver.open()
        self.opened.append(driver)
        return driver

    def close_all(self) -> None:
        while self.opened:
            self.opened.pop().close()
        gc.collect()  # GenICam: the last reference going releases control of the camera


# -- Aravis's fake GigE Vision camera --------------------------------------------------------


def _ahead_of_the_tests(pid: int) -> None:
    """A camera is hardware of its own, which a busy computer does not slow: the fake one
    runs ahead of the tests' processes where it may (as root, as on CI), or else a loaded
    machine starves it and its answers and frames come late or broken."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, -10)


class FakeGigECamera:
    """`arv-fake-gv-camera-0.8 -i 127.0.0.1` as a child process, restarted after a kill."""

    def __init__(self) -> None:
        self.serial = f"T{os.getpid() % 100000}"  # tells our camera from a stray one
        self.address = FAKE_ADDRESS
        self.process: subprocess.Popen | None = None
        self.lost_per_thousand = 0  #: stream packets the camera drops (a lossy link)

    def ensure(self, lost_per_thousand: int | None = None) -> None:
        """A camera running, dropping that many packets in a thousand (restarted if not;
        None: as many as it does)."""
        if lost_per_thousand is None:
            lost_per_thousand = self.lost_per_thousand
        if lost_per_thousand != self.lost_per_thousand:
            self.kill()
        if self.process is not None and self.process.poll() is None:
            return
        from gi.repository import Aravis, GLib

        self.lost_per_thousand = lost_per_thousand
        self.process = subprocess.Popen(
            [FAKE_GV, "-i", self.address, "-s", self.serial, "-r", str(lost_per_thousand)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _ahead_of_the_tests(self.process.pid)
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                assert self.process.stderr is not None
                err = self.process.stderr.read().decode(errors="replace")
                pytest.fail(f"{FAKE_GV} exited with {self.process.returncode}: {err}")
            try:
                serial = Aravis.Camera.new(self.address).get_device_id()
                break
            except GLib.Error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        gc.collect()  # drop the probe's connection before a driver takes control
        if serial != self.serial:
            pytest.fail(
                f"another fake camera (serial {serial}) already serves {self.address}: stop it"
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
            assert self.process.stderr is not None
            self.process.stderr.close()


@pytest.fixture(scope="module")
def fake_gige() -> Iterator[FakeGigECamera]:
    """The fake camera, for one test module at a time on this machine: it serves a fixed
    address, and `make test`'s workers run modules side by side."""
    if shutil.which(FAKE_GV) is None:
        missing(f"{FAKE_GV} not found: apt-get install aravis-tools gir1.2-aravis-0.8")
    try:
        import gi

        gi.require_version("Aravis", "0.8")
    except (ImportError, ValueError) as exc:
        missing(
            f"Aravis from Python needs PyGObject and gir1.2-aravis-0.8 ({exc}): "
            "pip install 'ophyd-scmos[genicam]'"
        )
    lock = Path(tempfile.gettempdir()) / "ophyd-scmos-tests-fake-gige.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # until this module's tests are done with it
        camera = FakeGigECamera()
        camera.ensure()
        yield camera
        camera.kill()


# -- Micro-Manager's DemoCamera --------------------------------------------------------------


@pytest.fixture(scope="session")
def mm_demo_available() -> None:
    from ophyd_scmos.drivers.micromanager import _core_class

    try:
        _core_class()  # imported as the driver imports it, leaving the root logger's level
        from pymmcore_plus import find_micromanager
    except ImportError as exc:
        missing(f"pymmcore-plus missing ({exc}): pip install 'ophyd-scmos[micromanager]'")
    path = find_micromanager()
    if not path or not any("DemoCamera" in name for name in os.listdir(path)):
        missing("no DemoCamera adapter: pip install mm-test-adapters")


# -- the harnesses ---------------------------------------------------------------------------

SMALL_ROI = ROI(32, 16, 96, 64)


def simulated_harness(request: pytest.FixtureRequest) -> Harness:
    # The software camera cannot be unplugged; closing it under a blocked reader is the nearest.
    return Harness(
        "simulated",
        lambda small: SimulatedSCMOS(
            shape=(256, 320), seed=1, camera_buffer_frames=4 if small else DEEP_CAMERA_BUFFER
        ),
        SMALL_ROI,
        overflow_after=0.2,
        unplug=lambda driver: driver.close(),
        gone_within=1.0,
    )


def micromanager_harness(request: pytest.FixtureRequest) -> Harness:
    request.getfixturevalue("mm_demo_available")
    from ophyd_scmos.drivers.micromanager import MicroManagerCamera

    def unplug(driver: CameraDriver) -> None:
        # What MMCore shows when a camera goes: its sequence ends and the device is gone.
        assert isinstance(driver, MicroManagerCamera)
        driver.core.stopSequenceAcquisition(driver.label)
        driver.core.unloadDevice(driver.label)

    return Harness(
        "micromanager",
        lambda small: MicroManagerCamera("DemoCamera:DCam", buffer_mb=1 if small else None),
        SMALL_ROI,
        unplug=unplug,
        gone_within=2.0,
    )


def genicam_harness(request: pytest.FixtureRequest) -> Harness:
    fake: FakeGigECamera = request.getfixturevalue("fake_gige")
    from ophyd_scmos.drivers.genicam import GenICamCamera

    def make(small: bool) -> GenICamCamera:
        fake.ensure()
        # 256 buffers: 1.3 s of frames, for a reader a loaded machine stalls
        return GenICamCamera(fake.address, buffer_frames=3 if small else 256, liveness=0.3)

    return Harness(
        "genicam",
        make,
        SMALL_ROI,
        exposure=0.005,  # the fake camera's pattern is dark below ~1 ms
        unplug=lambda driver: fake.kill(),
        gone_within=10.0,
    )


def probed_harness(name: str, make: Callable[[bool], CameraDriver]) -> Harness:
    """A harness for any real camera: opened once to find its sensor, then run at a 256x256
    ROI near the centre with 5 ms exposures; a person unplugs it (with OPHYD_SCMOS_TEST_UNPLUG
    set; the test is skipped otherwise)."""
    probe = make(False)
    probe.open()
    rows, cols = probe.sensor_shape
    probe.close()
    gc.collect()
    side = min(256, rows, cols) // 16 * 16
    roi = ROI((cols - side) // 32 * 16, (rows - side) // 32 * 16, side, side)

    def unplug(driver: CameraDriver) -> None:
        print(f"\n>>> unplug the camera ({name}) now <<<", file=sys.__stderr__, flush=True)

    return Harness(
        name,
        make,
        roi,
        exposure=0.005,
        overflow_after=2.0,
        unplug=unplug if os.environ.get(ENV_UNPLUG) else None,
        gone_within=60.0,
    )


def env_harness(request: pytest.FixtureRequest) -> Harness:
    """Your camera, named by OPHYD_SCMOS_TEST_CAMERA (see docs/cameras.md)."""
    spec = os.environ[ENV_CAMERA]
    kind = spec.partition(":")[0]
    small_kwargs = {"micromanager": {"buffer_mb": 1}, "genicam": {"buffer_frames": 3}}
    return probed_harness(
        f"env:{spec}",
        lambda small: driver_from_spec(spec, **(small_kwargs.get(kind, {}) if small else {})),
    )


#: The drivers the contract suite runs on, by test id (``-k genicam``): each makes a Harness,
#: skipping (``missing``) where its stack is not installed.
HARNESSES: dict[str, Callable[[pytest.FixtureRequest], Harness]] = {
    "simulated": simulated_harness,
    "micromanager": micromanager_harness,
    "genicam": genicam_harness,
}
if os.environ.get(ENV_CAMERA):
    HARNESSES["env"] = env_harness


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # At collection, not import: entries added anywhere in this file count.
    if "harness" in metafunc.fixturenames:
        metafunc.parametrize("harness", list(HARNESSES), indirect=True)


@pytest.fixture
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """One driver of HARNESSES, closed again after the test."""
    h = HARNESSES[request.param](request)
    yield h
    h.close_all()


def run_in_thread(target: Callable[[], object]) -> tuple[threading.Thread, list]:
    """Start `target` in a thread; the list gets its result or the exception it raised."""
    outcome: list = []

    def body() -> None:
        try:
            outcome.append(target())
        except BaseException as exc:  # the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome
