"""The pipeline alone: a simulated camera through the ring and the writer process to a file."""

from __future__ import annotations

import fcntl
import os
import threading
import time

import h5py
import hdf5plugin  # noqa: F401 - registers the compression filters for reading
import numpy as np
import pytest

from ophyd_scmos.drivers import CameraError, SimulatedSCMOS
from ophyd_scmos.pipeline import CODECS, FrameStream, StreamError, layout
from ophyd_scmos.pipeline.options import PipelineOptions
from ophyd_scmos.pipeline.protocol import RECORD
from tests.conftest import expected_frames


def take(stream: FrameStream, n: int, timeout: float = 30) -> None:
    """Trigger n frames and wait until they are in the file."""
    stream.driver.software_trigger(n)
    stream.wait(n, timeout)


def test_every_frame_and_its_metadata_reach_the_file(camera, tmp_path):
    path = tmp_path / "run.h5"
    stream = FrameStream(camera, path, PipelineOptions(ring_mb=0.1))  # the ring wraps often
    stream.open()
    assert stream.ring.spec.n_slots < 50
    take(stream, 300)
    summary = stream.close()
    assert (summary.frames_acquired, summary.frames_written, summary.frames_dropped) == (
        300,
        300,
        0,
    )
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(camera, 300))
        np.testing.assert_array_equal(f[layout.FRAME_NUMBER][()], np.arange(300))
        assert np.all(np.diff(f[layout.TIMESTAMP][()]) > 0)
        assert f[layout.HOST_TIMESTAMP].shape == (300,)
        assert f[layout.DATA].chunks == (1, 48, 80)
        assert (f.attrs["NX_class"], f.attrs["default"]) == ("NXroot", "entry")
        assert f["/entry"].attrs["NX_class"] == "NXentry"
        assert f["/entry/data"].attrs["signal"] == "data"
        assert f["/entry"].attrs["frames_written"] == 300
        assert bool(f["/entry"].attrs["complete"])


def test_writer_is_another_process_and_only_slot_indices_cross(camera, tmp_path):
    stream = FrameStream(camera, tmp_path / "run.h5", PipelineOptions(ring_mb=0.1))
    stream.open()
    writer_pid = stream.writer.pid
    take(stream, 50)
    stream.close()
    assert writer_pid != os.getpid()
    assert stream.writer.process.returncode == 0
    # The file's configuration (an OPEN record and a few hundred bytes of JSON), 50 frame
    # records, three closing ones (two loss counts, FINISH) and maybe a flush request: 16
    # bytes a record, while a frame alone is 7680 bytes
    records = 53 * RECORD.itemsize
    assert records < stream.writer.bytes_sent < records + 2048


def test_an_existing_file_is_never_overwritten(camera, tmp_path):
    path = tmp_path / "run.h5"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="never overwrites"):
        FrameStream(camera, path).open()
    assert path.read_bytes() == b"precious"


def test_a_reader_sees_frames_while_the_writer_writes(camera, tmp_path):
    path = tmp_path / "run.h5"
    stream = FrameStream(camera, path, PipelineOptions(flush_interval=0.05))
    stream.open()
    take(stream, 20)
    deadline_frames = 0
    for _ in range(200):
        with h5py.File(path, "r", swmr=True) as f:
            deadline_frames = f[layout.DATA].shape[0]
            if deadline_frames == 20:
                np.testing.assert_array_equal(f[layout.DATA][19], camera.expected_frame(19))
                break
        threading.Event().wait(0.02)
    stream.close()
    assert deadline_frames == 20


def test_a_reader_that_opened_the_file_as_it_appeared_does_not_stop_the_run(
    camera, tmp_path, monkeypatch
):
    """A follower of the write directory opens each new file at once: HDF5 takes the file's
    lock before it finds the file still empty, and the writer's create failed on it."""
    from ophyd_scmos.pipeline.process import WriterProcess

    path = tmp_path / "run.h5"
    held = []
    open_file = WriterProcess.open_file

    def followed(self, config, on_status):  # the empty file is there; the follower locks it
        held.append(os.open(config.path, os.O_RDONLY))
        fcntl.flock(held[-1], fcntl.LOCK_SH)
        open_file(self, config, on_status)

    monkeypatch.setattr(WriterProcess, "open_file", followed)
    stream = FrameStream(camera, path)
    stream.open()
    take(stream, 3)
    assert stream.close().frames_written == 3
    os.close(held[0])
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(camera, 3))


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_compressed_frames_round_trip_bit_exact(camera, tmp_path, codec):
    path = tmp_path / f"{codec}.h5"
    stream = FrameStream(camera, path, PipelineOptions(compression=codec))
    stream.open()
    take(stream, 40)
    stream.close()
    with h5py.File(path, "r") as f:
        assert f[layout.DATA].id.get_create_plist().get_nfilters() >= 1
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(camera, 40))


def test_unknown_compression_is_refused_before_anything_starts(camera, tmp_path):
    with pytest.raises(ValueError, match="not one of"):
        FrameStream(camera, tmp_path / "x.h5", PipelineOptions(compression="gzip-9000"))
    assert not (tmp_path / "x.h5").exists()


def test_a_ring_sized_in_frames_holds_that_many_and_wraps(camera, tmp_path):
    stream = FrameStream(camera, tmp_path / "r.h5", PipelineOptions(ring_frames=3))
    stream.open()
    assert stream.ring.spec.n_slots == 3
    take(stream, 20)  # wraps the three slots six times over
    assert stream.close().frames_written == 20
    with h5py.File(tmp_path / "r.h5", "r") as f:
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(camera, 20))


@pytest.mark.parametrize(
    ("size", "says"),
    [
        ({"ring_mb": 8, "ring_frames": 10}, "not both"),
        ({"ring_frames": 1}, "integer >= 2"),
        ({"ring_frames": 2.5}, "integer >= 2"),
        ({"ring_mb": 0}, "must be positive"),
    ],
)
def test_a_wrong_ring_size_is_refused_before_anything_starts(camera, tmp_path, size, says):
    with pytest.raises(ValueError, match=says):
        FrameStream(camera, tmp_path / "x.h5", PipelineOptions(**size))
    assert not (tmp_path / "x.h5").exists()


def test_writer_killed_mid_run_fails_clearly_and_keeps_what_it_reported(camera, tmp_path):
    path = tmp_path / "run.h5"
    stream = FrameStream(camera, path, PipelineOptions(flush_interval=0.05))
    stream.open()
    take(stream, 30)
    for _ in range(200):  # wait until the writer reports them flushed
        if stream.frames_written == 30:
            break
        threading.Event().wait(0.02)
    stream.writer.process.kill()
    with pytest.raises(StreamError, match=str(path)) as info:
        camera.software_trigger(5)
        stream.writer.ended.wait(10)
        stream.close()
    assert "died" in str(info.value)
    with h5py.File(path, "r", swmr=True) as f:  # SWMR readers ignore the open-for-write flag
        saved = f[layout.DATA].shape[0]
        assert saved >= 30
        np.testing.assert_array_equal(f[layout.DATA][:30], expected_frames(camera, 30))


class BuggyDriver(SimulatedSCMOS):
    """A driver adapter with a bug: its sixth frame raises what no camera error is."""

    fault: Exception = KeyError("no such frame field")

    def read_into(self, out, timeout):
        info = super().read_into(out, timeout)
        if info.frame_number == 5:
            raise self.fault
        return info


class LostCamera(BuggyDriver):
    """A camera unplugged before its sixth frame."""

    fault = CameraError("camera stopped answering")


@pytest.mark.parametrize(
    ("driver", "why"),
    [(BuggyDriver, "acquisition failed: KeyError"), (LostCamera, "camera failed: camera stopped")],
)
def test_a_fault_in_the_acquisition_thread_fails_the_waiters_and_the_file_says_so(
    driver, why, tmp_path
):
    """The waiters fail instead of hanging, and the file, closed and whole, records that it
    ended early and why (it said complete)."""
    camera = driver(shape=(48, 80), seed=3, camera_buffer_frames=1000)
    camera.open()
    path = tmp_path / "run.h5"
    stream = FrameStream(camera, path, PipelineOptions())
    stream.open()
    take(stream, 5)
    camera.software_trigger(3)
    with pytest.raises(StreamError, match=f"{why}.*keeps the 5 frames taken before"):
        stream.wait(8, timeout=30)
    with pytest.raises(StreamError, match=why):
        stream.close()
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(camera, 5))
        outcome = layout.Outcome.read(f)
    assert outcome is not None and not outcome.complete and outcome.frames_written == 5
    assert outcome.error is not None and outcome.error.startswith(why)


def test_settling_after_a_cut_waits_for_the_frames_the_file_keeps(camera, tmp_path):
    """Frames cut off (a resumed step scan's) never reach the file: settling counts those
    that follow the cut, not every frame the camera gave."""
    path = tmp_path / "run.h5"
    stream = FrameStream(camera, path, PipelineOptions(flush_interval=30))
    stream.open()
    take(stream, 6)
    stream.truncate(4)
    camera.software_trigger(2)
    deadline = time.monotonic() + 30
    while stream.frames_acquired < 8:
        assert time.monotonic() < deadline, "the camera did not give its frames"
        time.sleep(0.01)
    stream.stop()
    stream.wait_settled(timeout=10)
    assert stream.frames_written == 6
    assert stream.close().frames_written == 6
    with h5py.File(path, "r") as f:
        assert f[layout.DATA].shape[0] == 6
