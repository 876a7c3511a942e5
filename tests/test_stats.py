"""The camera's statistics under a RunEngine: named regions, readings, hints, the file."""

from __future__ import annotations

import json
import os

import event_model
import h5py
import numpy as np
import pytest
from bluesky.plans import count

from ophyd_scmos import SCMOSCamera
from ophyd_scmos.pipeline import layout, stats
from tests.pipeline.test_stats import numpy_stats


def stored_frames(cam: SCMOSCamera) -> np.ndarray:
    with h5py.File(cam.file_path.get(), "r") as f:
        return f[layout.DATA][()]


def test_statistics_are_readings_of_every_event(cam, RE, recorder):
    cam.rois["spot"] = (7, 5, 11, 13)  # odd sizes, in the 96x64 frame
    cam.stats_read = stats.STATS  # all nine
    RE(count([cam], num=4))
    (descriptor,) = recorder.of("descriptor")
    for name, doc in recorder.docs:
        event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)
    keys = descriptor["data_keys"]
    for region in ("stats", "spot"):
        for stat in stats.STATS:
            key = keys[f"cam_{region}_{stat}"]
            assert (key["dtype"], key["dtype_numpy"], key["shape"]) == ("number", "<f8", [])
    assert descriptor["hints"]["cam"]["fields"] == ["cam_stats_total", "cam_spot_total"]
    frames = stored_frames(cam)
    events = recorder.of("event")
    assert len(events) == len(frames) == 4
    for event, frame in zip(events, frames, strict=True):
        whole = numpy_stats(frame, (0, 0, 96, 64))
        spot = numpy_stats(frame, (7, 5, 11, 13))
        for stat in stats.STATS:
            assert event["data"][f"cam_stats_{stat}"] == pytest.approx(whole[stat], rel=1e-9)
            assert event["data"][f"cam_spot_{stat}"] == pytest.approx(spot[stat], rel=1e-9)


def test_a_camera_reads_what_an_alignment_plots_and_stores_every_statistic(cam, RE, recorder):
    """Total, max and the centroids are readings by default (each reading costs every
    event); the file has all nine of every frame."""
    cam.rois["spot"] = (7, 5, 11, 13)
    RE(count([cam], num=2))
    (descriptor,) = recorder.of("descriptor")
    read = {k for k in descriptor["data_keys"] if k.startswith(("cam_stats_", "cam_spot_"))}
    assert read == {
        f"cam_{region}_{stat}"
        for region in ("stats", "spot")
        for stat in ("total", "max", "centroid_x", "centroid_y")
    }
    with h5py.File(cam.file_path.get(), "r") as f:
        for region in (stats.FRAME, "spot"):
            for stat in stats.STATS:
                assert f[layout.stats_path(region, stat)].shape == (2,), (region, stat)


def test_a_points_statistics_are_its_frames_summed(cam, RE, recorder):
    cam.frames_per_point.set(3)
    cam.stats_read = stats.STATS
    cam.rois["spot"] = (20, 10, 9, 7)
    RE(count([cam], num=2))
    frames = stored_frames(cam).reshape(2, 3, 64, 96)
    for event, point in zip(recorder.of("event"), frames, strict=True):
        summed = numpy_stats(point.sum(axis=0, dtype=np.int64), (20, 10, 9, 7))
        for stat in ("total", "mean", "centroid_x", "centroid_y", "sigma_x", "sigma_y"):
            assert event["data"][f"cam_spot_{stat}"] == pytest.approx(summed[stat], rel=1e-9)
        assert event["data"]["cam_spot_max"] == point[:, 10:17, 20:29].max()


def test_binning_and_12_bit_statistics_match_the_stored_frames(cam, RE, recorder):
    cam.binning.set(2)
    cam.bit_depth.set(12)
    cam.rois["spot"] = (3, 1, 5, 31)  # the 48x32 binned frame's pixels
    cam.stats_read = stats.STATS
    RE(count([cam], num=3))
    frames = stored_frames(cam)
    assert frames.shape == (3, 32, 48) and frames.max() <= 4095
    for event, frame in zip(recorder.of("event"), frames, strict=True):
        expected = numpy_stats(frame, (3, 1, 5, 31))
        for stat in stats.STATS:
            assert event["data"][f"cam_spot_{stat}"] == pytest.approx(expected[stat], rel=1e-9)


def test_a_step_scans_stored_statistics_are_its_frames_also_after_a_point_is_retaken(cam):
    """The statistics rows in the file are the stored frames', and a point cut on resume
    takes its rows with it."""
    cam.rois["spot"] = (20, 10, 9, 7)
    cam.stage()
    cam.trigger().wait(10)
    list(cam.collect_asset_docs())  # point 0 recorded in an event
    cam.trigger().wait(10)  # point 1: the pause comes before its event
    cam.pause()
    cam.resume()  # the plan rewinds and takes point 1 again
    cam.trigger().wait(10)
    reading = cam.read()
    list(cam.collect_asset_docs())  # point 1 recorded
    cam.unstage()
    frames = stored_frames(cam)
    assert len(frames) == 2
    with h5py.File(cam.file_path.get(), "r") as f:
        for region, box in ((stats.FRAME, (0, 0, 96, 64)), ("spot", (20, 10, 9, 7))):
            for stat in stats.STATS:
                stored = f[layout.stats_path(region, stat)][()]
                expected = [numpy_stats(frame, box)[stat] for frame in frames]
                np.testing.assert_allclose(stored, expected, rtol=1e-9, err_msg=stat)
    retaken = numpy_stats(frames[1], (20, 10, 9, 7))
    assert reading["cam_spot_total"]["value"] == pytest.approx(retaken["total"], rel=1e-9)


def test_a_region_outside_the_frame_is_refused_when_set(cam):
    with pytest.raises(ValueError, match=r"region spot=\(90, 0, 7, 5\) is outside the 96x64"):
        cam.rois["spot"] = (90, 0, 7, 5)
    assert "spot" not in cam.rois


def test_regions_whose_names_differ_only_in_case_are_refused_when_set(cam):
    """A catalog's tables tell no case apart: the run's events never reached the catalog,
    refused at its end ("Column names must be unique when converted to lower case")."""
    cam.rois["spot"] = (0, 0, 5, 5)
    with pytest.raises(ValueError, match="regions 'spot' and 'Spot' differ only in case"):
        cam.rois["Spot"] = (5, 5, 5, 5)
    with pytest.raises(ValueError, match="differ only in case"):
        cam.rois = {"edge": (0, 0, 5, 5), "EDGE": (5, 5, 5, 5)}
    assert dict(cam.rois) == {"spot": (0, 0, 5, 5)}
    cam.rois["spot"] = (1, 1, 5, 5)  # the same name again is a change


def test_names_whose_data_keys_a_catalog_cannot_keep_are_refused_and_the_longest_kept(
    cam, driver, RE, tmp_path
):
    """A catalog keeps each data key as a column of an SQL table, named in at most 63 bytes:
    Tiled refused a longer one with the run's first event, after its frames were taken. The
    longest that fits goes through a movie (every statistic a column) into the catalog."""
    from bluesky_tiled_plugins import TiledWriter

    from ophyd_scmos import open_catalog
    from ophyd_scmos.plans import movie

    fits = "r" * (63 - len("cam__centroid_x"))
    with pytest.raises(ValueError, match=f"data key 'cam_{fits}r_centroid_x' is 64 bytes"):
        cam.rois[fits + "r"] = (0, 0, 5, 5)
    with pytest.raises(ValueError, match="shorten the camera's or the region's name"):
        cam.rois = {"spot": (0, 0, 5, 5), fits + "r": (0, 0, 5, 5)}
    assert not cam.rois
    name = "c" * (64 - len("_stats_centroid_x"))
    with pytest.raises(ValueError, match=f"data key '{name}_stats_centroid_x' is 64 bytes"):
        SCMOSCamera(name=name, driver=driver, write_dir=tmp_path / "data")
    RE.subscribe(TiledWriter(open_catalog(tmp_path / "catalog")))
    cam.rois[fits] = (1, 2, 5, 5)
    (uid,) = RE(movie(cam, frames=5))
    column = open_catalog(tmp_path / "catalog")[uid]["primary"][f"cam_{fits}_centroid_x"]
    assert column.read().shape == (5,)


def test_a_region_the_new_frame_leaves_out_is_refused_at_stage_before_any_frame(cam):
    cam.rois["spot"] = (80, 40, 10, 10)
    cam.binning.set(2)  # the frame is now 48x32
    with pytest.raises(ValueError, match="outside the 48x32 frame") as refused:
        cam.stage()
    assert "set the region anew (cam.rois[name] = " in str(refused.value)
    assert "or remove it (del cam.rois[name])" in str(refused.value)
    assert cam._staged.name == "no"
    assert not cam.write_dir.exists() or not os.listdir(cam.write_dir)


def test_regions_assigned_all_at_once_are_each_checked_and_kept_as_regions(cam):
    """``cam.rois = {...}``, as one writes it: checked as when set one by one, all or none."""
    cam.rois = {"spot": (1, 1, 4, 4)}
    assert dict(cam.rois) == {"spot": (1, 1, 4, 4)} and "cam_spot_total" in cam.describe()
    with pytest.raises(ValueError, match="outside the 96x64"):
        cam.rois = {"edge": (0, 0, 96, 1), "huge": (0, 0, 5000, 5000)}
    assert dict(cam.rois) == {"spot": (1, 1, 4, 4)}  # none changed
    with pytest.raises(ValueError):
        cam.rois = {"bad.name": (0, 0, 2, 2)}
    cam.stage()
    try:
        with pytest.raises(RuntimeError, match="rois cannot change while cam is staged"):
            cam.rois = {}
    finally:
        cam.unstage()
    cam.rois = {}
    assert len(cam.rois) == 0 and "cam_spot_total" not in cam.describe()


def test_regions_are_added_changed_and_removed_by_name_but_not_while_staged(cam):
    """Nor which statistics there are: the run's file and data keys were laid out at stage."""
    cam.rois["spot"] = (0, 0, 4, 4)
    cam.rois["spot"] = (1, 1, 4, 4)
    cam.rois["edge"] = (0, 0, 96, 1)
    assert dict(cam.rois) == {"spot": (1, 1, 4, 4), "edge": (0, 0, 96, 1)}
    del cam.rois["edge"]
    assert list(cam.rois) == ["spot"]
    cam.stage()
    try:
        with pytest.raises(RuntimeError, match="rois cannot change while cam is staged"):
            cam.rois["spot"] = (0, 0, 2, 2)
        with pytest.raises(RuntimeError, match="rois cannot change while cam is staged"):
            del cam.rois["spot"]
        for setting, value in (
            ("statistics", False),
            ("stats_read", ("total",)),
            ("stats_hinted", ("max",)),
        ):
            before = getattr(cam, setting)
            with pytest.raises(RuntimeError, match=f"{setting} cannot change while cam is staged"):
                setattr(cam, setting, value)
            assert getattr(cam, setting) == before
    finally:
        cam.unstage()
    assert "cam_spot_centroid_y" in cam.describe()
    cam.stats_read = ("total", "max")  # unstaged, it changes again
    assert cam.stats_read == ("total", "max")
    cam.rois["edge"] = (0, 0, 96, 1)
    # The readings follow every change: those of the regions and statistics now set.
    expected = {f"cam_{r}_{s}" for r in ("stats", "spot", "edge") for s in ("total", "max")}
    assert {k for k in cam.describe() if k.startswith(("cam_stats", "cam_spot", "cam_edge"))} == (
        expected
    )
    assert expected <= set(cam.read())
    with h5py.File(cam.file_path.get(), "r") as f:
        assert list(f[layout.STATS_GROUP]) == [stats.FRAME, "spot"]


def test_each_runs_configuration_records_where_its_regions_are(cam, RE, recorder):
    """Two runs with `spot` at two places replayed alike: only the file said where it was."""
    for where in ((4, 6, 10, 8), (20, 30, 5, 7)):
        cam.rois.replace({"spot": where, "edge": (0, 0, 3, 64)})
        RE(count([cam], num=1))
    descriptors = recorder.of("descriptor")
    recorded = [json.loads(d["configuration"]["cam"]["data"]["cam_regions"]) for d in descriptors]
    assert recorded == [
        {"spot": [4, 6, 10, 8], "edge": [0, 0, 3, 64]},
        {"spot": [20, 30, 5, 7], "edge": [0, 0, 3, 64]},
    ]


def test_which_statistics_are_read_and_hinted_is_configurable(driver, tmp_path, RE, recorder):
    cam = SCMOSCamera(
        name="cam",
        driver=driver,
        write_dir=tmp_path,
        rois={"spot": (0, 0, 8, 8)},
        stats_read=("total", "max"),
        stats_hinted=("max",),
    )
    try:
        assert cam.hints == {"fields": ["cam_stats_max", "cam_spot_max"]}
        RE(count([cam], num=1))
        (event,) = recorder.of("event")
        assert {k for k in event["data"] if k.startswith(("cam_stats", "cam_spot"))} == {
            "cam_stats_total",
            "cam_stats_max",
            "cam_spot_total",
            "cam_spot_max",
        }
        with pytest.raises(ValueError, match="stats_hinted='total' must be a sequence of names"):
            cam.stats_hinted = "total"
        # A hint plots a reading: hinting one that is not read would plot nothing, silently.
        with pytest.raises(ValueError, match=r"must be among stats_read \('total', 'max'\)"):
            cam.stats_hinted = ("centroid_x",)
        with pytest.raises(ValueError, match=r"would leave stats_hinted \('max',\) unread"):
            cam.stats_read = ("total",)
        assert (cam.stats_read, cam.stats_hinted) == (("total", "max"), ("max",))
    finally:
        cam.destroy()
    # Read without the total: nothing hinted unless asked (the totals are the default hint).
    quiet = SCMOSCamera(name="quiet", driver=driver, write_dir=tmp_path, stats_read=("max",))
    try:
        assert quiet.stats_hinted == () and quiet.hints == {"fields": []}
    finally:
        quiet.destroy()


def test_without_statistics_there_are_no_readings_and_none_stored(driver, tmp_path, RE, recorder):
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path, statistics=False)
    try:
        RE(count([cam], num=1))
        (event,) = recorder.of("event")
        assert not [k for k in event["data"] if "_stats_" in k]
        with h5py.File(cam.file_path.get(), "r") as f:
            assert layout.STATS_GROUP not in f
    finally:
        cam.destroy()


def test_a_movies_statistics_are_stream_columns_one_row_per_frame(cam, RE, recorder, tmp_path):
    from bluesky_tiled_plugins import TiledWriter

    from ophyd_scmos import open_catalog
    from ophyd_scmos.plans import movie

    RE.subscribe(TiledWriter(open_catalog(tmp_path / "catalog")))
    cam.rois["spot"] = (7, 5, 11, 13)
    cam.stats_read = ("total", "centroid_x")
    RE(movie(cam, frames=300))
    (descriptor,) = recorder.of("descriptor")
    assert descriptor["data_keys"]["cam_spot_total"]["external"] == "STREAM:"
    (start,) = recorder.of("start")
    run = open_catalog(tmp_path / "catalog")[start["uid"]]["primary"]
    frames = stored_frames(cam)
    assert len(frames) == 300
    spot = run["cam_spot_total"].read()
    centroids = run["cam_stats_centroid_x"].read()
    assert spot.shape == centroids.shape == (300,)
    np.testing.assert_array_equal(spot, frames[:, 5:18, 7:18].sum(axis=(1, 2)))
    expected = [numpy_stats(frame, (0, 0, 96, 64))["centroid_x"] for frame in frames]
    np.testing.assert_allclose(centroids, expected, rtol=1e-9)


def test_best_effort_callback_plots_the_totals_and_finds_their_peaks(cam, RE, recorder):
    import matplotlib

    matplotlib.use("Agg")
    from bluesky.callbacks.best_effort import BestEffortCallback
    from bluesky.plans import scan
    from ophyd.sim import motor

    bec = BestEffortCallback()
    RE.subscribe(bec)
    cam.rois["spot"] = (3, 3, 9, 9)
    RE(scan([cam], motor, -1, 1, 5))
    events = recorder.of("event")
    for key in ("cam_stats_total", "cam_spot_total"):
        totals = [e["data"][key] for e in events]
        brightest = events[int(np.argmax(totals))]["data"]["motor"]
        assert bec.peaks["max"][key][0] == pytest.approx(brightest)
