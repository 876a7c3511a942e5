"""The disk fills up during a run: a small real file system, or a file-size limit."""

from __future__ import annotations

import contextlib
import resource
import shutil
import subprocess
from pathlib import Path

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import h5py
import numpy as np
import pytest
from area_detector_handlers.handlers import AreaDetectorHDF5Handler
from bluesky.plans import count

from ophyd_scmos import SCMOSCamera
from ophyd_scmos.pipeline import layout, stats
from ophyd_scmos.pipeline.writeback import HEADROOM
from ophyd_scmos.plans import movie
from tests.conftest import expected_frames


@pytest.fixture
def small_disk(tmp_path, request):
    """A 16 MiB tmpfs (the writer holds 8 MiB for closing); mounting needs root, as CI
    has. Parametrized indirectly: the mount's options besides its size."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    options = ",".join(["size=16m", *([request.param] if hasattr(request, "param") else [])])
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); "
            "the RLIMIT_FSIZE test covers disk full without mounting"
        )
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def run_until_full(cam, RE, recorder) -> str:
    with pytest.raises(Exception) as info:
        RE(count([cam], num=100_000))
    messages = []
    exc = info.value
    while exc is not None:
        messages.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return " ".join(messages)


def check_nothing_claimed_is_missing(path, driver, recorder) -> int:
    with h5py.File(path, "r") as f:
        saved = f[layout.DATA].shape[0]
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(driver, saved))
        assert f[layout.FRAME_NUMBER].shape == (saved,)
    events = recorder.of("event")
    assert 0 < len(events) <= saved
    (resource,) = recorder.of("resource")
    handler = AreaDetectorHDF5Handler(path, **resource["resource_kwargs"])
    for datum in recorder.of("datum")[: len(events)]:  # every datum an event refers to reads
        assert handler(**datum["datum_kwargs"]).shape == (1, 64, 96)
    handler.close()
    return saved


def check_outcome(path, saved: int, why: str) -> None:
    """The file records how it ended, as every other ending does."""
    with h5py.File(path, "r") as f:
        outcome = layout.Outcome.read(f)
    assert outcome is not None
    assert (outcome.frames_written, outcome.complete) == (saved, False)
    assert outcome.error.startswith(why)  # as the writer recorded it, not written over


def test_disk_full_on_a_real_small_file_system(driver, small_disk, RE, recorder):
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=small_disk, ring_mb=1)
    cam.roi.set((0, 0, 96, 64))
    cam.exposure_time.set(0.001)
    message = run_until_full(cam, RE, recorder)
    path = cam.file_path.get()
    assert "disk full" in message and path in message
    saved = check_nothing_claimed_is_missing(path, driver, recorder)
    assert f"holds the first {saved} frames" in message
    check_outcome(path, saved, "disk full")

    # A second run on the full disk fails before it makes a file (an empty one, or worse).
    files = sorted(small_disk.iterdir())
    recorder.docs.clear()
    with pytest.raises(OSError, match="No space left on device for a new run's file"):
        RE(count([cam], num=1))
    assert sorted(small_disk.iterdir()) == files


@pytest.mark.parametrize("small_disk", ["nr_inodes=2"], indirect=True)
def test_a_disk_out_of_inodes_is_told_from_one_out_of_bytes(driver, small_disk, RE):
    """It has bytes free (df), not files (df -i): "No space left on device" alone misled."""
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=small_disk, ring_mb=1)
    cam.roi.set((0, 0, 96, 64))
    with pytest.raises(OSError, match=r"inodes all taken: df -i\), for a new run's file"):
        RE(count([cam], num=1))
    assert list(small_disk.iterdir()) == []


def test_a_disk_another_process_fills_before_the_close_still_closes_the_file(
    driver, small_disk, RE, recorder
):
    """The room a file needs to close is held apart from the start, not only kept free:
    another program that filled the disk after the last frame left the file's metadata
    unwritten, its frames and outcome unreadable."""
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=small_disk, ring_mb=1)
    cam.roi.set((0, 0, 96, 64))
    cam.exposure_time.set(0.001)
    filler = small_disk / "filler"

    def fill_the_disk() -> None:
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(bytes(2**16))

    @bpp.stage_decorator([cam])
    @bpp.run_decorator()
    def plan():
        for _ in range(5):
            yield from bps.trigger_and_read([cam])
        yield from bps.null()
        fill_the_disk()  # as another process might, between the last event and the close

    RE(plan())
    path = cam.file_path.get()
    assert shutil.disk_usage(small_disk).free < HEADROOM  # the close took from what was held
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(driver, 5))
        outcome = layout.Outcome.read(f)
    assert outcome is not None and (outcome.frames_written, outcome.complete) == (5, True)
    assert sorted(p.name for p in small_disk.iterdir()) == sorted([Path(path).name, "filler"])


# The catalog writer leaves out event_model's guess at why a start failed; the tests' "error"
# filter comes before its own.
@pytest.mark.filterwarnings("ignore:The callback <ophyd_scmos")
def test_a_full_disk_under_the_catalog_is_said_as_one(driver, small_disk, tmp_path, RE):
    """SQLite's "database or disk is full", amid an SQL statement and its parameters, was
    all a session saw of a catalog whose disk filled. The catalog refuses the run's start:
    the run fails before its camera takes a frame."""
    from ophyd_scmos import CatalogWriter, open_catalog

    RE.subscribe(CatalogWriter(open_catalog(small_disk / "catalog")))
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path / "data", ring_mb=1)
    cam.roi.set((0, 0, 96, 64))
    RE(count([cam], num=2))  # the catalog made, and taking runs
    with open(small_disk / "filler", "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(bytes(2**16))
    full = rf"the catalog's disk is full \({small_disk / 'catalog'}\): free space there"
    with pytest.raises(OSError, match=full):
        RE(count([cam], num=3))
    assert int(cam.frames_written.get()) == 0


def test_disk_full_by_file_size_limit(driver, tmp_path, RE, recorder):
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path, ring_mb=1)
    cam.roi.set((0, 0, 96, 64))
    cam.exposure_time.set(0.001)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (12 * 2**20, hard))  # the writer inherits it
    try:
        message = run_until_full(cam, RE, recorder)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    path = cam.file_path.get()
    assert "file-size limit reached" in message and "ulimit -f: 12 MiB" in message
    assert path in message and "disk full" not in message
    assert "died" not in message  # the writer said why it stopped: its words stand
    saved = check_nothing_claimed_is_missing(path, driver, recorder)
    check_outcome(path, saved, "file-size limit")


def test_a_movie_stopped_by_a_full_disk_holds_every_frame_of_its_file(
    driver, tmp_path, RE, recorder
):
    """The writer closes the file with frames (and statistics) written since its last status
    line: the movie's last page points at every one of them, the run holds what the file
    holds."""
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path, ring_mb=1)
    cam.roi.set((0, 0, 96, 64))
    cam.exposure_time.set(0.001)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (12 * 2**20, hard))
    try:
        with pytest.raises(Exception, match="file-size limit reached"):
            RE(movie(cam, frames=100_000))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    with h5py.File(cam.file_path.get(), "r") as f:
        saved = layout.stored_frames(f)
        assert f[layout.stats_path(stats.FRAME, "total")].shape == (saved,)
    assert saved > 0
    (stop,) = recorder.of("stop")
    assert stop["exit_status"] == "fail" and stop["num_events"] == {"primary": saved}
