"""A camera keeps its writer process and ring between runs: one new file per run."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import threading
import time
import weakref
from pathlib import Path

import h5py
import numpy as np
import pytest
from bluesky.plans import count

from ophyd_scmos import SCMOSCamera, SimulatedSCMOS
from ophyd_scmos.pipeline import layout
from tests.conftest import expected_frames


def _rings() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob(f"scmos_{os.getpid()}_*")}


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _threads() -> int:
    """Threads alive, but for bluesky's Ctrl-C watcher, which a run leaves to end on its own."""
    return sum("_watch_request" not in t.name for t in threading.enumerate())


def test_runs_share_one_writer_process_and_ring_and_each_gets_its_file(cam, driver, RE):
    RE(count([cam], num=3))
    writer = cam._writer
    ring = writer.ring.spec.name
    files = {cam.file_path.get()}
    for _ in range(4):
        RE(count([cam], num=3))
        files.add(cam.file_path.get())
        assert cam._writer is writer and writer.alive and writer.ring.spec.name == ring
    assert len(files) == 5
    for path in files:
        with h5py.File(path, "r") as f:
            np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(driver, 3))
            assert bool(f["/entry"].attrs["complete"])


@pytest.mark.parametrize("seen_dead", [True, False], ids=["seen-dead", "just-killed"])
def test_a_writer_killed_between_runs_is_replaced_at_the_next_stage(cam, driver, RE, seen_dead):
    """Also when the next run starts at once, before the camera can know the writer is gone."""
    RE(count([cam], num=2))
    dead = cam._writer
    os.kill(dead.pid, signal.SIGKILL)
    if seen_dead:
        dead.ended.wait(10)
    RE(count([cam], num=4))
    assert cam._writer is not dead and cam._writer.alive
    assert dead.ring is None  # the dead one's ring was freed
    with h5py.File(cam.file_path.get(), "r") as f:
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(driver, 4))


def test_a_writer_stopped_between_runs_is_replaced_at_the_next_stage(cam, driver, RE):
    """A stopped (SIGSTOP) writer holds no file between runs but would answer nothing: the
    next stage waited 30 s for it without a word."""
    RE(count([cam], num=2))
    stopped = cam._writer
    os.kill(stopped.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10  # the signal lands asynchronously
    while not stopped.stopped and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.warns(RuntimeWarning, match=rf"writer process \(pid {stopped.pid}\) was stopped"):
        RE(count([cam], num=3))
    assert cam._writer is not stopped and cam._writer.alive and not stopped.alive
    with h5py.File(cam.file_path.get(), "r") as f:
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(driver, 3))


def test_a_new_frame_size_or_ring_size_gets_a_new_ring(driver, tmp_path, RE):
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path, ring_frames=4)
    try:
        cam.roi.set((0, 0, 64, 32))
        RE(count([cam], num=5))
        first = cam._writer.ring.spec
        assert (first.frame_shape, first.n_slots) == ((32, 64), 4)
        cam.roi.set((0, 0, 96, 48))
        RE(count([cam], num=5))
        second = cam._writer.ring.spec
        assert second.frame_shape == (48, 96) and second.name != first.name
        assert first.name not in _rings()  # the old ring left /dev/shm
        with h5py.File(cam.file_path.get(), "r") as f:
            assert f[layout.DATA].shape == (5, 48, 96)
            np.testing.assert_array_equal(f[layout.DATA][4], driver.expected_frame(4))
    finally:
        cam.destroy()
    assert _rings().isdisjoint({first.name, second.name})


def test_two_cameras_keep_a_writer_each(tmp_path, RE):
    cams = [
        SCMOSCamera(
            name=f"cam{i}",
            driver=SimulatedSCMOS(shape=(32, 48), seed=i),
            write_dir=tmp_path,
            ring_frames=4,
        )
        for i in (1, 2)
    ]
    try:
        RE(count(cams, num=6))
        RE(count(cams, num=6))
        writers = [c._writer for c in cams]
        assert writers[0].pid != writers[1].pid and all(w.alive for w in writers)
        for c in cams:
            with h5py.File(c.file_path.get(), "r") as f:
                np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(c.driver, 6))
    finally:
        for c in cams:
            c.destroy()
    assert not any(w.alive for w in writers)


def test_two_hundred_runs_leak_no_descriptors_threads_or_shared_memory(cam, RE):
    RE(count([cam], num=1))  # the writer and its ring exist from here on
    gc.collect()  # what earlier tests left for the garbage collector goes first
    fds, threads, rings = _open_fds(), _threads(), _rings()
    for _ in range(200):
        RE(count([cam], num=1))
    gc.collect()
    deadline = time.monotonic() + 5  # a finished status thread may still be ending
    while _threads() > threads and time.monotonic() < deadline:
        time.sleep(0.05)
    # No more than before (fewer is no leak: what an earlier test left may close meanwhile).
    assert _open_fds() <= fds and _threads() <= threads and _rings() == rings
    assert len(list(Path(cam.write_dir).iterdir())) == 201


def test_a_camera_made_anew_without_destroy_lets_the_old_one_go(tmp_path, RE):
    """As when a session's cell `cam = SCMOSCamera(...)` runs again: the camera dropped is
    collected, and its writer ends and its ring goes with it."""
    old = SCMOSCamera(name="cam", driver=SimulatedSCMOS(shape=(64, 64)), write_dir=tmp_path)
    RE(count([old], num=2))
    writer, ring, dropped = old._writer, old._writer.ring.spec.name, weakref.ref(old)
    del old
    cam = SCMOSCamera(name="cam", driver=SimulatedSCMOS(shape=(64, 64)), write_dir=tmp_path)
    try:
        RE(count([cam], num=2))  # the RunEngine lets go of the last run's devices
        deadline = time.monotonic() + 10  # the old run's threads may still be ending
        while gc.collect() is not None and dropped() is not None:
            assert time.monotonic() < deadline, "the dropped camera is still held"
            time.sleep(0.05)
        assert writer.ended.wait(10) and ring not in _rings()
    finally:
        cam.destroy()


def test_destroy_ends_the_writer_and_frees_the_ring(driver, tmp_path, RE):
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path, ring_frames=4)
    RE(count([cam], num=2))
    writer, ring = cam._writer, cam._writer.ring.spec.name
    cam.destroy()
    assert writer.ended.wait(10) and writer.process.returncode == 0
    assert ring not in _rings()
    files = sorted(tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="cam was destroyed .* make the camera anew"):
        RE(count([cam], num=1))
    assert sorted(tmp_path.iterdir()) == files and cam._writer is None


def test_a_forked_child_leaves_its_parents_writer_alone(cam, RE):
    """A child forked from a session (multiprocessing's default on Linux) holds a copy of its
    cameras: dropped there, a camera's finalizer waited for ever on a writer no thread of the
    child hears, then killed the parent's."""
    RE(count([cam], num=1))
    writer = cam._writer

    def drop_it() -> None:
        writer.shutdown(timeout=5)
        writer.kill()

    child = multiprocessing.get_context("fork").Process(target=drop_it)
    child.start()
    child.join(10)
    assert child.exitcode == 0
    assert writer.alive and cam._writer is writer
    RE(count([cam], num=2))  # the same writer, one more file
    assert cam._writer is writer
