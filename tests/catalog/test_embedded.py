"""Replay from the embedded catalog: documents, `runs` and `show`, laziness, databroker's APIs.

One catalog and one 300-frame run of the full simulated sensor (a 48 MB file) for the module;
everything real: the camera's writer process, TiledWriter, HDF5 files on disk.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import event_model
import h5py
import matplotlib.image
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import count
from bluesky.utils import RunEngineInterrupted
from bluesky_tiled_plugins import TiledWriter

from ophyd_scmos import CatalogWriter, SCMOSCamera, SimulatedSCMOS
from ophyd_scmos.catalog import (
    MissingFile,
    UnreadableFile,
    documents,
    file_stats,
    open_catalog,
    summarize,
    sync,
)
from ophyd_scmos.catalog.local_server import find_server
from ophyd_scmos.catalog.summary import IMAGE_RUN
from ophyd_scmos.cli import main
from ophyd_scmos.pipeline import layout
from tests.conftest import DEEP_CAMERA_BUFFER, SENSOR, expected_frames

FRAMES = 300


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The module's catalog; a client held meanwhile keeps its local server running."""
    directory = tmp_path_factory.mktemp("embedded") / "catalog"
    held = open_catalog(directory)
    yield directory
    held.context.close()


@pytest.fixture(scope="module")
def camera_run(catalog_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 300-frame count of the whole sensor, written into the embedded catalog."""
    driver = SimulatedSCMOS(shape=SENSOR, seed=3)
    cam = SCMOSCamera(
        name="cam", driver=driver, write_dir=tmp_path_factory.mktemp("frames"), ring_mb=16
    )
    cam.exposure_time.set(0.001)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(TiledWriter(open_catalog(catalog_dir)))
    (uid,) = RE(count([cam], num=FRAMES))
    return {"uid": uid, "driver": driver, "file": cam.file_path.get()}


@pytest.fixture
def catalog(catalog_dir: Path, camera_run: dict[str, Any]) -> Any:
    return open_catalog(catalog_dir)


def test_documents_come_in_an_order_every_callback_accepts(
    catalog: Any, camera_run: dict[str, Any]
) -> None:
    docs = list(documents(catalog[camera_run["uid"]]))
    names = [name for name, _ in docs]
    assert names[0] == "start" and names[-1] == "stop"
    assert names.count("event") == FRAMES
    assert names.count("stream_resource") == names.count("stream_datum") == 1
    seen: set[str] = set()
    for name, doc in docs:
        event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)
        if name in ("event", "stream_datum"):
            assert doc["descriptor"] in seen
        if name == "stream_datum":
            assert doc["stream_resource"] in seen
        seen.add(doc["uid"])
    (resource,) = (doc for name, doc in docs if name == "stream_resource")
    assert resource["uri"].endswith(Path(camera_run["file"]).name)
    assert resource["parameters"]["dataset"] == layout.DATA
    # Plain dicts of their own: a callback may change what it is given.
    docs[0][1]["changed"] = True
    assert "changed" not in next(documents(catalog[camera_run["uid"]]))[1]


def test_reading_the_last_frame_reads_a_small_part_of_the_file(
    catalog: Any, catalog_dir: Path, camera_run: dict[str, Any]
) -> None:
    """The catalog's local server reads the file: its read() calls show in its /proc/PID/io."""
    server = find_server(catalog_dir)
    assert server is not None
    io = Path(f"/proc/{server.pid}/io")
    if not io.exists():
        pytest.skip("needs Linux's per-process I/O counters (/proc/PID/io)")

    def bytes_read() -> int:
        return int(dict(line.split(": ") for line in io.read_text().splitlines())["rchar"])

    images = catalog[camera_run["uid"]]["primary"]["cam_image"]
    assert images.shape == (FRAMES, 1, *SENSOR)
    before = bytes_read()
    last = images[FRAMES - 1]
    read = bytes_read() - before
    np.testing.assert_array_equal(last[0], camera_run["driver"].expected_frame(FRAMES - 1))
    file_size = Path(camera_run["file"]).stat().st_size
    frame_bytes = last.nbytes
    assert read < 4 * frame_bytes + 1_000_000, f"read {read} bytes of a {file_size}-byte file"
    assert read < file_size / 20


def test_runs_lists_recent_runs_newest_first(
    catalog_dir: Path, camera_run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", "--catalog", str(catalog_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    newest = rows[0]
    assert newest["uid"] == camera_run["uid"]
    assert newest["frames"] == FRAMES and newest["shape"] == [FRAMES, 1, *SENSOR]
    assert newest["file"] == camera_run["file"] and newest["lost"] == 0
    assert newest["exit_status"] == "success" and newest["key"] == "primary/cam_image"

    assert main(["runs", "--catalog", str(catalog_dir)]) == 0
    header, first = capsys.readouterr().out.splitlines()[:2]
    assert header.split() == ["uid", "start", "status", "frames", "WxH", "lost", "file"]
    assert first.startswith(camera_run["uid"][:8])
    # width x height, as ROIs and regions are given
    assert f"{SENSOR[1]}x{SENSOR[0]}" in first and Path(camera_run["file"]).name in first


def test_show_summarizes_a_run_and_draws_it(
    catalog_dir: Path,
    camera_run: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    png = tmp_path / "run.png"
    uid = camera_run["uid"]
    args = ["show", uid[:8], "--catalog", str(catalog_dir), "--png", str(png)]
    assert main([*args, "--json", "--mean-frames", "30"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["uid"] == uid and report["frames"] == FRAMES
    assert report["file"] == camera_run["file"] and report["file_reachable"]
    assert report["size_bytes"] == Path(camera_run["file"]).stat().st_size
    assert report["raw_bytes"] == FRAMES * SENSOR[0] * SENSOR[1] * 2
    assert report["compression_ratio"] == pytest.approx(1.0)  # written uncompressed
    assert report["frames_written"] == FRAMES and report["frames_dropped"] == 0
    assert report["missing_frames"] == 0 and report["gaps"] == []
    assert report["interval_source"] == "camera clock"
    assert 0 < report["interval_mean_s"] < 1 and report["interval_jitter_s"] >= 0
    assert report["mean_of_frames"] == 30
    assert report["png"] == str(png)
    assert matplotlib.image.imread(png).shape[:2] == (368, 1200)  # three panels, 80 dpi

    assert main([*args, "--no-png"]) == 0
    text = capsys.readouterr().out
    assert f"{FRAMES} frames of {SENSOR[1]}x{SENSOR[0]} <u2" in text
    assert "gaps       none" in text and "picture" not in text


def test_show_writes_the_picture_where_it_says(
    catalog_dir: Path,
    camera_run: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--png pic` writes pic.png and says so; a path that is no PNG, a directory or where
    nothing can be written is one line, exit 2, not a traceback after the work."""
    args = ["show", camera_run["uid"], "--catalog", str(catalog_dir), "--mean-frames", "2"]
    assert main([*args, "--json", "--png", str(tmp_path / "pic")]) == 0
    assert json.loads(capsys.readouterr().out)["png"] == str(tmp_path / "pic.png")
    assert (tmp_path / "pic.png").stat().st_size > 0
    for png, says in (
        (tmp_path / "pic.txt", "name a .png file"),
        (tmp_path, "is a directory"),
        (Path("/proc/no/pic.png"), "cannot write the picture"),
    ):
        assert main([*args, "--png", str(png)]) == 2
        out, err = capsys.readouterr()
        assert says in err and err.count("\n") == 1, err


def test_file_stats_find_gaps_compression_and_intervals(tmp_path: Path) -> None:
    """A file as the writer leaves it after drops: frame numbers skip, the clock jumps."""
    import hdf5plugin

    numbers = np.array([0, 1, 2, 5, 6, 9])
    times = numbers * 0.01
    frames = np.zeros((len(numbers), 64, 64), np.uint16)  # zeros compress very well
    path = tmp_path / "gappy.h5"
    with h5py.File(path, "w") as f:
        data = layout.create_layout(f, (64, 64), np.uint16, compression=hdf5plugin.Bitshuffle())
        data.resize(len(numbers), axis=0)
        data[...] = frames
        for name, values in ((layout.FRAME_NUMBER, numbers), (layout.TIMESTAMP, times)):
            f[name].resize(layout.METADATA_STEP, axis=0)  # grown ahead, as the writer does
            f[name][: len(values)] = values
        layout.Outcome(frames_written=6, frames_dropped=4, frames_missed=0, complete=True).write(f)

    stats = file_stats(path)
    assert stats.frames == 6 and stats.frame_shape == (64, 64)
    assert stats.gaps == [(3, 4), (7, 8)] and stats.missing_frames == 4
    assert stats.compression_ratio > 10 and stats.filters[0].startswith("bitshuffle")
    np.testing.assert_allclose(stats.intervals, [0.01, 0.01, 0.01])  # consecutive frames
    assert (stats.frames_written, stats.frames_dropped, stats.complete) == (6, 4, True)


def test_file_stats_of_a_file_no_writer_closed_have_no_writer_counts(tmp_path: Path) -> None:
    """A writer killed mid-run leaves its frames but no outcome: the counts are unknown, not
    zero, and the frames are still counted from the file."""
    path = tmp_path / "unclosed.h5"
    with h5py.File(path, "w") as f:
        data = layout.create_layout(f, (8, 8), "<u2")
        data.resize(3, axis=0)
        for name in (layout.FRAME_NUMBER, layout.TIMESTAMP):
            f[name].resize(3, axis=0)
            f[name][:] = np.arange(3)

    stats = file_stats(path)
    assert stats.frames == 3 and stats.gaps == []
    assert stats.frames_written is None and stats.frames_dropped is None
    assert stats.frames_missed is None and stats.complete is None


def test_file_stats_list_every_absent_number_where_writing_ended_early(tmp_path: Path) -> None:
    """A writer that outlived its acquiring process never learnt what the camera missed:
    its counts say nothing lost, yet absent numbers are gaps, not points retaken."""
    path = tmp_path / "early.h5"
    with h5py.File(path, "w") as f:
        data = layout.create_layout(f, (8, 8), "<u2")
        data.resize(3, axis=0)
        for name in (layout.FRAME_NUMBER, layout.TIMESTAMP):
            f[name].resize(3, axis=0)
            f[name][:] = [0, 1, 5]
        layout.Outcome(frames_written=3, frames_dropped=0, frames_missed=0, complete=False).write(f)

    stats = file_stats(path)
    assert stats.gaps == [(2, 4)] and stats.missing_frames == 3 and stats.rewound_frames == 0


def test_databroker_apis_read_the_embedded_catalog(
    catalog_dir: Path, camera_run: dict[str, Any]
) -> None:
    """Legacy analysis code reads our runs through databroker's v1 and v2 APIs, and using
    them leaves the catalog's own (v3) clients as they were."""
    catalog = open_catalog(catalog_dir)
    uid = camera_run["uid"]
    expected = expected_frames(camera_run["driver"], 20)

    header = catalog.v1[uid]
    table = header.table(fill=True)
    images = np.stack(list(table["cam_image"]))
    assert images.shape == (FRAMES, 1, *SENSOR)
    np.testing.assert_array_equal(images[:20, 0], expected)

    run_v2 = catalog.v2[uid]
    np.testing.assert_array_equal(run_v2.primary.read()["cam_image"].values[:20, 0], expected)

    for client in (catalog, open_catalog(catalog_dir)):
        np.testing.assert_array_equal(client[uid]["primary"]["cam_image"][:20, 0], expected)
    assert summarize(catalog[uid]).frames == FRAMES


# ---------------------------------------------------------------------------------------------
# `show` and `sync`, for people


def test_show_averages_exactly_the_frames_asked_for(
    catalog_dir: Path, camera_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["show", camera_run["uid"], "--catalog", str(catalog_dir), "--json"]
    for asked, averaged in ((70, 70), (1000, FRAMES), (0, FRAMES)):  # 300 frames: not a divisor
        assert main([*args, "--png", str(tmp_path / "run.png"), "--mean-frames", str(asked)]) == 0
        assert json.loads(capsys.readouterr().out)["mean_of_frames"] == averaged


def test_constant_frame_intervals_draw_as_one_bar_at_their_value() -> None:
    """A camera clock that never wavers: 99 intervals of 10 ms, give or take a rounding."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ophyd_scmos.cli.catalog import interval_histogram

    intervals = 0.01 + np.arange(99) % 3 * 1e-17  # as np.diff of a float clock gives them
    fig, ax = plt.subplots()
    interval_histogram(ax, intervals, "camera clock")
    fig.canvas.draw()
    assert ax.xaxis.get_offset_text().get_text() == ""  # no "1e-10+1e1"
    (bar,) = ax.patches
    assert bar.get_x() + bar.get_width() / 2 == pytest.approx(10.0)
    assert bar.get_height() == 99
    low, high = ax.get_xlim()
    assert 8 <= low < 10 < high <= 12
    labels = [float(t.get_text().replace("\N{MINUS SIGN}", "-")) for t in ax.get_xticklabels()]
    assert all(low - 1 <= x <= high + 1 for x in labels)  # in ms, readable as they are
    assert "all 10 ms" in ax.get_title()
    plt.close(fig)


def test_show_reports_no_gap_where_a_paused_plan_retook_a_point(
    catalog_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plan pauses after a trigger, before its event: on resume the point's frames are
    cut from the file and taken again, so a frame number is absent but nothing was lost."""
    import bluesky.plan_stubs as bps

    cam = SCMOSCamera(
        name="cam", driver=SimulatedSCMOS(shape=SENSOR, seed=4), write_dir=tmp_path, ring_mb=4
    )
    cam.roi.set((0, 0, 32, 32))
    cam.exposure_time.set(0.001)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(TiledWriter(open_catalog(catalog_dir)))
    paused = []

    def shot(detectors: list[Any]) -> Any:
        yield from bps.trigger(cam, wait=True)
        if len(paused) == 0 and cam.frames_written.get() >= 3:  # the third point
            paused.append(True)
            yield from bps.pause()
        yield from bps.create()
        yield from bps.read(cam)
        yield from bps.save()

    with pytest.raises(RunEngineInterrupted):
        RE(count([cam], num=5, per_shot=shot))
    (uid,) = RE.resume()
    capsys.readouterr()  # the RunEngine's "Pausing..."
    with h5py.File(cam.file_path.get(), "r") as f:
        numbers = f[layout.FRAME_NUMBER][: layout.stored_frames(f)]
    assert len(numbers) == 5 and np.diff(numbers).max() == 2  # one number absent

    assert main(["show", uid, "--catalog", str(catalog_dir), "--json", "--no-png"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gaps"] == [] and report["missing_frames"] == 0
    assert report["rewound_frames"] == 1 and report["frames_dropped"] == 0
    assert main(["show", uid, "--catalog", str(catalog_dir), "--no-png"]) == 0
    assert "gaps       none (1 cut when a paused plan rewound" in capsys.readouterr().out


def test_show_tells_frames_skipped_between_points_from_lost_ones(
    catalog_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In internal trigger mode the camera runs on between a step scan's points and the
    frames between are skipped: absent numbers, but neither lost nor rewound, and the frame
    interval is the camera's, not the time between points."""

    cam = SCMOSCamera(
        name="cam",
        driver=SimulatedSCMOS(shape=SENSOR, seed=4, camera_buffer_frames=DEEP_CAMERA_BUFFER),
        write_dir=tmp_path,
        ring_mb=4,
    )
    cam.roi.set((0, 0, 32, 32))
    cam.exposure_time.set(0.002)
    cam.trigger_mode.set("internal")
    cam.frames_per_point.set(3)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(TiledWriter(open_catalog(catalog_dir)))
    try:
        (uid,) = RE(count([cam], num=3, delay=0.05))
        with h5py.File(cam.file_path.get(), "r") as f:
            numbers = f[layout.FRAME_NUMBER][: layout.stored_frames(f)]
    finally:
        cam.destroy()
    skipped = int(numbers[-1] + 1 - len(numbers))
    assert len(numbers) == 9 and skipped > 0

    assert main(["show", uid, "--catalog", str(catalog_dir), "--json", "--no-png"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gaps"] == [] and report["missing_frames"] == 0
    assert (report["skipped_frames"], report["rewound_frames"]) == (skipped, 0)
    assert report["interval_mean_s"] == pytest.approx(0.002, rel=0.25)
    assert main(["show", uid, "--catalog", str(catalog_dir), "--no-png"]) == 0
    assert f"gaps       none ({skipped} taken between points and skipped" in capsys.readouterr().out


def test_sync_names_a_movie_file_once(
    catalog_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A movie's file holds three of its streams (frames, frame numbers, times): a sync names
    it once, and copies it once. Two movies into one target (a target is a server to start)."""
    from ophyd_scmos.plans import movie

    cam = SCMOSCamera(
        name="cam",
        driver=SimulatedSCMOS(shape=SENSOR, seed=6, camera_buffer_frames=50),
        write_dir=tmp_path,
        ring_mb=4,
    )
    cam.roi.set((0, 0, 32, 32))
    cam.exposure_time.set(0.001)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(TiledWriter(open_catalog(catalog_dir)))
    (uid,) = RE(movie(cam, frames=50))
    path = cam.file_path.get()
    (copied_uid,) = RE(movie(cam, frames=50))
    copied_path = Path(cam.file_path.get())
    cam.destroy()
    open_catalog(tmp_path / "target")  # a catalog to sync into is one already
    sync = ["sync", "--from", str(catalog_dir), "--to", str(tmp_path / "target")]
    assert main([*sync, uid]) == 0
    out = capsys.readouterr().out
    assert out.startswith("copied") and out.count(path) == 1
    copies = tmp_path / "copies"
    assert main([*sync, copied_uid, "--copy-data", str(copies), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["files"] == [str(copies / copied_path.name)] and result["error"] is None


def test_sync_copies_the_file_of_a_run_without_images_and_names_the_copy(
    catalog_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A statistics-only step scan's file (every frame's statistics, numbers and times) is
    named by the camera's configuration only: --copy-data copies it too, and the target's
    run names the copy, where `runs` reads it once the original is archived."""
    cam = SCMOSCamera(
        name="cam", driver=SimulatedSCMOS(shape=SENSOR, seed=6), write_dir=tmp_path / "data"
    )
    cam.roi.set((0, 0, 32, 32))
    cam.exposure_time.set(0.001)
    cam.save_images.set(False)
    cam.frames_per_point.set(3)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(TiledWriter(open_catalog(catalog_dir)))
    try:
        (uid,) = RE(count([cam], num=2))
        path = Path(cam.file_path.get())
    finally:
        cam.destroy()
    target, copies = tmp_path / "target", tmp_path / "copies"
    open_catalog(target)
    sync = ["sync", "--from", str(catalog_dir), "--to", str(target), "--json"]
    assert main([*sync, uid, "--copy-data", str(copies)]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["files"] == [str(copies / path.name)]
    path.rename(tmp_path / "archived.h5")
    descriptor = open_catalog(target)[uid]["primary"].metadata
    assert descriptor["configuration"]["cam"]["data"]["cam_file_path"] == result["files"][0]
    assert main(["runs", "--catalog", str(target), "--json"]) == 0
    (row,) = [row for row in json.loads(capsys.readouterr().out) if row["uid"] == uid]
    assert (row["frames"], row["lost"], row["file"]) == (6, 0, result["files"][0])


def test_sync_goes_on_past_a_half_copied_run_and_a_missing_file(
    catalog_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run the target holds half-copied is left, saying how to mend it; a run whose file is
    gone is not copied with --copy-data and is named unreadable without; the runs after them
    are copied all the same."""
    cam = SCMOSCamera(
        name="cam", driver=SimulatedSCMOS(shape=SENSOR, seed=8), write_dir=tmp_path, ring_mb=4
    )
    cam.roi.set((0, 0, 32, 32))
    RE = RunEngine({}, call_returns_result=False)
    source = open_catalog(catalog_dir)
    RE.subscribe(TiledWriter(source))
    half, gone, fine = (RE(count([cam], num=2))[0] for _ in range(3))
    Path(source[gone]["primary"]["cam_image"].data_sources()[0].assets[0].data_uri[16:]).unlink()
    cam.destroy()
    target_dir = tmp_path / "target"
    TiledWriter(open_catalog(target_dir))("start", source[half].metadata["start"])

    sync = ["sync", "--from", str(catalog_dir), "--to", str(target_dir), half, gone, fine]
    assert main([*sync, "--copy-data", str(tmp_path / "copies")]) == 1
    out = capsys.readouterr().out
    assert f"incomplete {half}" in out and "sync again replacing it" in out
    assert f"missing  {gone}" in out and "no such file to copy" in out
    assert f"copied   {fine}" in out
    target = open_catalog(target_dir)
    assert gone not in target and "stop" not in target[half].metadata
    assert target[fine]["primary"]["cam_image"].read().shape == (2, 1, 32, 32)

    assert main([*sync[:-3], gone]) == 1  # without --copy-data: it points at the lost file
    out = capsys.readouterr().out
    assert f"copied   {gone}" in out and "no such file here either" in out

    assert main([*sync[:-3], half, "--replace-incomplete"]) == 0  # the half copy mended
    assert capsys.readouterr().out.startswith(f"replaced {half}")
    target = open_catalog(target_dir)
    assert target[half].metadata["stop"]["exit_status"] == "success"
    np.testing.assert_array_equal(
        target[half]["primary"]["cam_image"].read(), source[half]["primary"]["cam_image"].read()
    )


class SeenBeforeAnotherSync:
    """A target as a sync saw it just before another sync of the same runs made them there:
    two syncs at once, their race made certain."""

    def __init__(self, target: Any, unseen: set[str]):
        self._target, self._unseen = target, unseen

    def __contains__(self, uid: str) -> bool:
        if uid in self._unseen:
            self._unseen.discard(uid)
            return False
        return uid in self._target

    def __getitem__(self, key: str) -> Any:
        return self._target[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def test_two_syncs_at_once_leave_each_run_to_the_one_that_made_it(
    catalog_dir: Path, tmp_path: Path
) -> None:
    """The second to make a run in the target ended in a 409 Conflict traceback; it says
    whose the run is, and goes on."""
    cam = SCMOSCamera(name="cam", driver=SimulatedSCMOS(shape=SENSOR, seed=8), write_dir=tmp_path)
    cam.roi.set((0, 0, 32, 32))
    RE = RunEngine({}, call_returns_result=False)
    source = open_catalog(catalog_dir)
    RE.subscribe(TiledWriter(source))
    copied, copying, after = (RE(count([cam], num=2))[0] for _ in range(3))
    cam.destroy()
    target = open_catalog(tmp_path / "target")
    sync(source, target, [copied])  # the other sync: done with one run, under way with another
    TiledWriter(target)("start", source[copying].metadata["start"])

    seen = SeenBeforeAnotherSync(target, {copied, copying})
    results = {r.uid: r for r in sync(source, seen, [copied, copying, after])}
    assert (results[copied].status, results[copied].error) == ("present", None)
    assert results[copying].status == "incomplete"
    assert "another sync is copying it" in results[copying].error
    assert results[after].status == "copied"
    assert target[after]["primary"]["cam_image"].read().shape == (2, 1, 32, 32)


def test_sync_copying_a_file_that_does_not_fit_goes_on_leaving_no_part_of_it(
    catalog_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy that fails (a full disk, here a file-size limit) ended sync in a traceback, the
    runs after it not tried, the half copy left under a hidden name. And a file of a name
    near the longest allowed was copied under a longer one, which failed."""
    RE = RunEngine({}, call_returns_result=False)
    source = open_catalog(catalog_dir)
    RE.subscribe(TiledWriter(source))
    uids, files = [], []
    for frames, template in ((40, "big.h5"), (1, "s" * 240 + ".h5")):
        cam = SCMOSCamera(
            name="cam",
            driver=SimulatedSCMOS(shape=SENSOR, seed=1),
            write_dir=tmp_path / "data",
            file_template=template,
        )
        uids.append(RE(count([cam], num=frames))[0])
        files.append(Path(cam.file_path.get()))
        cam.destroy()
    assert files[0].stat().st_size > files[1].stat().st_size
    copies, target_dir = tmp_path / "copies", tmp_path / "target"
    open_catalog(target_dir)
    sync = ["sync", "--from", str(catalog_dir), "--to", str(target_dir), *uids]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (files[1].stat().st_size + 4096, hard))
    try:
        assert main([*sync, "--copy-data", str(copies)]) == 1
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    out = capsys.readouterr().out
    assert f"failed   {uids[0]}" in out and "copying its file failed" in out
    assert f"copied   {uids[1]}" in out
    assert sorted(p.name for p in copies.iterdir()) == [files[1].name]
    assert uids[0] not in open_catalog(target_dir)


def test_sync_copies_no_file_over_another_of_its_name(
    catalog_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two runs' files of one name (two write directories, one template): --copy-data copies
    the first, leaves the second a conflict saying which files (nothing overwritten, nothing
    written to the target), and copies the runs after it all the same."""
    RE = RunEngine({}, call_returns_result=False)
    source = open_catalog(catalog_dir)
    RE.subscribe(TiledWriter(source))
    uids = []
    for seed, folder in enumerate(("one", "two", "three")):
        cam = SCMOSCamera(
            name="cam",
            driver=SimulatedSCMOS(shape=SENSOR, seed=seed),
            write_dir=tmp_path / folder,
            file_template="scan.h5" if folder != "three" else "other.h5",
            ring_mb=4,
        )
        cam.roi.set((0, 0, 32, 32))
        uids.append(RE(count([cam], num=2))[0])
        cam.destroy()
    copies, target_dir = tmp_path / "copies", tmp_path / "target"
    open_catalog(target_dir)
    sync = ["sync", "--from", str(catalog_dir), "--to", str(target_dir), *uids]
    assert main([*sync, "--copy-data", str(copies)]) == 1
    out = capsys.readouterr().out
    assert f"copied   {uids[0]}" in out and f"copied   {uids[2]}" in out
    assert f"conflict {uids[1]}" in out and "exists and differs" in out
    assert str(tmp_path / "two" / "scan.h5") in out
    assert (copies / "scan.h5").read_bytes() == (tmp_path / "one" / "scan.h5").read_bytes()
    target = open_catalog(target_dir)
    assert uids[1] not in target
    np.testing.assert_array_equal(
        target[uids[2]]["primary"]["cam_image"].read(),
        source[uids[2]]["primary"]["cam_image"].read(),
    )


def test_runs_in_a_directory_named_with_spaces_accents_and_percent_signs_replay(
    catalog_dir: Path, tmp_path: Path
) -> None:
    """A file's URI carries its path as it is, as Tiled reads it back: a step scan's frames
    (Resource) and a movie's (StreamResource) replay from such a directory pixel for pixel.
    A directory with '#' or '?', which would end the path in a URI, is refused at stage,
    before anything is made."""
    from ophyd_scmos.plans import movie

    write_dir = tmp_path / "my data ü 50%20off"
    driver = SimulatedSCMOS(shape=SENSOR, seed=4, camera_buffer_frames=20)
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=write_dir, ring_mb=4)
    cam.roi.set((0, 0, 32, 32))
    cam.exposure_time.set(0.001)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(TiledWriter(open_catalog(catalog_dir)))
    try:
        (stepped,) = RE(count([cam], num=3))
        stepped_file = cam.file_path.get()
        (moved,) = RE(movie(cam, frames=20))
        movie_file = cam.file_path.get()
    finally:
        cam.destroy()
    catalog = open_catalog(catalog_dir)
    for uid, path in ((stepped, stepped_file), (moved, movie_file)):
        assert Path(path).parent == write_dir
        images = catalog[uid]["primary"]["cam_image"].read()
        with h5py.File(path, "r") as f:
            np.testing.assert_array_equal(images.reshape(f[layout.DATA].shape), f[layout.DATA])

    for name, char in (("run#1", "#"), ("why?", "?")):
        cam = SCMOSCamera(name="cam", driver=SimulatedSCMOS(), write_dir=tmp_path / name)
        with pytest.raises(ValueError, match=re.escape(f"has {char!r} in it")):
            cam.stage()
        assert not (tmp_path / name).exists()


# ---------------------------------------------------------------------------------------------
# Damaged files


def test_a_truncated_or_moved_file_fails_at_once_naming_it(
    catalog_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tiled reads in SWMR mode, which skips HDF5's end-of-file check: a truncated file read
    as zeros, or hung for minutes. Each read checks the file first."""
    cam = SCMOSCamera(
        name="cam", driver=SimulatedSCMOS(shape=SENSOR, seed=8), write_dir=tmp_path, ring_mb=4
    )
    cam.exposure_time.set(0.001)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(TiledWriter(open_catalog(catalog_dir)))
    (uid,) = RE(count([cam], num=10))
    path = Path(cam.file_path.get())
    images = open_catalog(catalog_dir)[uid]["primary"]["cam_image"]
    show = ["show", uid, "--catalog", str(catalog_dir), "--no-png"]

    os.truncate(path, 8192)
    started = time.monotonic()
    with pytest.raises(UnreadableFile, match=rf"{re.escape(str(path))} is truncated: 8192 bytes"):
        images.read()
    assert time.monotonic() - started < 15  # not the retries of a file being written
    with pytest.raises(UnreadableFile, match="truncated"):
        file_stats(path)
    assert main(show) == 1
    assert f"{path} is truncated" in capsys.readouterr().err

    path.rename(tmp_path / "moved.h5")
    with pytest.raises(MissingFile, match=re.escape(str(path))):
        images[0]
    assert main(show) == 1
    err = capsys.readouterr().err
    assert "no such file" in err and str(path) in err


@pytest.mark.parametrize("locking", [False, None], ids=["unlocked", "locked"])
def test_a_file_open_in_the_serving_process_still_reads(
    locking, catalog_dir: Path, camera_run: dict[str, Any]
) -> None:
    """The process serving the catalog may have a run's file open already: another request's
    check (unlocked), or the user's own h5py beside an in-process catalog (HDF5's default
    locking). HDF5 refuses a second open of a file with other locking, so the catalog's
    open must take the one in force ("file locking flag values don't match")."""
    catalog = open_catalog(catalog_dir, in_process=True)
    with h5py.File(camera_run["file"], "r", locking=locking):
        frames = catalog[camera_run["uid"]]["primary"]["cam_image"][:3]
    np.testing.assert_array_equal(frames[:, 0], expected_frames(camera_run["driver"], 3))


def test_file_stats_of_a_file_still_being_written(tmp_path: Path) -> None:
    """`show` on a run still recording: its file is read as it grows (SWMR), not refused
    with HDF5's advice to clear its flags."""
    from ophyd_scmos.drivers import CameraSettings
    from ophyd_scmos.pipeline import FrameStream

    camera = SimulatedSCMOS(shape=(48, 80), seed=3)
    camera.open()
    camera.configure(CameraSettings(exposure_time=0.001))
    stream = FrameStream(camera, tmp_path / "growing.h5")
    stream.open()
    try:
        camera.software_trigger(5)
        stream.wait(5, timeout=30)
        stats = file_stats(stream.path)
        assert stats.frames == 5 and stats.frame_shape == (48, 80)
        assert stats.complete is None  # no outcome until the writer closes it
    finally:
        stream.close()


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ("/data/catalog", "/data/catalog", True),
        ("/data/catalog", "/data/other", False),
        ("http://localhost:8000/api/v1/metadata/", "http://127.0.0.1:8000/api/v1/metadata/", True),
        ("http://[::1]:8000/api/v1/metadata/", "http://127.0.0.1:8000/api/v1/metadata/", True),
        ("http://localhost:8000/api/v1/metadata/", "http://127.0.0.1:8001/api/v1/metadata/", False),
        (
            "http://localhost:8000/api/v1/metadata/a",
            "http://127.0.0.1:8000/api/v1/metadata/",
            False,
        ),
        (
            "https://localhost:8000/api/v1/metadata/",
            "http://127.0.0.1:8000/api/v1/metadata/",
            False,
        ),
        (
            "http://db.example.org:8000/api/v1/metadata/",
            "http://127.0.0.1:8000/api/v1/metadata/",
            False,
        ),
    ],
)
def test_a_catalog_is_named_alike_by_any_name_of_this_machine(
    one: str, other: str, same: bool
) -> None:
    """A journal's catalog and `recover`'s are one where they are the same server on this
    machine by another name; a directory, another port, node or host is another catalog."""
    from ophyd_scmos.catalog.embedded import same_catalog

    assert same_catalog(one, other) is same
    assert same_catalog(other, one) is same


def test_images_read_from_the_catalog_by_any_index_are_the_files_frames(
    catalog_dir: Path, tmp_path: Path
) -> None:
    """The catalog reads a file's frames in blocks (`hdf5.BLOCK_BYTES`: 64 MB, the file
    opened once for each): three 8 MB frames a point, five points, so blocks of two points.
    Whatever the index, the images are what numpy gives of the file's frames."""
    cam = SCMOSCamera(
        name="cam", driver=SimulatedSCMOS(shape=(2048, 2048), seed=9), write_dir=tmp_path
    )
    cam.exposure_time.set(0.001)
    cam.frames_per_point.set(3)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(TiledWriter(open_catalog(catalog_dir)))
    try:
        (uid,) = RE(count([cam], num=5))
    finally:
        cam.destroy()
    with h5py.File(cam.file_path.get(), "r") as f:
        frames = f[layout.DATA][()].reshape(5, 3, 2048, 2048)
    images = open_catalog(catalog_dir)[uid]["primary"]["cam_image"]
    assert images.shape == frames.shape
    for index in [
        np.s_[:],
        np.s_[4],
        np.s_[-1],
        np.s_[1:4],
        np.s_[::-2],
        np.s_[3:0:-1],
        np.s_[2:2],
        np.s_[1:5:2, 2, 100:110, 7],
        np.s_[-2, :, 2047],
    ]:
        np.testing.assert_array_equal(images[index], frames[index], err_msg=str(index))


def test_sync_keeps_both_events_of_a_point_taken_again_after_a_pause(
    catalog_dir: Path, tmp_path: Path
) -> None:
    """bluesky takes a point again after a pause, with its seq_num; the catalog's export kept
    one event of the two while the images kept both frames: in the copy every later event
    met another point's frames."""
    cam = SCMOSCamera(
        name="cam", driver=SimulatedSCMOS(shape=SENSOR, seed=6), write_dir=tmp_path / "data"
    )
    cam.roi.set((0, 0, 16, 16))
    cam.exposure_time.set(0.001)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(TiledWriter(open_catalog(catalog_dir)))

    def pause_in_the_delay_after_point_3(name: str, doc: dict[str, Any]) -> None:
        if name == "event" and doc["seq_num"] == 3 and not paused:
            paused.append(threading.Timer(0.15, RE.request_pause, kwargs={"defer": False}))
            paused[0].start()

    paused: list[threading.Timer] = []
    RE.subscribe(pause_in_the_delay_after_point_3)
    try:
        with pytest.raises(RunEngineInterrupted):
            RE(count([cam], num=5, delay=0.5))
        (uid,) = RE.resume()
    finally:
        cam.destroy()
    target = tmp_path / "target"
    (result,) = sync(open_catalog(catalog_dir), open_catalog(target), [uid])
    assert result.status == "copied"
    for run in (open_catalog(catalog_dir)[uid], open_catalog(target)[uid]):
        primary = run["primary"]
        assert primary["seq_num"].read().tolist() == [1, 2, 3, 3, 4, 5]
        images = primary["cam_image"].read().astype(float)
        totals = images.reshape(len(images), -1).sum(axis=1)  # each event, its own frame
        np.testing.assert_array_equal(primary["cam_stats_total"].read(), totals)
        assert primary["cam_frame_number"].read().tolist() == list(range(6))


def test_show_counts_frames_lost_after_the_last_frame_written(
    catalog_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A movie whose writer fell behind to its end lost its last frames: no later number marks
    them, and `show` said "gaps none" under their count."""
    from ophyd_scmos.plans import movie

    cam = SCMOSCamera(
        name="cam",
        driver=SimulatedSCMOS(shape=(1024, 1024), seed=6),
        write_dir=tmp_path / "data",
        ring_frames=2,
        write_limit_mb_s=20,  # paced by 64 MB windows: half-megabyte frames fill some
    )
    cam.roi.set((0, 0, 512, 512))
    cam.exposure_time.set(0.001)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(TiledWriter(open_catalog(catalog_dir)))
    try:
        with pytest.warns(RuntimeWarning, match="missed by the camera"):
            (uid,) = RE(movie(cam, frames=400))
        path = cam.file_path.get()
    finally:
        cam.destroy()
    with h5py.File(path, "r") as f:
        numbers = f[layout.FRAME_NUMBER][: layout.stored_frames(f)]
        lost = int(f["/entry"].attrs["frames_missed"] + f["/entry"].attrs["frames_dropped"])
    assert lost > 0 and len(numbers) + lost == 400
    marked = int(numbers[-1]) + 1 - len(numbers)  # absent numbers among those kept
    capsys.readouterr()
    assert main(["show", uid, "--catalog", str(catalog_dir), "--no-png"]) == 0
    assert f"{lost - marked} lost after the last frame written" in capsys.readouterr().out


def counted_runs(
    catalog_dir: Path,
    tmp_path: Path,
    runs: Sequence[tuple[int, int]],
    writer: Callable[[Any], Any] = TiledWriter,
) -> tuple[list[str], list[Path]]:
    """A `count` into the catalog (through `writer`) for each (points, seed) of `runs`, by a
    camera of its own writing into a directory of its own (so their files may share a
    name); their uids and files."""
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(writer(open_catalog(catalog_dir)))
    uids, paths = [], []
    for i, (points, seed) in enumerate(runs):
        cam = SCMOSCamera(
            name="cam", driver=SimulatedSCMOS(shape=SENSOR, seed=seed), write_dir=tmp_path / f"{i}"
        )
        try:
            uids.extend(RE(count([cam], num=points)))
            paths.append(Path(cam.file_path.get()))
        finally:
            cam.destroy()
    return uids, paths


def test_a_shorter_file_put_at_a_runs_path_fails_naming_it(
    catalog_dir: Path, tmp_path: Path
) -> None:
    """Tiled failed to reshape it, naming neither the file nor why."""
    uids, paths = counted_runs(catalog_dir, tmp_path, [(5, 6), (3, 6)])
    paths[1].replace(paths[0])  # a wrong restore: the other run's file at this run's path
    images = open_catalog(catalog_dir)[uids[0]]["primary"]["cam_image"]
    with pytest.raises(UnreadableFile, match=rf"{re.escape(str(paths[0]))} holds 3 frames .* 5"):
        images.read()


def test_show_refuses_a_file_of_another_run_put_at_a_runs_path(
    catalog_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It reads as the run's (same frames, same shape), yet the file says whose it is."""
    uids, paths = counted_runs(catalog_dir, tmp_path, [(3, 6), (3, 7)])
    capsys.readouterr()
    assert main(["show", uids[0], "--catalog", str(catalog_dir), "--no-png"]) == 0
    paths[1].replace(paths[0])  # a wrong restore: the other run's file at this run's path
    assert main(["show", uids[0], "--catalog", str(catalog_dir), "--no-png"]) == 1
    assert f"holds the frames of run {uids[1]}, not of {uids[0]}" in capsys.readouterr().err


def test_the_catalog_refuses_a_file_of_another_run_put_at_a_runs_path(
    catalog_dir: Path, tmp_path: Path
) -> None:
    """Same frame count, same shape: it replayed as the run's. An image that CatalogWriter
    made names its run, which the file records."""
    uids, paths = counted_runs(catalog_dir, tmp_path, [(3, 6), (3, 7)], CatalogWriter)
    images = open_catalog(catalog_dir)[uids[0]]["primary"]["cam_image"]
    assert images.metadata[IMAGE_RUN] == uids[0]
    before = images.read()
    paths[1].replace(paths[0])  # a wrong restore: the other run's file at this run's path
    wrong = f"{re.escape(str(paths[0]))} holds the frames of run {uids[1]}, not of {uids[0]}"
    with pytest.raises(UnreadableFile, match=wrong):
        images.read()
    assert before.shape == (3, 1, *SENSOR)


def test_the_catalog_refuses_two_cameras_files_of_one_run_swapped(
    catalog_dir: Path, tmp_path: Path
) -> None:
    """Same run, same frames and shape: each replayed as the other's. The file says which
    camera wrote it."""
    cams = [
        SCMOSCamera(name=name, driver=SimulatedSCMOS(shape=SENSOR, seed=seed), write_dir=tmp_path)
        for seed, name in enumerate(("cama", "camb"))
    ]
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(CatalogWriter(open_catalog(catalog_dir)))
    try:
        (uid,) = RE(count(cams, num=2))
        a, b = (Path(cam.file_path.get()) for cam in cams)
    finally:
        for cam in cams:
            cam.destroy()
    run = open_catalog(catalog_dir)[uid]["primary"]
    run["cama_image"].read()
    a.rename(tmp_path / "swap.h5")
    b.rename(a)
    (tmp_path / "swap.h5").rename(b)
    with pytest.raises(
        UnreadableFile,
        match=rf"{re.escape(str(a))} holds the frames of camera "
        "camb, not of cama",
    ):
        run["cama_image"].read()


def test_a_catalog_directory_moved_reads_its_runs_columns(tmp_path: Path) -> None:
    """Its database named the event tables by their absolute path: moved, every column
    failed to read (and `sync` from it crashed); copied, the copy read the original's."""
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(TiledWriter(open_catalog(tmp_path / "lab")))
    cam = SCMOSCamera(
        name="cam", driver=SimulatedSCMOS(shape=SENSOR, seed=6), write_dir=tmp_path / "data"
    )
    try:
        (uid,) = RE(count([cam], num=3))
    finally:
        cam.destroy()
    shutil.copytree(tmp_path / "lab", tmp_path / "copy")
    (tmp_path / "lab").rename(tmp_path / "moved")
    for where in ("moved", "copy"):
        primary = open_catalog(tmp_path / where)[uid]["primary"]
        assert primary["cam_frame_number"].read().tolist() == [0, 1, 2]
        totals = primary["cam_image"].read().reshape(3, -1).sum(axis=1)
        np.testing.assert_array_equal(primary["cam_stats_total"].read(), totals)


def test_show_of_a_run_still_recording_says_so(
    catalog_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not that its writer never closed its file, as for a run whose process died."""
    cam = SCMOSCamera(name="cam", driver=SimulatedSCMOS(shape=SENSOR, seed=3), write_dir=tmp_path)
    cam.exposure_time.set(0.001)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(CatalogWriter(open_catalog(catalog_dir), interval=0.05))
    started: list[str] = []
    RE.subscribe(lambda name, doc: started.append(doc["uid"]), "start")
    shown: list[str] = []

    @bpp.stage_decorator([cam])
    @bpp.run_decorator()
    def plan():
        for _ in range(3):
            yield from bps.trigger_and_read([cam])
        yield from bps.sleep(0.3)  # the catalog writer's next batch
        capsys.readouterr()
        assert main(["show", started[0], "--catalog", str(catalog_dir), "--no-png"]) == 0
        shown.append(capsys.readouterr().out)

    RE(plan())
    assert "running" in shown[0] and "the run is still recording" in shown[0]
    assert "not closed by its writer" not in shown[0]
