"""The writer process is SIGKILLed in the middle of a run."""

from __future__ import annotations

import os
import signal
import threading
import time

import h5py
import numpy as np
import pytest
from area_detector_handlers.handlers import AreaDetectorHDF5Handler
from bluesky.plans import count

from ophyd_scmos.pipeline import layout
from tests.conftest import expected_frames


def test_killed_writer_fails_the_plan_and_leaves_a_readable_file(cam, driver, RE, recorder):
    killed = {}

    def kill_writer_at_event_50(name, doc):
        if name == "event" and doc["seq_num"] == 50:
            stream = cam._run.stream
            deadline = time.monotonic() + 10
            while stream.frames_written < 50 and time.monotonic() < deadline:
                time.sleep(0.01)  # let a flush happen: the file then holds >= 50 frames
            killed["ring"] = stream.ring.spec.name
            killed["saved"] = stream.frames_written
            killed["at"] = time.monotonic()
            os.kill(stream.writer.pid, signal.SIGKILL)

    RE.subscribe(kill_writer_at_event_50)
    with pytest.raises(Exception) as info:
        RE(count([cam], num=5000))
    noticed = time.monotonic() - killed["at"]
    message = " ".join(str(e) for e in _chain(info.value))
    path = cam.file_path.get()
    assert path in message and "died" in message and "holds the first" in message
    assert noticed < 15  # a second in practice; the bound only guards against a hang
    assert not os.path.exists(f"/dev/shm/{killed['ring']}")
    assert len(recorder.of("event")) < 5000

    with h5py.File(path, "r") as f:  # a plain open: the open-for-write flag was cleared
        saved = f[layout.DATA].shape[0]
        assert saved >= killed["saved"] >= 50
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(driver, saved))
        assert not f["/entry"].attrs["complete"]
    handler = AreaDetectorHDF5Handler(path, frame_per_point=1)
    np.testing.assert_array_equal(handler(point_number=0)[0], driver.expected_frame(0))
    handler.close()

    # Every event claims frames that survived: its trigger completed once they were flushed.
    events = recorder.of("event")
    assert len(events) <= saved
    points = [d["datum_kwargs"]["point_number"] for d in recorder.of("datum")]
    assert max(points[: len(events)]) < saved

    recorder.docs.clear()  # the same session goes on: a new run works
    RE(count([cam], num=5))
    assert cam.file_path.get() != path
    assert len(recorder.of("event")) == 5


def test_a_writer_killed_at_once_leaves_no_event_claiming_a_lost_frame(cam, driver, RE, recorder):
    """Killed right after an event, before any periodic flush: the events so far must all
    point at frames the file holds (a trigger completes once its frames are flushed)."""

    def kill_writer_at_event_30(name, doc):
        if name == "event" and doc["seq_num"] == 30:
            os.kill(cam._run.stream.writer.pid, signal.SIGKILL)

    RE.subscribe(kill_writer_at_event_30)
    with pytest.raises(Exception) as info:
        RE(count([cam], num=5000))
    assert "died" in " ".join(str(e) for e in _chain(info.value))
    with h5py.File(cam.file_path.get(), "r") as f:
        saved = f[layout.DATA].shape[0]
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(driver, saved))
    assert 30 <= len(recorder.of("event")) <= saved


def test_a_writer_killed_while_paused_ends_the_run_at_resume_saying_why(cam, driver, RE, recorder):
    """Paused inside a point (its frames taken, its event never sent), the writer killed
    meanwhile: resuming cannot cut the file to the recorded points, so the run fails with the
    writer's death, as during a run, rather than a broken pipe that left the RunEngine paused."""
    from bluesky.utils import RunEngineInterrupted

    cam.exposure_time.set(0.05)

    def pause_inside_point_3(name, doc):
        if name == "event" and doc["seq_num"] == 3:  # as Ctrl-C's handler asks, from a thread
            threading.Timer(0.01, RE.request_pause, kwargs={"defer": False}).start()

    RE.subscribe(pause_inside_point_3)
    with pytest.raises(RunEngineInterrupted):
        RE(count([cam], num=20))
    writer = cam._run.stream.writer
    os.kill(writer.pid, signal.SIGKILL)
    writer.ended.wait(10)
    with pytest.raises(Exception) as info:
        RE.resume()
    message = " ".join(str(e) for e in _chain(info.value))
    assert "died with exit code -9" in message and "holds the first" in message
    assert RE.state == "idle"
    with h5py.File(cam.file_path.get(), "r") as f:
        saved = f[layout.DATA].shape[0]
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(driver, saved))
    assert 3 <= len(recorder.of("event")) <= saved


def _chain(exc: BaseException | None):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def test_a_writer_that_stops_answering_fails_the_run_in_bounded_time(driver, tmp_path, RE):
    """A stopped writer (SIGSTOP here; a disk that no longer answers does the same) would
    hold the next trigger, and so the plan, for ever: after `stall_timeout` seconds of
    silence while frames wait, it is killed and the run fails saying why."""
    from ophyd_scmos import SCMOSCamera
    from ophyd_scmos.pipeline.options import PipelineOptions

    cam = SCMOSCamera(
        name="cam",
        driver=driver,
        write_dir=tmp_path,
        options=PipelineOptions(ring_mb=4, stall_timeout=2),
    )
    cam.exposure_time.set(0.001)

    def stop_writer_at_event_10(name, doc):
        if name == "event" and doc["seq_num"] == 10:
            os.kill(cam._run.stream.writer.pid, signal.SIGSTOP)

    RE.subscribe(stop_writer_at_event_10)
    started = time.monotonic()
    try:
        with pytest.raises(Exception) as info:
            RE(count([cam], num=5000))
    finally:
        cam.destroy()
    assert time.monotonic() - started < 30  # the stall, then the kill: seconds, not for ever
    message = " ".join(str(e) for e in _chain(info.value))
    assert "said nothing for 2 s while frames waited for it" in message
    with h5py.File(cam.file_path.get(), "r") as f:
        saved = f[layout.DATA].shape[0]
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(driver, saved))
        assert "said nothing for 2 s" in layout.Outcome.read(f).error
    assert saved >= 10


def test_a_file_deleted_while_written_fails_the_run_at_once(cam, RE, recorder):
    """Deleted (a cleaning script, a mistaken rm): every frame written into it is lost, so the
    run stops at the writer's next flush, not after emitting events into the void."""

    def delete_at_event_10(name, doc):
        if name == "event" and doc["seq_num"] == 10:
            os.unlink(cam.file_path.get())

    RE.subscribe(delete_at_event_10)
    with pytest.raises(Exception) as info:
        RE(count([cam], num=2000))
    message = " ".join(str(e) for e in _chain(info.value))
    assert "deleted while it was written" in message and cam.file_path.get() in message
    assert len(recorder.of("event")) < 20  # a flush or two after the deletion


def test_a_file_moved_while_written_fails_the_run_and_no_other_file_is_touched(
    cam, driver, tmp_path, RE, recorder
):
    """Moved away (an archiving script) and another HDF5 file put at its path (a restore):
    the run's documents name that path, where its frames no longer are, so the run stops at
    the writer's next flush, saying so; the file put there is left exactly as it was (no
    outcome of this run written into it, no mark cleared), and the moved file holds the
    frames written, whole."""
    other = tmp_path / "another_run.h5"
    with h5py.File(other, "w") as f:
        f["entry/data/data"] = np.arange(12, dtype=np.uint16).reshape(3, 2, 2)
    before = other.read_bytes()
    moved = tmp_path / "archive" / "moved.h5"
    moved.parent.mkdir()

    def move_at_event_10(name, doc):
        if name == "event" and doc["seq_num"] == 10:
            os.replace(cam.file_path.get(), moved)
            os.link(other, cam.file_path.get())  # the same file as `other`: any write shows

    RE.subscribe(move_at_event_10)
    with pytest.raises(Exception) as info:
        RE(count([cam], num=2000))
    message = " ".join(str(e) for e in _chain(info.value))
    assert "moved away or replaced while it was written" in message
    assert f"Nothing at {cam.file_path.get()} is this run's file any more" in message
    assert len(recorder.of("event")) < 20  # a flush or two after the move
    assert other.read_bytes() == before
    with h5py.File(moved, "r") as f:
        written = len(f[layout.DATA])
        assert written >= 10
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(driver, written))
