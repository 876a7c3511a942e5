"""SCMOSCamera under a real RunEngine: documents, files, and every reader of AD_HDF5."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import event_model
import h5py
import numpy as np
import pytest
from area_detector_handlers.handlers import AreaDetectorHDF5Handler
from bluesky import RunEngine
from bluesky.plans import count
from databroker import Broker

from ophyd_scmos import SCMOSCamera, SimulatedSCMOS
from ophyd_scmos.files import COUNTERS, DEFAULT_TEMPLATE
from ophyd_scmos.pipeline import PipelineOptions, layout
from tests.conftest import SENSOR, Recorder, expected_frames

REPLAY = """
import sys
import numpy as np
from ophyd_scmos import open_catalog
np.save(sys.argv[3], open_catalog(sys.argv[1])[sys.argv[2]]["primary"]["cam_image"].read())
"""


def small_camera(directory: Path, seed: int) -> tuple[SCMOSCamera, SimulatedSCMOS]:
    """The `cam` fixture's camera (64x96 ROI, 1 ms), for the module's shared runs."""
    driver = SimulatedSCMOS(shape=SENSOR, seed=seed)
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=directory, ring_mb=4)
    cam.roi.set((32, 16, 96, 64))
    cam.exposure_time.set(0.001)
    return cam, driver


@pytest.fixture(scope="module")
def thousand(tmp_path_factory):
    """One 1000-frame count, recorded as documents and by TiledWriter at once."""
    from bluesky_tiled_plugins import TiledWriter

    from ophyd_scmos import open_catalog

    tmp = tmp_path_factory.mktemp("thousand")
    cam, driver = small_camera(tmp / "data", seed=11)
    recorder = Recorder()
    RE = RunEngine({}, call_returns_result=False)
    for callback in (recorder, TiledWriter(open_catalog(tmp / "catalog"))):
        RE.subscribe(callback)
    (uid,) = RE(count([cam], num=1000))
    yield {
        "uid": uid,
        "recorder": recorder,
        "cam": cam,
        "tmp": tmp,
        "frames": expected_frames(driver, 1000),
    }
    cam.destroy()


#: Events of the run databroker's temporary catalog records: its mongomock store takes ~0.1 s
#: an event, so the count's length is the 1000-frame run's to prove, not this one's.
DATABROKER_EVENTS = 100


@pytest.fixture(scope="module")
def databroker_run(tmp_path_factory):
    """A count recorded by databroker's temporary catalog (the v1 `Broker`)."""
    cam, driver = small_camera(tmp_path_factory.mktemp("databroker"), seed=11)
    db = Broker.named("temp")
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(db.insert)
    (uid,) = RE(count([cam], num=DATABROKER_EVENTS))
    yield {"uid": uid, "db": db, "frames": expected_frames(driver, DATABROKER_EVENTS)}
    cam.destroy()
    db._catalog.context.close()  # its in-process server thread would outlive the module


def test_count_of_1000_frames_lands_in_one_file(thousand):
    (resource,) = thousand["recorder"].of("resource")
    path = os.path.join(resource["root"], resource["resource_path"])
    assert path == thousand["cam"].file_path.get()
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f[layout.DATA][()], thousand["frames"])
        np.testing.assert_array_equal(f[layout.FRAME_NUMBER][()], np.arange(1000))
    assert thousand["cam"].frames_written.get() == 1000


def test_count_of_1000_frames_reads_back_through_the_ad_hdf5_handler(thousand):
    (resource,) = thousand["recorder"].of("resource")
    handler = AreaDetectorHDF5Handler(
        os.path.join(resource["root"], resource["resource_path"]), **resource["resource_kwargs"]
    )
    got = np.concatenate(  # the handler's arrays are lazy: read them before closing it
        [np.asarray(handler(**d["datum_kwargs"])) for d in thousand["recorder"].of("datum")]
    )
    handler.close()
    np.testing.assert_array_equal(got, thousand["frames"])


def test_a_count_reads_back_through_databroker_v1(databroker_run):
    table = databroker_run["db"][databroker_run["uid"]].table(fill=True)
    images = np.stack(list(table["cam_image"]))
    assert images.shape == (DATABROKER_EVENTS, 1, 64, 96)
    np.testing.assert_array_equal(images[:, 0], databroker_run["frames"])


def test_count_of_1000_frames_replays_from_the_catalog_in_a_new_process(thousand):
    out = thousand["tmp"] / "replayed.npy"
    replay = subprocess.run(
        [sys.executable, "-c", REPLAY, str(thousand["tmp"] / "catalog"), thousand["uid"], str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replay.returncode == 0, replay.stderr[-3000:]
    images = np.load(out)
    assert images.shape == (1000, 1, 64, 96)
    np.testing.assert_array_equal(images[:, 0], thousand["frames"])


def test_documents_follow_the_area_detector_convention(cam, RE, recorder):
    RE(count([cam], num=5))
    names = [n for n, _ in recorder.docs]
    assert names == ["start", "descriptor", "resource"] + ["datum", "event"] * 5 + ["stop"]
    for name, doc in recorder.docs:
        event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)
    (resource,) = recorder.of("resource")
    assert resource["spec"] == "AD_HDF5"
    assert resource["resource_kwargs"] == {"frame_per_point": 1}
    assert resource["run_start"] == recorder.of("start")[0]["uid"]
    assert [d["datum_kwargs"] for d in recorder.of("datum")] == [
        {"point_number": i} for i in range(5)
    ]
    (descriptor,) = recorder.of("descriptor")
    key = descriptor["data_keys"]["cam_image"]
    assert key["shape"] == [1, 64, 96]
    assert key["dtype_numpy"] == "<u2" and key["external"] == "FILESTORE:"
    config = descriptor["configuration"]["cam"]["data"]
    assert config["cam_exposure_time"] == 0.001
    assert config["cam_roi"] == [32, 16, 96, 64] or tuple(config["cam_roi"]) == (32, 16, 96, 64)
    assert config["cam_file_path"] == os.path.join(resource["root"], resource["resource_path"])
    events = recorder.of("event")
    assert [e["data"]["cam_image"] for e in events] == [d["datum_id"] for d in recorder.of("datum")]


def test_a_kind_changed_between_runs_changes_what_is_read(cam, RE, recorder):
    """As with any ophyd device: a signal made normal is read, one omitted is not."""
    RE(count([cam]))
    cam.ring_fill.kind = "normal"
    cam.frame_time.kind = "omitted"
    RE(count([cam]))
    first, second = (event["data"] for event in recorder.of("event"))
    assert "cam_frame_time" in first and "cam_ring_fill" not in first
    assert "cam_frame_time" not in second and "cam_ring_fill" in second
    assert second.keys() - {"cam_ring_fill"} == first.keys() - {"cam_frame_time"}


def test_ad_hdf5_handler_reads_each_point(cam, driver, RE, recorder):
    cam.frames_per_point.set(3)
    RE(count([cam], num=7))
    (resource,) = recorder.of("resource")
    handler = AreaDetectorHDF5Handler(
        os.path.join(resource["root"], resource["resource_path"]), **resource["resource_kwargs"]
    )
    try:
        frames = expected_frames(driver, 21)
        for datum in recorder.of("datum"):
            p = datum["datum_kwargs"]["point_number"]
            got = handler(**datum["datum_kwargs"])
            assert got.shape == (3, 64, 96)
            np.testing.assert_array_equal(got, frames[3 * p : 3 * p + 3])
    finally:
        handler.close()


def test_bad_settings_fail_at_set_before_any_frame(cam):
    with pytest.raises(ValueError, match="-1"):
        cam.exposure_time.set(-1)
    with pytest.raises(ValueError):
        cam.roi.set((300, 0, 64, 64))  # outside the 320-wide sensor
    with pytest.raises(ValueError, match="roi"):
        cam.roi.set("big")
    with pytest.raises(ValueError):
        cam.binning.set(3)
    with pytest.raises(ValueError):
        cam.bit_depth.set(10)
    with pytest.raises(ValueError, match="trigger_mode"):
        cam.trigger_mode.set("sometimes")
    with pytest.raises(ValueError, match="frames_per_point"):
        cam.frames_per_point.set(0)
    assert cam.exposure_time.get() == 0.001  # unchanged


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("exposure_time", True),
        ("roi", (0, 0, 100.7, 64)),
        ("roi", "0123"),
        ("binning", 2.0),
        ("binning", True),
        ("acquire_period", 1e12),
        ("exposure_time", 1e-20),
        ("exposure_time", 1e-300),
    ],
)
def test_values_of_the_wrong_kind_are_refused_at_set(cam, setting, value):
    """Each was once accepted and failed later (at stage; an exposure of 1e-300 s in a movie,
    with an overflow), or was recorded as given but applied otherwise (100.7 as 100), or made
    a count wait forever (a period of 30,000 years)."""
    before = getattr(cam, setting).get()
    with pytest.raises(ValueError, match=setting):
        getattr(cam, setting).set(value)
    assert getattr(cam, setting).get() == before


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"ring_mb": float("inf")}, "ring_mb must be positive"),
        ({"ring_mb": "10"}, "ring_mb must be positive"),
        ({"ring_frames": True}, "ring_frames must be an integer"),
        ({"overflow": "wait"}, "overflow"),
        ({"compression": "zip"}, "compression 'zip' is not one of"),
    ],
)
def test_pipeline_options_are_checked_when_the_camera_is_made(driver, tmp_path, options, says):
    with pytest.raises(ValueError, match=says):
        SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path, **options)


def test_options_come_as_one_object_or_as_keywords_not_both(driver, tmp_path):
    options = PipelineOptions(ring_frames=4, compression="bitshuffle-lz4")
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path, options=options)
    assert (cam.ring_frames, cam.compression, cam.ring_mb) == (4, "bitshuffle-lz4", None)
    with pytest.raises(ValueError, match="not both"):
        SCMOSCamera(name="c", driver=driver, write_dir=tmp_path, options=options, ring_mb=8)


def test_binning_and_12_bit_shape_the_frames(cam, driver, RE, recorder):
    cam.binning.set(2)
    cam.bit_depth.set(12)
    RE(count([cam], num=4))
    (descriptor,) = recorder.of("descriptor")
    assert descriptor["data_keys"]["cam_image"]["shape"] == [1, 32, 48]
    with h5py.File(cam.file_path.get(), "r") as f:
        data = f[layout.DATA][()]
    assert data.shape == (4, 32, 48) and data.max() <= 4095
    np.testing.assert_array_equal(data, expected_frames(driver, 4))


def test_settings_computed_with_numpy_are_taken_as_the_numbers_they_hold(cam, driver, RE, recorder):
    """A ROI or a count computed with numpy (np.int64, np.float32, np.bool_) works as the
    same Python numbers would: the run's documents and the writer's configuration are JSON."""
    cam.roi.set(tuple(np.array([32, 16, 48, 32])))
    cam.binning.set(np.int64(2))
    cam.frames_per_point.set(np.int64(2))
    cam.exposure_time.set(np.float32(0.002))
    cam.save_images.set(np.True_)
    RE(count([cam], num=2))
    config = recorder.of("descriptor")[0]["configuration"]["cam"]["data"]
    assert list(config["cam_roi"]) == [32, 16, 48, 32] and config["cam_frames_per_point"] == 2
    assert all(type(v) is int for v in config["cam_roi"])
    assert type(config["cam_binning"]) is int and type(config["cam_save_images"]) is bool
    with h5py.File(cam.file_path.get(), "r") as f:
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(driver, 4))


def test_missing_write_dir_is_created(driver, tmp_path, RE):
    target = tmp_path / "a" / "b"
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=target, ring_mb=4)
    cam.roi.set((0, 0, 32, 32))
    RE(count([cam], num=2))
    assert os.path.dirname(cam.file_path.get()) == str(target)


def test_unwritable_write_dir_fails_at_stage(driver, tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        target = blocker / "sub"  # cannot be created even by root
    else:
        target = tmp_path / "ro"
        target.mkdir(mode=0o500)
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=target)
    with pytest.raises(OSError, match=str(target)):
        cam.stage()
    assert cam._staged.name == "no"


def test_an_existing_file_name_fails_at_stage(driver, tmp_path):
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path, file_template="fixed.h5")
    (tmp_path / "fixed.h5").write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="fixed.h5"):
        cam.stage()
    assert (tmp_path / "fixed.h5").read_bytes() == b"keep me"


def test_counter_template_takes_the_next_free_number(driver, tmp_path, RE):
    cam = SCMOSCamera(
        name="cam",
        driver=driver,
        write_dir=tmp_path,
        file_template="scan_{counter:03d}.h5",
        ring_mb=4,
    )
    cam.roi.set((0, 0, 32, 32))
    RE(count([cam], num=1))
    RE(count([cam], num=1))
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["scan_000.h5", "scan_001.h5"]


def test_a_file_where_the_template_makes_a_directory_is_named(driver, tmp_path):
    cam = SCMOSCamera(
        name="cam", driver=driver, write_dir=tmp_path, file_template="{name}/{uid}.h5"
    )
    (tmp_path / "cam").write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match=rf"{tmp_path / 'cam'} cannot be made .* in its way"):
        cam.stage()
    assert (tmp_path / "cam").read_bytes() == b"keep me"


def test_braces_that_only_look_like_a_counter_are_text(driver, tmp_path, RE):
    """``{{counter}}`` is the text {counter}: its file existing, the next stage looked for a
    free number for ever."""
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path, file_template="{{counter}}.h5")
    cam.roi.set((0, 0, 32, 32))
    RE(count([cam], num=1))
    assert cam.file_path.get() == str(tmp_path / "{counter}.h5")
    with pytest.raises(FileExistsError, match="never overwrites"):
        cam.stage()


def test_counter_numbers_never_go_back_even_when_files_are_moved_away(driver, tmp_path, RE):
    """A number whose file was moved away (archived) is not taken again: a run in a catalog
    would read another run's file under its file's name. A name taken by a dangling
    symlink is skipped too. Without the directory's record of numbers, the first free one."""
    cam = SCMOSCamera(
        name="cam", driver=driver, write_dir=tmp_path, file_template="scan_{counter:03d}.h5"
    )
    cam.roi.set((0, 0, 32, 32))
    RE(count([cam], num=1))
    RE(count([cam], num=1))
    archive = tmp_path / "archive"
    archive.mkdir()
    for path in tmp_path.glob("scan_*.h5"):
        path.rename(archive / path.name)
    (tmp_path / "scan_002.h5").symlink_to(tmp_path / "nowhere.h5")
    RE(count([cam], num=1))
    assert cam.file_path.get() == str(tmp_path / "scan_003.h5")
    other = SCMOSCamera(
        name="other", driver=driver, write_dir=tmp_path, file_template="scan_{counter:03d}.h5"
    )  # another camera's numbers are its own, but a name taken is taken
    other.roi.set((0, 0, 32, 32))
    RE(count([other], num=1))
    assert other.file_path.get() == str(tmp_path / "scan_000.h5")
    (tmp_path / COUNTERS).unlink()
    RE(count([cam], num=1))
    assert cam.file_path.get() == str(tmp_path / "scan_001.h5")


def test_the_ring_may_be_sized_in_frames_but_not_both_ways(driver, tmp_path):
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path, ring_frames=4)
    cam.stage()
    try:
        assert cam._run.stream.ring.spec.n_slots == 4
    finally:
        cam.unstage()
    with pytest.raises(ValueError, match="not both"):
        SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path, ring_mb=8, ring_frames=4)


def test_a_bandwidth_cap_must_be_positive(driver, tmp_path):
    with pytest.raises(ValueError, match="write_limit_mb_s must be positive, got 0"):
        SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path, write_limit_mb_s=0)


@pytest.mark.parametrize(
    "template",
    [
        "../up.h5",
        "/abs.h5",
        "{nope}.h5",
        "x.txt",
        "{name",
        "a\0b.h5",
        "{date:..}/{name}.h5",  # a date format is a path too once formatted
        "{date:/tmp/out}_{uid}.h5",
        "{date:%Y/../..}/{uid}.h5",
        "{name}_{counter:c}.h5",  # number 0 a NUL, 47 a "/"
    ],
)
def test_bad_file_templates_are_refused(driver, tmp_path, template):
    with pytest.raises(ValueError, match="template"):
        SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path, file_template=template)
    assert list(tmp_path.iterdir()) == []


def test_a_file_template_set_later_is_checked_as_one_given_at_first(cam):
    """A '#' ends a path in a URI: a run's documents would point at another run's file."""
    with pytest.raises(ValueError, match="template"):
        cam.file_template = "run.h5#{uid}.h5"
    assert cam.file_template == DEFAULT_TEMPLATE


def test_settings_cannot_change_while_staged(cam):
    cam.stage()
    with pytest.raises(RuntimeError, match="staged"):
        cam.exposure_time.set(0.5)
    cam.unstage()


def test_double_stage_is_a_clear_error(cam):
    cam.stage()
    with pytest.raises(RuntimeError, match="already staged"):
        cam.stage()
    cam.unstage()


def test_default_camera_needs_no_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    cam = SCMOSCamera(name="cam")
    assert isinstance(cam.driver, SimulatedSCMOS)
    assert cam.roi.get() == (0, 0, 2048, 2048)
    assert str(cam.write_dir).startswith(str(tmp_path))


class ClockedSCMOS(SimulatedSCMOS):
    """The simulator with a 1 ms exposure clock, as a real camera rounds to its own."""

    def _apply(self, settings, roi):
        exposure = max(0.001, round(settings.exposure_time, 3))
        return dataclasses.replace(settings, exposure_time=exposure)


def test_a_run_records_the_settings_the_camera_uses(tmp_path, RE, recorder):
    """The exposure as the camera rounded it, and the driver's settings where it was
    configured directly between runs: in the signal, the descriptor and the file."""
    cam = SCMOSCamera(name="cam", driver=ClockedSCMOS(shape=SENSOR, seed=3), write_dir=tmp_path)
    try:
        cam.roi.set((32, 16, 96, 64))
        cam.exposure_time.set(0.0123)
        assert cam.exposure_time.get() == 0.012
        RE(count([cam]))
        cam.driver.configure(dataclasses.replace(cam.driver.settings, binning=2))
        RE(count([cam]))
        for descriptor, binning in zip(recorder.of("descriptor"), (1, 2), strict=True):
            config = descriptor["configuration"]["cam"]["data"]
            assert config["cam_exposure_time"] == 0.012 and config["cam_binning"] == binning
            assert descriptor["data_keys"]["cam_image"]["shape"] == [
                1,
                64 // binning,
                96 // binning,
            ]
            with h5py.File(config["cam_file_path"], "r") as f:
                assert f["/entry"].attrs["exposure_time"] == 0.012
                assert f["/entry"].attrs["binning"] == binning
    finally:
        cam.destroy()


def test_a_roi_of_none_is_the_whole_sensor_and_says_so(driver, tmp_path, RE):
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path)
    cam.roi.set((0, 0, 32, 32))
    cam.roi.set(None)
    rows, cols = driver.sensor_shape
    assert cam.roi.get() == (0, 0, cols, rows) and driver.frame_shape == (rows, cols)
    RE(count([cam], num=1))
    with h5py.File(cam.file_path.get(), "r") as f:
        assert f[layout.DATA].shape == (1, rows, cols)
    cam.destroy()


def test_a_live_view_port_out_of_range_is_refused(cam):
    with pytest.raises(ValueError, match=r"port must be 0 \(any free one\) to 65535, got 70000"):
        cam.live(port=70000)


@pytest.mark.parametrize(("period", "warned"), [(0.01, True), (0.02, False), (0.0, False)])
def test_a_free_run_period_under_the_exposure_is_told_before_the_run(cam, RE, period, warned):
    """Frames then come an exposure apart, while the run records the period asked."""
    cam.trigger_mode.set("internal")
    cam.exposure_time.set(0.02)
    cam.acquire_period.set(period)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        RE(count([cam], num=2))
    told = [w for w in caught if "shorter than the exposure" in str(w.message)]
    assert bool(told) == warned
    if warned:
        assert "every 20 ms" in str(told[0].message) and "acquire_period 10 ms" in str(
            told[0].message
        )


def test_a_setting_changed_from_another_thread_while_staging_waits_and_is_refused(
    cam, RE, monkeypatch
):
    """Accepted mid-stage, a binning change once left the file saying one binning, the
    descriptor another and the frames a third."""
    refused: list[Exception] = []

    def set_binning() -> None:
        try:
            cam.binning.set(2)
        except RuntimeError as exc:
            refused.append(exc)

    checked = cam._check_staged_alike

    def meddle(run):  # another thread sets the binning while the stage is under way
        other = threading.Thread(target=set_binning)
        other.start()
        other.join(0.5)
        checked(run)

    monkeypatch.setattr(cam, "_check_staged_alike", meddle)
    docs = Recorder()
    RE(count([cam], num=2), docs)
    assert [str(e) for e in refused] == ["cam.binning cannot change while cam is staged"]
    (descriptor,) = docs.of("descriptor")
    assert descriptor["configuration"]["cam"]["data"]["cam_binning"] == 1 == cam.binning.get()
    with h5py.File(cam.file_path.get()) as f:
        assert f["/entry"].attrs["binning"] == 1
        assert f["/entry/data/data"].shape[1:] == cam.driver.frame_shape
