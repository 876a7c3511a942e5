"""Pause/resume, abort, stop and Ctrl-C during count: the file matches the events."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import bluesky.preprocessors as bpp
import h5py
import numpy as np
import pytest
from area_detector_handlers.handlers import AreaDetectorHDF5Handler
from bluesky.plans import count
from bluesky.utils import RunEngineInterrupted
from bluesky_tiled_plugins import TiledWriter

from ophyd_scmos import SCMOSCamera, open_catalog
from ophyd_scmos import device as device_module
from ophyd_scmos.pipeline import layout


def pause_at(RE, seq_num: int, defer: bool, delay: float = 0):
    """Request a pause from another thread, as Ctrl-C's handler does, `delay` s after an
    event."""

    def callback(name, doc):
        if name == "event" and doc["seq_num"] == seq_num:
            threading.Timer(delay, RE.request_pause, kwargs={"defer": defer}).start()

    return RE.subscribe(callback)


def check_events_match_file(recorder, driver) -> int:
    """Every event's datum reads its own frames; returns the frames in the file."""
    (resource,) = recorder.of("resource")
    path = os.path.join(resource["root"], resource["resource_path"])
    datums = {d["datum_id"]: d for d in recorder.of("datum")}
    handler = AreaDetectorHDF5Handler(path, **resource["resource_kwargs"])
    k = resource["resource_kwargs"]["frame_per_point"]
    with h5py.File(path, "r") as f:
        numbers = f[layout.FRAME_NUMBER][()]  # the camera's numbers: a rewind skips some
    points = []
    for event in recorder.of("event"):
        p = datums[event["data"]["cam_image"]]["datum_kwargs"]["point_number"]
        points.append(p)
        frames = handler(point_number=p)
        assert event["data"]["cam_frame_number"] == numbers[p * k]
        for j in range(k):
            np.testing.assert_array_equal(frames[j], driver.expected_frame(numbers[p * k + j]))
    handler.close()
    assert np.all(np.diff(numbers) > 0)
    assert points == sorted(set(points)), "point numbers must increase"
    with h5py.File(path, "r") as f:
        assert bool(f["/entry"].attrs["complete"])
        return f[layout.DATA].shape[0]


@pytest.mark.parametrize("defer", [True, False], ids=["deferred", "immediate"])
def test_pause_then_resume_continues_in_the_same_file(cam, driver, RE, recorder, defer):
    cam.frames_per_point.set(2)
    token = pause_at(RE, 10, defer)
    with pytest.raises(RunEngineInterrupted):
        RE(count([cam], num=30))
    RE.unsubscribe(token)
    RE.resume()
    assert len(recorder.of("event")) == 30
    assert len(recorder.of("resource")) == 1
    saved = check_events_match_file(recorder, driver)
    last_point = recorder.of("datum")[-1]["datum_kwargs"]["point_number"]
    assert saved == 2 * (last_point + 1)


def test_a_plan_that_does_not_rewind_paused_mid_point_goes_on_with_that_point(
    cam, driver, RE, recorder
):
    """Not rewound, the plan reads the point it triggered before the pause: cut at resume,
    as for a plan that takes it again, the run failed there (its point gone)."""
    cam.exposure_time.set(0.3)
    token = pause_at(RE, 1, defer=False, delay=0.1)  # as the second point exposes
    with pytest.raises(RunEngineInterrupted):
        RE(bpp.rewindable_wrapper(count([cam], num=4), False))
    RE.unsubscribe(token)
    RE.resume()
    assert len(recorder.of("event")) == 4
    assert check_events_match_file(recorder, driver) == 4


@pytest.mark.parametrize("how", ["abort", "stop"])
def test_abort_or_stop_keeps_exactly_the_frames_of_emitted_events(cam, driver, RE, recorder, how):
    pause_at(RE, 12, defer=False)
    with pytest.raises(RunEngineInterrupted):
        RE(count([cam], num=1000))
    getattr(RE, how)()
    (stop,) = recorder.of("stop")
    assert stop["exit_status"] == ("abort" if how == "abort" else "success")
    events = len(recorder.of("event"))
    assert check_events_match_file(recorder, driver) == events
    assert cam._staged.name == "no" and cam._run is None

    recorder.docs.clear()  # a new run in the same session
    RE(count([cam], num=3))
    assert len(recorder.of("event")) == 3


@pytest.mark.parametrize("how", ["abort", "stop"])
def test_abort_or_stop_during_the_first_point_keeps_no_frame(cam, RE, recorder, how):
    """No event came, so no reading told the camera a RunEngine records it: the point's
    frame written before the pause stayed in a file marked complete, pointed at by none."""
    cam.frames_per_point.set(2)
    cam.exposure_time.set(0.2)

    paused = threading.Event()

    def pause_once_a_frame_is_written(value: int, **kwargs: object) -> None:
        if value >= 1 and not paused.is_set():  # before the first event is saved
            paused.set()
            threading.Thread(target=RE.request_pause, kwargs={"defer": False}).start()

    cam.frames_written.subscribe(pause_once_a_frame_is_written, run=False)
    with pytest.raises(RunEngineInterrupted):
        RE(count([cam], num=3))
    getattr(RE, how)()
    assert recorder.of("event") == []
    with h5py.File(cam.file_path.get(), "r") as f:
        assert f[layout.DATA].shape[0] == 0
        assert bool(f["/entry"].attrs["complete"])


def test_a_point_outlasting_the_pause_is_cut_once_its_frames_landed(cam, RE, recorder, monkeypatch):
    """The pause waits a while for a point's frames (30 s; here 0.2 s), the point takes
    longer: cut at resume while its last frames were still exposing, they landed as the
    first of the point taken again, whose own last frame was cut."""
    monkeypatch.setattr(device_module, "PAUSE_WAIT", 0.2)
    cam.frames_per_point.set(3)
    cam.exposure_time.set(0.4)  # a point: 1.2 s
    paused = threading.Event()

    def pause_once_a_frame_is_written(value: int, **kwargs: object) -> None:
        if value >= 1 and not paused.is_set():
            paused.set()
            threading.Thread(target=RE.request_pause, kwargs={"defer": False}).start()

    cam.frames_written.subscribe(pause_once_a_frame_is_written, run=False)
    with pytest.raises(RunEngineInterrupted):
        RE(count([cam], num=1))
    RE.resume()
    (event,) = recorder.of("event")
    with h5py.File(cam.file_path.get(), "r") as f:
        numbers = f[layout.FRAME_NUMBER][()].tolist()
    assert numbers == [3, 4, 5]  # the point taken again: the camera's frames 0-2 were cut
    assert event["data"]["cam_frame_number"] == 3


CTRL_C_SCRIPT = """
import sys
import h5py
from bluesky import RunEngine
from bluesky.plans import count
from bluesky.utils import RunEngineInterrupted
from bluesky_tiled_plugins import TiledWriter
from ophyd_scmos import SCMOSCamera, SimulatedSCMOS

cam = SCMOSCamera(name="cam", driver=SimulatedSCMOS(shape=(128, 128), seed=4),
                  write_dir=sys.argv[1], ring_mb=2)
cam.roi.set((0, 0, 64, 64))
cam.exposure_time.set(0.001)
events = []
def note(name, doc):
    if name == "event":
        events.append(doc)
        if len(events) == 20:
            print("RUNNING", flush=True)
RE = RunEngine({})
RE.subscribe(note)
try:
    RE(count([cam], num=10**6))
except RunEngineInterrupted:
    RE.abort()
with h5py.File(cam.file_path.get(), "r") as f:
    print("RESULT", len(events), f["/entry/data/data"].shape[0],
          bool(f["/entry"].attrs["complete"]), flush=True)
"""


def test_ctrl_c_in_a_terminal_pauses_and_abort_closes_the_file(tmp_path):
    # A terminal sends SIGINT to the whole foreground process group, writer included.
    proc = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline().strip() == "RUNNING"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    (line,) = [x for x in out.splitlines() if x.startswith("RESULT")]
    _, events, saved, complete = line.split()
    assert int(events) >= 20
    assert int(saved) == int(events)
    assert complete == "True"  # the writer survived the SIGINT and closed the file itself


def test_resume_after_a_rewind_cuts_the_unrecorded_point(cam, driver):
    """What the RunEngine does on an immediate pause mid-trigger, step by step."""
    cam.frames_per_point.set(2)
    cam.stage()
    cam.trigger().wait(10)
    docs = list(cam.collect_asset_docs())  # point 0 recorded in an event
    cam.trigger().wait(10)  # point 1: the pause comes before its event
    cam.pause()
    cam.resume()  # the plan rewinds and triggers point 1 again
    cam.trigger().wait(10)
    docs += list(cam.collect_asset_docs())
    cam.unstage()
    assert [d["datum_kwargs"]["point_number"] for n, d in docs if n == "datum"] == [0, 1]
    with h5py.File(cam.file_path.get(), "r") as f:
        np.testing.assert_array_equal(f[layout.FRAME_NUMBER][()], [0, 1, 4, 5])
        np.testing.assert_array_equal(f[layout.DATA][2], driver.expected_frame(4))
        assert f[layout.DATA].shape[0] == 4


@pytest.mark.parametrize("after_stop", [True, False], ids=["camera-stopped", "camera-running"])
def test_ctrl_c_while_a_file_closes_leaves_it_to_the_next_run_to_close(
    cam, driver, monkeypatch, after_stop
):
    """Ctrl-C in a plain script as a run's file closes, before the writer was told to finish
    it: the next run's file closes it as ended early, with every frame, not silently. Where
    it came before the camera stopped, the next stage refused ("camera already started"): it
    stops what the interrupted close left running."""
    cam.stage()
    for _ in range(3):
        cam.trigger().wait(10)
    first = cam.file_path.get()
    stream = cam._run.stream
    stop = stream.stop

    def ctrl_c() -> None:
        monkeypatch.setattr(stream, "stop", stop)  # one Ctrl-C
        if after_stop:
            stop()
        raise KeyboardInterrupt

    monkeypatch.setattr(stream, "stop", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        cam.unstage()
    assert driver._running is not after_stop  # what the interrupted close left
    cam.stage()
    cam.trigger().wait(10)
    cam.unstage()
    with h5py.File(first, "r") as f:
        np.testing.assert_array_equal(
            f[layout.DATA][()], [driver.expected_frame(n) for n in range(3)]
        )
        outcome = layout.Outcome.read(f)
    assert outcome is not None and (outcome.frames_written, outcome.complete) == (3, False)
    assert "never finished" in outcome.error
    with h5py.File(cam.file_path.get(), "r") as f:
        np.testing.assert_array_equal(f[layout.DATA][()], [driver.expected_frame(0)])
        assert layout.Outcome.read(f).complete


def test_ctrl_c_after_a_file_was_told_to_close_leaves_the_next_runs_file_alone(cam, monkeypatch):
    """Ctrl-C after the writer was told to finish the file, before its answer: the answer
    came as the next run's file was opened and was taken as that file's, whose own close
    was then never asked for (left open, later closed as never finished)."""
    cam.stage()
    cam.trigger().wait(10)
    closed = cam._run.stream._closed

    class CtrlC:
        def is_set(self) -> bool:
            return closed.is_set()

        def wait(self, timeout: float | None = None) -> bool:
            raise KeyboardInterrupt

    monkeypatch.setattr(cam._run.stream, "_closed", CtrlC())
    with pytest.raises(KeyboardInterrupt):
        cam.unstage()
    cam.stage()  # the camera's next run, on the same writer
    cam.trigger().wait(10)
    cam.unstage()
    with h5py.File(cam.file_path.get(), "r") as f:  # closed: readable without SWMR
        outcome = layout.Outcome.read(f)
    assert outcome is not None and outcome.complete and outcome.frames_written == 1


def camera(driver, tmp_path, asset_docs: str, exposure: float = 0.001) -> SCMOSCamera:
    """The `cam` fixture's camera with the given asset documents, two frames a point."""
    cam = SCMOSCamera(
        name="cam", driver=driver, write_dir=tmp_path / "data", ring_mb=4, asset_docs=asset_docs
    )
    cam.roi.set((32, 16, 96, 64))
    cam.exposure_time.set(exposure)
    cam.frames_per_point.set(2)
    return cam


def test_a_pause_during_a_trigger_keeps_one_stream_datum_per_event(driver, tmp_path, RE, recorder):
    cam = camera(driver, tmp_path, "stream", exposure=0.05)
    token = pause_at(RE, 3, defer=False, delay=0.03)  # in the next point's 0.1 s trigger
    try:
        with pytest.raises(RunEngineInterrupted):
            RE(count([cam], num=6))
        RE.unsubscribe(token)
        RE.resume()
    finally:
        cam.destroy()
    assert [d["indices"] for d in recorder.of("stream_datum")] == [
        {"start": p, "stop": p + 1} for p in range(6)
    ]
    with h5py.File(cam.file_path.get(), "r") as f:
        numbers = f[layout.FRAME_NUMBER][()]
    assert [e["data"]["cam_frame_number"] for e in recorder.of("event")] == list(numbers[::2])
    assert len(numbers) == 12


class SlowReader:
    """A detector read after the camera, whose read awaits (as ophyd-async devices' do):
    while it reads point `pause_at`, Ctrl-C's pause lands after the camera's read and
    before the event is saved, so the RunEngine drops that event and takes the point
    again."""

    name, parent = "slow", None

    def __init__(self, RE, pause_at: int):
        self.RE, self.pause_at, self.reads = RE, pause_at, 0

    def describe(self):
        return {"slow": {"source": "test", "dtype": "number", "shape": []}}

    def read_configuration(self):
        return {}

    def describe_configuration(self):
        return {}

    async def read(self):
        self.reads += 1
        if self.reads == self.pause_at + 1:
            requested = threading.Event()

            def ctrl_c() -> None:
                self.RE.request_pause(defer=False)
                requested.set()

            threading.Timer(0.05, ctrl_c).start()
            deadline = time.monotonic() + 60
            while not requested.is_set() and time.monotonic() < deadline:  # however late
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.25)
        return {"slow": {"value": float(self.reads), "timestamp": time.time()}}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """One embedded catalog for the module's runs (each test reads its own run)."""
    return open_catalog(tmp_path_factory.mktemp("catalog"), in_process=True)


@pytest.mark.parametrize("asset_docs", ["resource", "stream"])
@pytest.mark.parametrize("point", [0, 2], ids=["first-point", "third-point"])
def test_a_pause_between_the_cameras_read_and_the_save_retakes_the_point(
    driver, tmp_path, RE, recorder, catalog, asset_docs, point
):
    cam = camera(driver, tmp_path, asset_docs)
    RE.subscribe(TiledWriter(catalog))
    slow = SlowReader(RE, pause_at=point)
    try:
        with pytest.raises(RunEngineInterrupted):
            RE(count([cam, slow], num=5))
        RE.resume()
    finally:
        cam.destroy()
    events = recorder.of("event")
    dropped = point + 1  # the slow read during which the pause came: its event never was
    assert [e["data"]["slow"] for e in events] == [r for r in range(1, 7) if r != dropped]
    # The dropped event's point was cut and taken again: the file holds the events' frames.
    with h5py.File(cam.file_path.get(), "r") as f:
        numbers = f[layout.FRAME_NUMBER][()]
        assert f[layout.DATA].shape[0] == 10
        assert f[layout.stats_path("frame", "total")].shape[0] == 10
    assert [e["data"]["cam_frame_number"] for e in events] == list(numbers[::2])
    if asset_docs == "resource":
        assert check_events_match_file(recorder, driver) == 10
    else:
        assert [d["indices"] for d in recorder.of("stream_datum")] == [
            {"start": p, "stop": p + 1} for p in range(5)
        ]
    images = catalog[recorder.of("start")[0]["uid"]]["primary"]["cam_image"].read()
    assert images.shape == (5, 2, 64, 96)
    for image, number in zip(np.asarray(images).reshape(10, 64, 96), numbers, strict=True):
        np.testing.assert_array_equal(image, driver.expected_frame(number))


TILED_SCRIPT = """
import sys
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from bluesky.plans import count
from ophyd_scmos import SCMOSCamera, SimulatedSCMOS, open_catalog

cam = SCMOSCamera(name="cam", driver=SimulatedSCMOS(shape=(128, 128), seed=4),
                  write_dir=sys.argv[1], ring_mb=2)
cam.exposure_time.set(0.001)
events = []
def note(name, doc):
    if name == "event":
        events.append(doc)
        if len(events) == 20:
            print("RUNNING", flush=True)
RE = RunEngine({})
RE.subscribe(TiledWriter(open_catalog(sys.argv[2])))
RE.subscribe(note)
RE(count([cam], num=10**6))  # no try: Ctrl-C leaves the RunEngine paused at exit
"""


def test_ctrl_c_in_a_plain_script_with_tiled_writer_ends_the_run_at_exit(tmp_path):
    """The script ends on RunEngineInterrupted with its run paused and the camera staged.
    At exit the run is aborted while the embedded catalog still serves: the stop document
    is written and the file keeps exactly the frames of the run's events."""
    proc = subprocess.Popen(
        [sys.executable, "-c", TILED_SCRIPT, str(tmp_path / "data"), str(tmp_path / "cat")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline().strip() == "RUNNING"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=90)  # it once hung for 130 s, then aborted
    assert proc.returncode == 1, err[-3000:]  # the uncaught RunEngineInterrupted
    assert "RunEngineInterrupted" in err and "did not finish" not in err
    run = open_catalog(tmp_path / "cat").values().last()
    assert run.metadata["stop"]["exit_status"] == "abort"
    events = run.metadata["stop"]["num_events"]["primary"]
    assert events >= 20
    images = run["primary"]["cam_image"].read()
    assert images.shape[0] == events and images.shape[-2:] == (128, 128)
    (path,) = (tmp_path / "data").iterdir()
    with h5py.File(path, "r") as f:
        assert f[layout.DATA].shape[0] == events
        assert bool(f["/entry"].attrs["complete"])


def test_ctrl_c_while_a_ring_is_made_leaves_none_in_shared_memory(monkeypatch):
    from ophyd_scmos.pipeline import ring

    def interrupted(shm):
        raise KeyboardInterrupt

    before = set(ring.SHM_DIR.glob(f"scmos_{os.getpid()}_*"))
    monkeypatch.setattr(ring, "_touch", interrupted)  # where a large ring spends its time
    with pytest.raises(KeyboardInterrupt):
        ring.FrameRing.create((64, 96), "uint16", 4)
    assert set(ring.SHM_DIR.glob(f"scmos_{os.getpid()}_*")) == before


def test_ctrl_c_while_a_writer_starts_leaves_no_process(monkeypatch):
    from ophyd_scmos.pipeline import process

    started = []
    popen = subprocess.Popen

    def remember(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    class Interrupted(set):
        def add(self, writer):
            raise KeyboardInterrupt

    monkeypatch.setattr(process.subprocess, "Popen", remember)
    monkeypatch.setattr(process, "_LIVE", Interrupted())
    with pytest.raises(KeyboardInterrupt):
        process.WriterProcess()
    (writer,) = started
    assert writer.returncode is not None  # ended and reaped: nothing left running
