"""The writer is slower than the camera: the ring fills. Losses are counted, never silent."""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest
from bluesky.plans import count

from ophyd_scmos import SCMOSCamera, SimulatedSCMOS
from ophyd_scmos.drivers import CameraSettings, TriggerMode
from ophyd_scmos.pipeline import FrameStream, layout
from ophyd_scmos.pipeline.options import PipelineOptions
from ophyd_scmos.plans import movie


def free_running_camera(buffer_frames: int) -> SimulatedSCMOS:
    """Full-frame 2048x2048 at 10,000 frames/s: far beyond what any writer here keeps up with."""
    camera = SimulatedSCMOS(shape=(2048, 2048), seed=1, camera_buffer_frames=buffer_frames)
    camera.open()
    camera.configure(CameraSettings(exposure_time=1e-4, trigger_mode=TriggerMode.INTERNAL))
    return camera


@pytest.mark.parametrize("policy", ["block", "drop"])
def test_losses_are_counted_in_the_file_and_the_frame_numbers_show_them(tmp_path, policy):
    camera = free_running_camera(buffer_frames=4)
    path = tmp_path / "run.h5"
    stream = FrameStream(
        camera, path, PipelineOptions(ring_mb=24, overflow=policy)
    )  # 2 slots of 8 MiB
    stream.open()
    threading.Event().wait(1.0)
    summary = stream.close()
    lost = summary.frames_dropped + summary.frames_missed
    assert lost > 0
    if policy == "block":  # the acquisition waited; the camera's own buffer overflowed
        assert summary.frames_dropped == 0 and summary.frames_missed > 0
    else:  # the newest frames went to a scratch buffer and were counted
        assert summary.frames_dropped > 0
    with h5py.File(path, "r") as f:
        numbers = f[layout.FRAME_NUMBER][()]
        assert f["/entry"].attrs["frames_dropped"] == summary.frames_dropped
        assert f["/entry"].attrs["frames_missed"] == summary.frames_missed
        assert f[layout.DATA].shape[0] == summary.frames_written == len(numbers)
        np.testing.assert_array_equal(f[layout.DATA][-1], camera.expected_frame(numbers[-1]))
    # every gap in the camera's frame numbers is a counted loss
    gaps = int(numbers[0]) + int(np.sum(np.diff(numbers) - 1))
    if policy == "block":  # each frame read was written: gaps are exactly the camera's misses
        assert gaps == summary.frames_missed
    else:  # losses after the last written frame leave no gap
        assert 0 < gaps <= lost


def test_a_count_that_loses_frames_fails_with_the_counts(tmp_path, RE, recorder):
    camera = SimulatedSCMOS(shape=(2048, 2048), seed=1, camera_buffer_frames=2)
    cam = SCMOSCamera(name="cam", driver=camera, write_dir=tmp_path, ring_mb=16)
    cam.exposure_time.set(1e-4)
    cam.frames_per_point.set(50)  # a 50-frame burst at 10,000 frames/s into 2 slots
    with pytest.raises(Exception) as info, pytest.warns(RuntimeWarning, match="missed"):
        RE(count([cam], num=3))
    text = " ".join(_messages(info.value))
    assert "lost" in text and "missed by the camera" in text and cam.file_path.get() in text
    assert cam.frames_missed.get() > 0
    assert cam._staged.name == "no"


def test_a_movie_that_loses_frames_warns_and_records_the_counts(tmp_path, RE, recorder):
    camera = SimulatedSCMOS(shape=(2048, 2048), seed=1, camera_buffer_frames=2)
    cam = SCMOSCamera(name="cam", driver=camera, write_dir=tmp_path, ring_mb=16)
    cam.exposure_time.set(1e-4)
    with pytest.warns(RuntimeWarning, match="missed by the camera"):
        RE(movie(cam, frames=300))
    missed = cam.frames_missed.get()
    assert missed > 0
    with h5py.File(cam.file_path.get(), "r") as f:
        assert f["/entry"].attrs["frames_missed"] == missed
        # the 300 frames asked, the lost ones among them: none taken past them
        assert f[layout.DATA].shape[0] + missed == 300
        assert f[layout.FRAME_NUMBER][-1] < 300


def _messages(exc):
    while exc is not None:
        yield str(exc)
        exc = exc.__cause__ or exc.__context__


def test_a_movie_dropping_frames_takes_exactly_the_frames_asked(tmp_path, RE):
    """With overflow='drop' a dropped frame is one of the movie's: written and dropped add up
    to the frames asked, none taken (and counted dropped) past them."""
    # 10,000 full frames/s into 2 slots, a camera that never misses one: most are dropped
    camera = SimulatedSCMOS(shape=(2048, 2048), seed=2, camera_buffer_frames=100_000)
    cam = SCMOSCamera(name="cam", driver=camera, write_dir=tmp_path, ring_frames=2, overflow="drop")
    cam.exposure_time.set(1e-4)
    with pytest.warns(RuntimeWarning, match="dropped from a full ring"):
        RE(movie(cam, frames=300))
    assert cam.frames_missed.get() == 0 and cam.frames_dropped.get() > 0
    with h5py.File(cam.file_path.get(), "r") as f:
        assert f[layout.DATA].shape[0] + f["/entry"].attrs["frames_dropped"] == 300
