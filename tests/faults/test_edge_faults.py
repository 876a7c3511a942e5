"""Faults at the edges, beyond the other fault tests: a ring the free-space check misses,
runs whose writer was killed read from the catalog, a file with damaged metadata, rings of
dead processes removed by recover, a secret however it is spelt in the lab configuration,
the package's license, a camera lost just as a point is triggered."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import bluesky.plan_stubs as bps
import h5py
import numpy as np
import pytest
from bluesky.plans import count
from bluesky_tiled_plugins import TiledWriter

from ophyd_scmos import SCMOSCamera, SimulatedSCMOS, open_catalog
from ophyd_scmos.catalog import UnreadableFile
from ophyd_scmos.cli import main
from ophyd_scmos.config import ConfigError, load_config
from ophyd_scmos.drivers import CameraError
from ophyd_scmos.pipeline import layout
from ophyd_scmos.plans import movie
from tests.pipeline.test_ring import SMALL_SHM, run_with_small_shm

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]

#: the small-/dev/shm script, with /dev/shm filling up after the room check
UNCHECKED_RING = SMALL_SHM.replace(
    "cam = SCMOSCamera(",
    "from ophyd_scmos.pipeline import ring\nring._wait_for_room = lambda size: None\n"
    "cam = SCMOSCamera(",
)


def test_a_ring_the_room_check_misses_is_refused_when_its_pages_are_reserved(tmp_path):
    """Free space can go between the check and the ring: reserving the segment's pages
    (posix_fallocate) refuses the ring there, where touching them would be a SIGBUS."""
    run = run_with_small_shm(UNCHECKED_RING, tmp_path)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    assert "refused: cannot make a 64 MiB frame ring in shared memory" in run.stdout
    assert "No space left on device" in run.stdout and "alive" in run.stdout


def _kill_writer(cam) -> None:
    os.kill(cam._run.stream.writer.pid, signal.SIGKILL)


def test_a_count_whose_writer_was_killed_replays_its_events_from_the_catalog(
    cam, driver, tmp_path, RE, recorder, capsys
):
    """The catalog once refused the whole run (its events claimed frames the file lacked:
    "Can not reshape (125, ...) to (130, ...)"), even frame 0."""
    catalog_dir = tmp_path / "catalog"
    RE.subscribe(TiledWriter(open_catalog(catalog_dir)))

    def kill_at_event_40(name: str, doc: dict) -> None:
        if name == "event" and doc["seq_num"] == 40:
            _kill_writer(cam)

    RE.subscribe(kill_at_event_40)
    with pytest.raises(Exception, match="FrameStatus"):
        RE(count([cam], num=100_000))
    events = len(recorder.of("event"))
    with h5py.File(cam.file_path.get(), "r") as f:
        saved = f[layout.DATA].shape[0]
    assert 40 <= events <= saved

    run = open_catalog(catalog_dir)[recorder.of("start")[0]["uid"]]
    assert run.metadata["stop"]["exit_status"] == "fail"
    images = run["primary"]["cam_image"].read()
    assert images.shape == (events, 1, 64, 96)
    expected = np.stack([driver.expected_frame(k) for k in range(events)])
    np.testing.assert_array_equal(images[:, 0], expected)
    capsys.readouterr()
    assert main(["runs", "--catalog", str(catalog_dir), "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)  # once "131 frames" for 125 in the file
    assert (listed["exit_status"], listed["frames"]) == ("fail", events)


# Frames the camera takes while the writer's death is noticed are missed, and warned about.
@pytest.mark.filterwarnings("ignore:.*missed by the camera:RuntimeWarning")
def test_a_movie_whose_writer_was_killed_claims_and_replays_only_frames_the_file_holds(
    cam, tmp_path, RE, recorder
):
    """A StreamDatum page once claimed frames handed to HDF5 but not flushed (150 claimed,
    137 in the file): it may only claim flushed frames, which survive the writer."""
    catalog_dir = tmp_path / "catalog"
    RE.subscribe(TiledWriter(open_catalog(catalog_dir)))
    image_resources: set[str] = set()
    pages: list[dict] = []

    def kill_at_the_third_page(name: str, doc: dict) -> None:
        if name == "stream_resource" and doc["data_key"] == "cam_image":
            image_resources.add(doc["uid"])
        elif name == "stream_datum" and doc["stream_resource"] in image_resources:
            pages.append(doc)
            if len(pages) == 3:
                _kill_writer(cam)

    RE.subscribe(kill_at_the_third_page)
    with pytest.raises(Exception, match="FrameStatus"):
        RE(movie(cam, frames=10_000_000, page_every=0.05))
    claimed = max(page["indices"]["stop"] for page in pages)
    with h5py.File(cam.file_path.get(), "r") as f:
        saved = f[layout.DATA].shape[0]
        in_file = f[layout.DATA][:claimed]
    assert 0 < claimed <= saved

    run = open_catalog(catalog_dir)[recorder.of("start")[0]["uid"]]
    assert run.metadata["stop"]["exit_status"] == "fail"
    images = run["primary"]["cam_image"].read()
    assert images.shape == (claimed, 64, 96)
    np.testing.assert_array_equal(images, in_file)


def test_a_file_with_damaged_metadata_fails_at_once_naming_it(cam, tmp_path, RE, recorder, capsys):
    """SWMR readers (Tiled's) retry a damaged object's checksum for minutes; plain h5py
    refuses such a file at once, and so does the catalog, naming it."""
    catalog_dir = tmp_path / "catalog"
    RE.subscribe(TiledWriter(open_catalog(catalog_dir)))
    RE(count([cam], num=10))
    uid = recorder.of("start")[0]["uid"]
    path = Path(cam.file_path.get())
    damaged = bytearray(path.read_bytes())
    damaged[100:4000] = bytes(3900)  # object headers after the superblock
    path.write_bytes(bytes(damaged))
    with h5py.File(path, "r") as f, pytest.raises(RuntimeError, match="metadata checksum"):
        f.visititems(lambda name, obj: None)  # plain h5py refuses it at once

    images = open_catalog(catalog_dir)[uid]["primary"]["cam_image"]
    started = time.monotonic()
    with pytest.raises(UnreadableFile, match=f"{path} is damaged"):
        images.read()
    assert time.monotonic() - started < 15  # not a minute of SWMR retries
    capsys.readouterr()
    assert main(["show", uid, "--catalog", str(catalog_dir), "--no-png"]) == 1
    err = capsys.readouterr().err
    assert f"{path} is damaged" in err and "Traceback" not in err


def test_a_file_this_process_has_open_reads_from_an_in_process_catalog(cam, tmp_path, RE, recorder):
    """A user holding the run's file open (`h5py.File(path)`) beside an in-process catalog:
    the catalog's check of the file opens it as that open did, and reads it."""
    catalog = open_catalog(tmp_path / "catalog", in_process=True)
    RE.subscribe(TiledWriter(catalog))
    RE(count([cam], num=3))
    with h5py.File(cam.file_path.get(), "r") as f:
        images = catalog[recorder.of("start")[0]["uid"]]["primary"]["cam_image"].read()
        np.testing.assert_array_equal(images[:, 0], f[layout.DATA][()])


def test_recover_removes_the_rings_of_processes_that_are_gone(cam, RE, capsys):
    """A process group killed at once leaves its ring in /dev/shm (no resource tracker
    left to remove it); recover, run after such a crash, removes it."""
    RE(count([cam], num=2))
    path = cam.file_path.get()
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    orphan = Path(f"/dev/shm/scmos_{pid_max + 1}_0badc0de")  # a pid no process can have
    orphan.write_bytes(bytes(4096))
    try:
        assert main(["recover", path]) == 0
        assert not orphan.exists()
    finally:
        orphan.unlink(missing_ok=True)
    out = capsys.readouterr().out
    assert f"removed the frame rings of processes that are gone: {orphan}" in out
    assert f"{path}: was not marked open; 2 frames" in out


@pytest.mark.parametrize("name", ["apikey", "API_KEY", "Api-Key", "token", "password"])
def test_a_secret_in_the_file_however_spelt_is_sent_to_the_environment(tmp_path, name):
    """'did you mean api_key_env?' once told a user with `apikey = "..."` to put the key
    in the setting that names the variable holding it."""
    path = tmp_path / "lab.toml"
    path.write_text(f'[catalog]\n{name} = "s3cr3t-abc"\n')
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert f"catalog.{name}: unknown key" in message
    assert "did you mean" not in message
    assert "put the key in the environment variable $TILED_API_KEY" in message
    assert "s3cr3t" not in message


def test_the_license_is_an_spdx_expression():
    """setuptools warns at every install that a license table is deprecated."""
    with (REPO / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    assert project["license"] == "BSD-3-Clause"


def test_frames_lost_between_points_fail_the_next_point_saying_so(cam, RE, recorder):
    """The camera reports frames lost after a point's frame came (a GenICam camera's broken
    frames, found between points under load; set by hand here): the next point's frames
    then count as settled before its trigger goes out, its status fails at once, and ophyd
    stops the camera for it. The trigger must not then be sent (the camera's refusal, "not
    started", hid why)."""

    def shot(detectors, take_reading=None):
        if len(recorder.of("event")) == 2:
            cam._run.stream.frames_missed += 3  # as the stream counts the camera's losses
        yield from bps.one_shot(detectors, take_reading)

    with (
        pytest.warns(RuntimeWarning, match=r"cam: 3 frame\(s\) missed"),  # at unstage, as ever
        pytest.raises(Exception) as info,
    ):
        RE(count([cam], num=5, per_shot=shot))
    said = repr(info.value) + repr(info.value.__cause__)
    assert "cam lost 3 frame(s) (3 missed by the camera" in said and "before start()" not in said
    assert "the camera did not deliver them" in said and "writing fell behind" not in said
    (stop,) = recorder.of("stop")
    assert stop["exit_status"] == "fail" and "lost 3 frame(s)" in stop["reason"]
    assert len(recorder.of("event")) == 2


class UnpluggedAsTriggered(SimulatedSCMOS):
    """A camera unplugged as its third trigger goes out: the stream's reader finds it gone
    and stops it before the trigger reaches it (the camera's own words are then "not
    started")."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gone = threading.Event()
        self.triggers = 0

    def read_into(self, out, timeout):
        if self.gone.is_set():
            raise CameraError("camera unplugged")
        return super().read_into(out, timeout)

    def software_trigger(self, frames: int = 1) -> None:
        self.triggers += 1
        if self.triggers == 3:
            self.gone.set()
            deadline = time.monotonic() + 30
            while self._running and time.monotonic() < deadline:  # the stream stops it
                time.sleep(0.01)
        super().software_trigger(frames)


def test_a_camera_lost_as_a_point_is_triggered_fails_the_scan_saying_why(tmp_path, RE, recorder):
    cam = SCMOSCamera(
        name="cam", driver=UnpluggedAsTriggered(shape=(64, 96), seed=7), write_dir=tmp_path
    )
    try:
        with pytest.raises(Exception) as info:
            RE(count([cam], num=5))
    finally:
        cam.destroy()
    said = repr(info.value) + repr(info.value.__cause__)
    assert "camera failed: camera unplugged" in said and "before start()" not in said
    (stop,) = recorder.of("stop")
    assert stop["exit_status"] == "fail" and "camera unplugged" in stop["reason"]
    assert len(recorder.of("event")) == 2
