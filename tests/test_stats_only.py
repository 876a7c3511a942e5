"""Statistics without images: `save_images=False` keeps every frame's statistics, number and
timestamps, not the frame, and the run's documents point at nothing else."""

from __future__ import annotations

import json
import os
import signal

import h5py
import numpy as np
import pytest
from bluesky.plans import count, scan
from bluesky.utils import RunEngineInterrupted
from bluesky_tiled_plugins import TiledWriter
from ophyd.sim import motor

from ophyd_scmos import SCMOSCamera, SimulatedSCMOS, open_catalog
from ophyd_scmos.catalog import file_stats
from ophyd_scmos.pipeline import layout, stats
from ophyd_scmos.plans import movie
from tests.faults.test_interrupts import pause_at
from tests.pipeline.test_stats import numpy_stats, wait_for_stored_stats

WHOLE = (0, 0, 96, 64)  #: the `cam` fixture's frame
SPOT = (7, 5, 11, 13)
REGIONS = {stats.FRAME: WHOLE, "spot": SPOT}


@pytest.fixture
def catalog(tmp_path):
    catalog = open_catalog(tmp_path / "catalog", in_process=True)
    yield catalog
    catalog.context.close()


def only_uid(recorder) -> str:
    (start,) = recorder.of("start")
    return start["uid"]


def file_frame_numbers(path: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[layout.FRAME_NUMBER][()]


def assert_file_has_every_frames_record_but_no_frame(path: str, frames: int, driver) -> None:
    """No image dataset; every frame's number, camera and host timestamps and statistics,
    equal to numpy's on the frame the camera took."""
    with h5py.File(path, "r") as f:
        assert layout.DATA not in f
        assert f[layout.DATA_GROUP].attrs["NX_class"] == "NXcollection"
        assert layout.stored_frames(f) == frames
        outcome = layout.Outcome.read(f)
        assert outcome is not None and outcome.complete and outcome.frames_written == frames
        assert not f[layout.ENTRY].attrs["save_images"]
        numbers = f[layout.FRAME_NUMBER][()]
        camera_times, host_times = f[layout.TIMESTAMP][()], f[layout.HOST_TIMESTAMP][()]
        assert len(numbers) == len(camera_times) == len(host_times) == frames
        assert np.all(np.diff(numbers) > 0) and np.all(np.diff(camera_times) > 0)
        assert np.all(np.diff(host_times) >= 0) and host_times[0] > 1e9  # UNIX time
        for region, box in REGIONS.items():
            assert list(f[f"{layout.STATS_GROUP}/{region}"].attrs["region"]) == list(box)
            stored = {stat: f[layout.stats_path(region, stat)][()] for stat in stats.STATS}
            for i, number in enumerate(numbers):
                expected = numpy_stats(driver.expected_frame(int(number)), box)
                for stat in stats.STATS:
                    assert stored[stat][i] == pytest.approx(expected[stat], rel=1e-9), stat
    assert file_stats(path).frames == frames
    assert file_stats(path).raw_bytes == 0


def test_a_count_without_images_replays_its_statistics_from_the_catalog(
    cam, driver, RE, recorder, catalog
):
    cam.save_images.set(False)
    cam.rois["spot"] = SPOT
    cam.stats_read = stats.STATS
    RE.subscribe(TiledWriter(catalog))
    RE(count([cam], num=4))
    names = [name for name, _ in recorder.docs]
    assert names == ["start", "descriptor", *["event"] * 4, "stop"]  # no Resource, no Datum
    (descriptor,) = recorder.of("descriptor")
    assert "cam_image" not in descriptor["data_keys"]
    assert descriptor["configuration"]["cam"]["data"]["cam_save_images"] is False
    assert descriptor["configuration"]["cam"]["data_keys"]["cam_save_images"]["dtype"] == "boolean"
    assert not any("cam_image" in event["data"] for event in recorder.of("event"))

    run = catalog[only_uid(recorder)]["primary"]
    assert "cam_image" not in run and "cam_image" not in run.metadata["data_keys"]
    numbers = run["cam_frame_number"].read()
    np.testing.assert_array_equal(numbers, file_frame_numbers(cam.file_path.get()))
    for region, prefix in ((WHOLE, "cam_stats"), (SPOT, "cam_spot")):
        for stat in stats.STATS:
            replayed = run[f"{prefix}_{stat}"].read()
            expected = [numpy_stats(driver.expected_frame(int(n)), region)[stat] for n in numbers]
            np.testing.assert_allclose(replayed, expected, rtol=1e-9)
    assert_file_has_every_frames_record_but_no_frame(cam.file_path.get(), 4, driver)


def test_a_scan_without_images_keeps_every_frames_statistics_and_sums_each_points(
    tmp_path, RE, recorder, catalog
):
    driver = SimulatedSCMOS(shape=(256, 320), seed=7)
    cam = SCMOSCamera(
        name="cam", driver=driver, write_dir=tmp_path / "data", ring_mb=4, save_images=False
    )
    try:
        cam.roi.set((32, 16, 96, 64))
        cam.exposure_time.set(0.001)
        cam.frames_per_point.set(2)
        cam.rois["spot"] = SPOT
        RE.subscribe(TiledWriter(catalog))
        RE(scan([cam], motor, -1, 1, 5))
        assert not recorder.of("resource") and not recorder.of("datum")
        run = catalog[only_uid(recorder)]["primary"]
        assert "cam_image" not in run and "cam_image" not in run.metadata["data_keys"]
        np.testing.assert_allclose(run["motor"].read(), np.linspace(-1, 1, 5))
        numbers = file_frame_numbers(cam.file_path.get()).reshape(5, 2)
        replayed = run["cam_spot_total"].read()
        assert replayed.shape == (5,)
        for total, point in zip(replayed, numbers, strict=True):
            summed = sum(driver.expected_frame(int(n)).astype(np.int64) for n in point)
            assert total == pytest.approx(numpy_stats(summed, SPOT)["total"], rel=1e-9)
        assert_file_has_every_frames_record_but_no_frame(cam.file_path.get(), 10, driver)
    finally:
        cam.destroy()


def test_a_movie_without_images_has_statistics_columns_one_row_per_frame(
    cam, driver, RE, recorder, catalog
):
    cam.save_images.set(False)
    cam.rois["spot"] = SPOT
    cam.stats_read = ("total", "centroid_x")
    RE.subscribe(TiledWriter(catalog))
    RE(movie(cam, frames=300))
    (descriptor,) = recorder.of("descriptor")
    assert "cam_image" not in descriptor["data_keys"]
    assert {doc["data_key"] for doc in recorder.of("stream_resource")} == {
        "cam_frame_number",
        "cam_frame_time",
        "cam_host_time",
        "cam_stats_total",
        "cam_stats_centroid_x",
        "cam_spot_total",
        "cam_spot_centroid_x",
    }
    run = catalog[only_uid(recorder)]["primary"]
    assert "cam_image" not in run
    numbers = run["cam_frame_number"].read()
    np.testing.assert_array_equal(numbers, np.arange(300))
    assert run["cam_frame_time"].read().shape == run["cam_host_time"].read().shape == (300,)
    frames = [driver.expected_frame(int(n)) for n in numbers]
    np.testing.assert_array_equal(
        run["cam_spot_total"].read(), [frame[5:18, 7:18].sum() for frame in frames]
    )
    np.testing.assert_allclose(
        run["cam_stats_centroid_x"].read(),
        [numpy_stats(frame, WHOLE)["centroid_x"] for frame in frames],
        rtol=1e-9,
    )
    assert_file_has_every_frames_record_but_no_frame(cam.file_path.get(), 300, driver)


def test_an_abort_keeps_exactly_the_frames_of_the_events_without_images(cam, RE, recorder):
    cam.save_images.set(False)
    pause_at(RE, 12, defer=False)
    with pytest.raises(RunEngineInterrupted):
        RE(count([cam], num=1000))
    RE.abort()
    events = recorder.of("event")
    with h5py.File(cam.file_path.get(), "r") as f:
        outcome = layout.Outcome.read(f)
        assert outcome is not None
        assert layout.stored_frames(f) == len(events) == outcome.frames_written
        numbers = f[layout.FRAME_NUMBER][()]
        totals = f[layout.stats_path(stats.FRAME, "total")][()]
    assert len(numbers) == len(totals) == len(events)
    for event, number, total in zip(events, numbers, totals, strict=True):
        assert event["data"]["cam_frame_number"] == number
        assert event["data"]["cam_stats_total"] == total


def test_a_rewound_point_is_cut_from_a_file_without_images(cam, driver):
    """What the RunEngine does on an immediate pause mid-trigger, step by step."""
    cam.save_images.set(False)
    cam.frames_per_point.set(2)
    cam.stage()
    cam.trigger().wait(10)
    assert list(cam.collect_asset_docs()) == []  # point 0 recorded in an event
    cam.trigger().wait(10)  # point 1: the pause comes before its event
    cam.pause()
    cam.resume()  # the plan rewinds and triggers point 1 again
    cam.trigger().wait(10)
    assert list(cam.collect_asset_docs()) == []
    cam.unstage()
    with h5py.File(cam.file_path.get(), "r") as f:
        np.testing.assert_array_equal(f[layout.FRAME_NUMBER][()], [0, 1, 4, 5])
        totals = f[layout.stats_path(stats.FRAME, "total")][()]
    expected = [driver.expected_frame(n).sum() for n in (0, 1, 4, 5)]
    np.testing.assert_array_equal(totals, expected)


def test_a_killed_writer_leaves_the_statistics_it_flushed(cam, driver, RE, recorder):
    cam.save_images.set(False)
    killed: dict[str, int] = {}

    def kill_writer_at_event_50(name, doc):
        if name == "event" and doc["seq_num"] == 50 and not killed:
            killed["pid"] = cam._run.stream.writer.pid
            wait_for_stored_stats(cam.file_path.get(), 50, timeout=60)  # within an interval
            os.kill(killed["pid"], signal.SIGKILL)

    RE.subscribe(kill_writer_at_event_50)
    with pytest.raises(Exception) as info:
        RE(count([cam], num=5000))
    error: BaseException | None = info.value
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("holds the first" in message for message in messages)
    with h5py.File(cam.file_path.get(), "r") as f:  # a plain open: recovered
        saved = layout.stored_frames(f)
        outcome = layout.Outcome.read(f)
        assert outcome is not None and not outcome.complete and outcome.frames_written == saved
        assert outcome.run == recorder.of("start")[0]["uid"]  # recover finds its run by it
        numbers = f[layout.FRAME_NUMBER][()]
        totals = f[layout.stats_path(stats.FRAME, "total")][()]
    assert 50 <= saved == len(totals) <= len(numbers)
    for number, total in zip(numbers[:saved], totals, strict=True):
        assert total == driver.expected_frame(int(number)).sum()


def test_images_and_statistics_both_off_are_refused_at_stage(driver, tmp_path):
    cam = SCMOSCamera(
        name="cam", driver=driver, write_dir=tmp_path, statistics=False, save_images=False
    )
    try:
        with pytest.raises(ValueError, match="save_images=False with statistics=False") as err:
            cam.stage()
        assert "\n" not in str(err.value)
        assert cam._staged.name == "no" and not os.listdir(tmp_path)
        cam.statistics = True  # one of them on: the run stages
        cam.stage()
        with pytest.raises(RuntimeError, match="cannot change while cam is staged"):
            cam.save_images.set(True)
        cam.unstage()
    finally:
        cam.destroy()


def test_save_images_is_true_or_false(cam):
    assert cam.save_images.get() is True  # the default
    with pytest.raises(ValueError, match="save_images must be True or False, got 'no'"):
        cam.save_images.set("no")
    with pytest.raises(ValueError, match="save_images must be True or False, got 0"):
        SCMOSCamera(name="cam2", driver=SimulatedSCMOS(shape=(64, 64)), save_images=0)


def test_runs_and_show_tell_what_a_run_without_images_kept_and_lost(tmp_path, RE, capsys):
    """No image to read the file from: the run's file is the one its descriptor names, and
    `runs` counts its frames and losses from it; `show` says what it holds."""
    from ophyd_scmos.cli import main

    camera = SimulatedSCMOS(shape=(2048, 2048), seed=3, camera_buffer_frames=100_000)
    cam = SCMOSCamera(name="cam", driver=camera, write_dir=tmp_path, ring_frames=2, overflow="drop")
    cam.exposure_time.set(1e-4)  # 10,000 frames/s into 2 slots: most are dropped
    cam.save_images.set(False)
    RE.subscribe(TiledWriter(open_catalog(tmp_path / "catalog")))
    with pytest.warns(RuntimeWarning, match="dropped from a full ring"):
        RE(movie(cam, frames=500))
    kept = file_stats(cam.file_path.get())
    assert kept.frames_dropped > 0
    cam.destroy()

    assert main(["runs", "--catalog", str(tmp_path / "catalog"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["file"] == cam.file_path.get() and row["frames"] == kept.frames
    assert row["lost"] == kept.frames_dropped + kept.frames_missed
    assert main(["show", "-1", "--catalog", str(tmp_path / "catalog")]) == 1
    said = capsys.readouterr().err
    assert f"(statistics only): {cam.file_path.get()} holds {kept.frames} frames'" in said
    assert f"{kept.frames_dropped} dropped" in said
