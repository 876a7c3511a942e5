"""Another process follows a run while it is written (SWMR)."""

from __future__ import annotations

import subprocess
import sys
import threading

from ophyd_scmos.drivers import CameraSettings, SimulatedSCMOS
from ophyd_scmos.pipeline import FrameStream
from ophyd_scmos.pipeline.options import PipelineOptions

READER = """
import sys, time
import h5py, numpy as np
from ophyd_scmos.drivers import CameraSettings, SimulatedSCMOS
camera = SimulatedSCMOS(shape=(48, 80), seed=9)
camera.open()
camera.configure(CameraSettings(exposure_time=0.001))
path, total = sys.argv[1], int(sys.argv[2])
seen = []
deadline = time.monotonic() + 60
with h5py.File(path, "r", swmr=True) as f:
    data, numbers = f["/entry/data/data"], f["/entry/data/frame_number"]
    print("READY", flush=True)
    while time.monotonic() < deadline:
        data.refresh(); numbers.refresh()
        n = data.shape[0]
        if n and (not seen or n != seen[-1]):
            seen.append(n)
            assert np.array_equal(data[n - 1], camera.expected_frame(n - 1)), n
        if n == total:
            break
        time.sleep(0.02)
print("SEEN", " ".join(map(str, seen)))
"""


def test_a_second_process_sees_the_file_grow_frame_by_frame(tmp_path):
    camera = SimulatedSCMOS(shape=(48, 80), seed=9)
    camera.open()
    camera.configure(CameraSettings(exposure_time=0.001))
    path = tmp_path / "live.h5"
    stream = FrameStream(camera, path, PipelineOptions(flush_interval=0.05))
    stream.open()
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(path), "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout.readline() == "READY\n"  # it watches before the first frame
    for burst in range(10):  # ten bursts, 0.15 s apart, while the reader watches
        camera.software_trigger(10)
        stream.wait(10 * (burst + 1), timeout=10)
        threading.Event().wait(0.15)
    out, err = reader.communicate(timeout=60)
    stream.close()
    assert reader.returncode == 0, err[-2000:]
    sizes = [int(n) for n in out.removeprefix("SEEN").split()]
    assert sizes[-1] == 100
    assert len(sizes) >= 4, f"the reader saw only {sizes}"
    assert sizes == sorted(sizes)


PLAIN_OPEN = """
import sys, h5py
try:
    h5py.File(sys.argv[1], "r")
except OSError as exc:
    print("refused:", exc)
with h5py.File(sys.argv[1], "r", swmr=True) as f:
    print("swmr:", f["/entry/data/data"].shape[0])
"""


def test_while_writing_a_plain_open_is_refused_and_a_swmr_open_reads(tmp_path):
    """What README and docs/faults.md promise a reader of a file being written."""
    camera = SimulatedSCMOS(shape=(48, 80), seed=9)
    camera.open()
    path = tmp_path / "busy.h5"
    stream = FrameStream(camera, path, PipelineOptions(flush_interval=0.05))
    stream.open()
    try:
        camera.software_trigger(5)
        stream.wait(5, timeout=10)
        out = subprocess.run(
            [sys.executable, "-c", PLAIN_OPEN, str(path)], capture_output=True, text=True
        ).stdout
    finally:
        stream.close()
    assert "refused:" in out and "already open for write" in out
    assert "swmr: 5" in out


HOLD_OPEN = """
import sys, h5py
with h5py.File(sys.argv[1], "r", swmr=True) as f:
    print("following", f["/entry/data/data"].shape[0], flush=True)
    sys.stdin.read()  # until the test has closed the run
"""


def test_a_reader_still_following_the_file_when_the_run_ends_costs_it_nothing(tmp_path):
    """A reader opened with SWMR holds HDF5's file lock until it lets go: the writer records
    the run's outcome all the same, and the run ends well."""
    import h5py

    from ophyd_scmos.pipeline import layout

    camera = SimulatedSCMOS(shape=(48, 80), seed=9)
    camera.open()
    path = tmp_path / "followed.h5"
    stream = FrameStream(camera, path, PipelineOptions(flush_interval=0.05))
    stream.open()
    reader = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        camera.software_trigger(5)
        stream.wait(5, timeout=10)
        assert reader.stdout.readline().startswith("following")
        summary = stream.close()
    finally:
        reader.communicate(timeout=30)
    assert summary.frames_written == 5
    with h5py.File(path, "r") as f:
        assert layout.Outcome.read(f).complete and f[layout.DATA].shape[0] == 5
