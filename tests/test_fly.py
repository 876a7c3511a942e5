"""Full-rate acquisition: fly scans, bursts per point, trigger modes, progress."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import h5py
import numpy as np
import pytest
from bluesky.callbacks.best_effort import BestEffortCallback  # noqa: F401 - import check
from bluesky.plans import count
from bluesky.utils import FailedStatus, RunEngineInterrupted
from bluesky_tiled_plugins import TiledWriter

from ophyd_scmos import CatalogWriter, SCMOSCamera, SimulatedSCMOS, open_catalog
from ophyd_scmos.drivers import CameraError
from ophyd_scmos.pipeline import layout
from ophyd_scmos.pipeline import stream as stream_module
from ophyd_scmos.pipeline.options import PipelineOptions
from ophyd_scmos.pipeline.stream import StreamError
from ophyd_scmos.plans import movie
from tests.conftest import expected_frames


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("catalog")


@pytest.fixture
def tiled(RE, catalog_dir):
    RE.subscribe(TiledWriter(open_catalog(catalog_dir)))
    return lambda uid: open_catalog(catalog_dir)[uid]


def only_uid(recorder) -> str:
    (start,) = recorder.of("start")
    return start["uid"]


def test_movie_records_every_frame_in_order_and_replays_from_tiled(tmp_path, RE, recorder, tiled):
    # 1000 frames/s with on-camera memory for the whole movie (PCO and Hamamatsu cameras hold
    # gigabytes): a loaded CI machine may stall the reader for seconds without losing frames.
    driver = SimulatedSCMOS(shape=(256, 320), seed=7, camera_buffer_frames=5000)
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path, ring_mb=16)
    cam.roi.set((32, 16, 96, 64))
    cam.exposure_time.set(0.001)
    RE(movie(cam, frames=5000, page_every=0.2))
    assert cam.frames_missed.get() == 0 and cam.frames_dropped.get() == 0
    assert len(recorder.of("stream_datum")) > 3  # pages while the camera ran
    run = tiled(only_uid(recorder))["primary"]
    images = run["cam_image"].read()
    numbers = run["cam_frame_number"].read()
    times = run["cam_frame_time"].read()
    assert images.shape == (5000, 64, 96)
    assert numbers[0] == 0  # the camera starts at kickoff: no frames skipped before the first
    np.testing.assert_array_equal(np.diff(numbers), 1)  # no gaps
    assert np.all(np.diff(times) > 0)
    for i in range(5000):
        np.testing.assert_array_equal(images[i], driver.expected_frame(int(numbers[i])))
    assert cam.trigger_mode.get() == "software"  # given back as it was


def test_movie_for_a_duration_stops_on_time(cam, RE, recorder):
    cam.exposure_time.set(0.002)
    cam.acquire_period.set(0.01)  # 100 frames/s
    RE(movie(cam, seconds=1.0))
    with h5py.File(cam.file_path.get(), "r") as f:
        frames = f[layout.DATA].shape[0]
    assert 20 <= frames <= 400  # about 100 (fewer where a loaded machine lags): the clock ended it


def _movie_rows(recorder, key: str) -> list[tuple[int, int]]:
    """The [start, stop) row ranges of `key` that the run's StreamDatums claim, in order."""
    resources = {doc["uid"]: doc["data_key"] for doc in recorder.of("stream_resource")}
    return [
        (doc["indices"]["start"], doc["indices"]["stop"])
        for doc in recorder.of("stream_datum")
        if resources[doc["stream_resource"]] == key
    ]


def _file_frames(cam) -> int:
    with h5py.File(cam.file_path.get(), "r") as f:
        return f[layout.DATA].shape[0]


def pause_once_under_way(RE) -> None:
    """Request a pause, as Ctrl-C does, once a movie's first page is out."""
    under_way = threading.Event()
    RE.subscribe(lambda name, doc: under_way.set(), "stream_datum")

    def pause_when_under_way():
        under_way.wait(30)
        RE.request_pause(defer=False)

    threading.Thread(target=pause_when_under_way, daemon=True).start()


@pytest.mark.parametrize("how", ["stop", "abort"])
def test_a_paused_movie_ended_by_stop_or_abort_keeps_every_frame_of_its_file(
    cam, driver, RE, recorder, how
):
    """A movie's camera runs on through a pause; ending the run then (Ctrl-C twice, then
    RE.stop() or RE.abort()) stops it and collects every frame its file holds."""
    cam.acquire_period.set(0.004)
    pause_once_under_way(RE)
    with pytest.raises(RunEngineInterrupted):
        RE(movie(cam, seconds=30, page_every=0.1))
    at_pause = sum(stop - start for start, stop in _movie_rows(recorder, "cam_image"))
    time.sleep(0.3)  # the camera records on while the run is paused
    getattr(RE, how)()
    (stop,) = recorder.of("stop")
    assert stop["exit_status"] == ("success" if how == "stop" else "abort")
    frames = _file_frames(cam)
    assert frames > at_pause > 0
    for key in ("cam_image", "cam_frame_number", "cam_stats_total"):
        rows = _movie_rows(recorder, key)
        assert rows[0][0] == 0 and rows[-1][1] == frames, key
        assert all(a[1] == b[0] for a, b in itertools.pairwise(rows)), f"{key}: contiguous"
    assert cam.trigger_mode.get() == "software"  # given back as it was


def test_a_paused_movie_halted_gives_the_camera_its_settings_back(cam, driver, RE):
    """RE.halt() closes the plan with no chance to clean up: the movie's trigger mode and
    frame count stayed, and the next count took frames between its triggers (internal mode)
    without a word. The RunEngine unstages the camera even then, and the settings go back."""
    cam.acquire_period.set(0.004)
    pause_once_under_way(RE)
    with pytest.raises(RunEngineInterrupted):
        RE(movie(cam, frames=100_000, page_every=0.1))
    RE.halt()
    assert (cam.trigger_mode.get(), cam.num_frames.get(), cam.duration.get()) == ("software", 0, 0)
    RE(count([cam], num=3))
    with h5py.File(cam.file_path.get(), "r") as f:
        np.testing.assert_array_equal(f[layout.FRAME_NUMBER][()], [0, 1, 2])
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(driver, 3))


def test_a_paused_movie_resumed_records_every_frame_asked(cam, driver, RE, recorder):
    """Resumed, the movie goes on from where it was (its camera recorded on through the
    pause), not from its checkpoint (a second kickoff), until all its frames are taken."""
    cam.acquire_period.set(0.004)
    pause_once_under_way(RE)
    with pytest.raises(RunEngineInterrupted):
        RE(movie(cam, frames=300, page_every=0.1))
    time.sleep(0.3)
    RE.resume()
    (stop,) = recorder.of("stop")
    assert stop["exit_status"] == "success" and stop["num_events"] == {"primary": 300}
    assert _file_frames(cam) == 300
    rows = _movie_rows(recorder, "cam_image")
    assert rows[0][0] == 0 and rows[-1][1] == 300
    assert all(a[1] == b[0] for a, b in itertools.pairwise(rows)), "contiguous"


# Frames the camera takes while the writer's death is noticed are missed, and warned about.
@pytest.mark.filterwarnings("ignore:.*missed by the camera:RuntimeWarning")
def test_a_writer_killed_mid_movie_leaves_every_flushed_frame_in_the_run(cam, RE, recorder):
    """The writer dies between two pages: the frames it flushed before are in the file, and
    the run, failing with the writer's error, still collects them all."""
    cam.acquire_period.set(0.004)

    def kill_writer_after_two_pages(name, doc):
        if len(recorder.of("stream_datum")) == 2 * len(cam.describe_collect()):
            collected = doc["indices"]["stop"]
            deadline = time.monotonic() + 10
            while cam.get_index() < collected + 20 and time.monotonic() < deadline:
                time.sleep(0.01)  # frames flushed since the page: no page claims them yet
            os.kill(cam._writer.pid, signal.SIGKILL)

    RE.subscribe(kill_writer_after_two_pages, "stream_datum")
    with pytest.raises(Exception, match="FrameStatus|died"):
        RE(movie(cam, seconds=30, page_every=0.1))
    frames = _file_frames(cam)
    (stop,) = recorder.of("stop")
    assert stop["exit_status"] == "fail"
    rows = _movie_rows(recorder, "cam_image")
    assert frames >= rows[1][1] + 20 and rows[-1][1] == frames
    with h5py.File(cam.file_path.get(), "r") as f:
        assert not f["/entry"].attrs["complete"]


@pytest.mark.parametrize("images", [True, False], ids=["images", "statistics-only"])
def test_every_page_of_a_movie_points_only_at_statistics_in_the_file(cam, RE, images):
    """The writer stores statistics less often than it flushes frames: a page (the last
    one too, after the camera stopped) claims only rows the file holds when it is sent."""
    cam.rois["spot"] = (10, 10, 5, 5)
    cam.save_images.set(images)
    cam.acquire_period.set(0.005)  # 1.5 s: pages while the camera runs, and a last one
    resources, pages = {}, []

    def check(name, doc):
        if name == "stream_resource":
            resources[doc["uid"]] = doc["data_key"]
        elif name == "stream_datum" and resources[doc["stream_resource"]] == "cam_spot_total":
            with h5py.File(cam.file_path.get(), "r", swmr=True) as f:
                rows = f[layout.stats_path("spot", "total")].shape[0]
            pages.append((doc["indices"]["stop"], rows))

    RE.subscribe(check)
    RE(movie(cam, frames=300, page_every=0.05))
    assert len(pages) >= 2 and pages[-1][0] == 300
    assert all(stop <= rows for stop, rows in pages), pages


def test_kickoff_complete_collect_stubs_with_a_declared_stream(cam, driver, RE, recorder):
    cam.trigger_mode.set("internal")
    cam.acquire_period.set(0.005)  # 200 frames/s: no frame missed even on a loaded machine
    cam.num_frames.set(300)

    @bpp.run_decorator()
    def plan():
        yield from bps.declare_stream(cam, name="primary", collect=True)
        yield from bps.kickoff(cam, wait=True)
        yield from bps.complete(cam, wait=True)
        yield from bps.collect(cam, name="primary")

    RE(plan())  # kickoff stages the camera itself, complete closes the file
    assert cam.frames_missed.get() == 0
    (datum, *_) = recorder.of("stream_datum")
    assert datum["indices"] == {"start": 0, "stop": 300}
    with h5py.File(cam.file_path.get(), "r") as f:
        assert f[layout.DATA].shape[0] == 300
    assert cam._staged.name == "no"


def test_bluesky_fly_needs_a_declared_stream(cam, RE):
    """bp.fly predates declared streams; the README shows movie() instead."""
    cam.trigger_mode.set("internal")
    cam.num_frames.set(10)
    with pytest.raises(AssertionError, match="pre-declared"):
        RE(bp.fly([cam]))


def test_external_trigger_records_exactly_the_fired_frames(cam, driver, RE, recorder):
    cam.trigger_mode.set("external")
    cam.num_frames.set(40)
    firing = threading.Event()

    def pulse_train():  # a delay generator driving the trigger input
        firing.wait(10)
        for _ in range(40):
            driver.fire()
            time.sleep(0.002)

    threading.Thread(target=pulse_train, daemon=True).start()

    def start_pulses_once_armed(msg):
        if msg.command == "complete":  # kickoff is done: the camera records what comes
            firing.set()

    RE.msg_hook = start_pulses_once_armed
    RE(movie(cam, frames=40))
    with h5py.File(cam.file_path.get(), "r") as f:
        np.testing.assert_array_equal(f[layout.FRAME_NUMBER][()], np.arange(40))
        np.testing.assert_array_equal(f[layout.DATA][39], driver.expected_frame(39))


def test_bursts_per_point_replay_as_k_frames_from_tiled(cam, driver, RE, recorder, tiled):
    cam.frames_per_point.set(4)
    RE(count([cam], num=6))
    images = tiled(only_uid(recorder))["primary"]["cam_image"].read()
    assert images.shape == (6, 4, 64, 96)
    np.testing.assert_array_equal(
        images.reshape(24, 64, 96), np.stack([driver.expected_frame(k) for k in range(24)])
    )


@pytest.mark.parametrize("k", [1, 3])
def test_stream_documents_for_count_replay_from_tiled(driver, tmp_path, RE, recorder, tiled, k):
    cam = SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path, asset_docs="stream", ring_mb=4)
    cam.roi.set((0, 0, 96, 64))
    cam.exposure_time.set(0.001)
    cam.frames_per_point.set(k)
    RE(count([cam], num=5))
    (descriptor,) = recorder.of("descriptor")
    key = descriptor["data_keys"]["cam_image"]
    assert key["external"] == "STREAM:"
    assert key["shape"] == ([64, 96] if k == 1 else [k, 64, 96])
    assert "cam_image" not in recorder.of("event")[0]["data"]
    images = tiled(only_uid(recorder))["primary"]["cam_image"].read()
    assert images.shape == ((5, 64, 96) if k == 1 else (5, k, 64, 96))
    np.testing.assert_array_equal(
        images.reshape(5 * k, 64, 96), np.stack([driver.expected_frame(j) for j in range(5 * k)])
    )


def test_internal_mode_count_skips_frames_between_triggers(cam, driver, RE, recorder):
    cam.trigger_mode.set("internal")
    cam.exposure_time.set(0.001)
    cam.frames_per_point.set(2)
    RE(bp.count([cam], num=10, delay=0.05))
    numbers = [e["data"]["cam_frame_number"] for e in recorder.of("event")]
    assert numbers[0] == 0  # the camera starts free-running at the first trigger
    assert all(b - a > 2 for a, b in zip(numbers, numbers[1:], strict=False))  # skipped between
    with h5py.File(cam.file_path.get(), "r") as f:
        recorded = f[layout.FRAME_NUMBER][()]
        assert recorded.shape == (20,)
        np.testing.assert_array_equal(recorded[::2], numbers)
        np.testing.assert_array_equal(recorded[1::2], np.array(numbers) + 1)  # bursts stay whole
        np.testing.assert_array_equal(f[layout.DATA][5], driver.expected_frame(recorded[5]))


def test_statuses_report_progress_to_watchers(cam, RE):
    seen: list[dict] = []

    def waiting_hook(statuses):
        for status in statuses or ():  # as bluesky's ProgressBarManager does
            if hasattr(status, "watch"):
                status.watch(lambda **kw: seen.append(kw))

    RE.waiting_hook = waiting_hook
    cam.exposure_time.set(0.0005)
    RE(movie(cam, frames=2000, page_every=0.05))
    progress = [kw for kw in seen if kw.get("target") == 2000]
    assert progress, "the complete status said nothing"
    currents = [kw["current"] for kw in progress]
    assert currents == sorted(currents)
    assert currents[-1] == 2000 and progress[-1]["fraction"] == 0
    assert {kw["unit"] for kw in progress} == {"frames"}


class UnpluggedMidMovie(SimulatedSCMOS):
    """A camera unplugged after its 30th frame: reading and setting it fail from then on."""

    gone = False

    def read_into(self, out, timeout):
        if self.gone:
            raise CameraError("camera unplugged")
        info = super().read_into(out, timeout)
        self.gone = info.frame_number >= 29
        return info

    def configure(self, settings):
        if self.gone:
            raise ValueError("camera refused the settings: no such device")
        super().configure(settings)


def test_a_camera_lost_mid_movie_fails_it_saying_so_and_keeps_its_frames(tmp_path, RE, recorder):
    """The movie fails with the camera's error, not with the camera refusing its settings
    back (which only warns); its last page points at every frame the file keeps (the writer
    flushes only when asked here: the frames taken were still on their way), and the file,
    closed with every frame, says it ended early."""
    cam = SCMOSCamera(
        name="cam",
        driver=UnpluggedMidMovie(shape=(256, 320), seed=7),
        write_dir=tmp_path / "data",
        options=PipelineOptions(ring_mb=4, flush_interval=30),
    )
    try:
        with (
            pytest.warns(UserWarning, match="cam_trigger_mode was not set back"),
            pytest.raises(Exception) as info,
        ):
            RE(movie(cam, frames=1000))
        assert "camera failed: camera unplugged" in repr(info.value) + repr(info.value.__cause__)
        (stop,) = recorder.of("stop")
        assert stop["exit_status"] == "fail" and "camera unplugged" in stop["reason"]
        assert _movie_rows(recorder, "cam_image")[-1][1] == 30
        with h5py.File(cam.file_path.get(), "r") as f:
            outcome = layout.Outcome.read(f)
        assert outcome is not None and not outcome.complete and outcome.frames_written == 30
        assert outcome.error.startswith("camera failed: camera unplugged")
        assert outcome.run == recorder.of("start")[0]["uid"]  # recover finds its run by it
    finally:
        cam.destroy()


class SilentAfter(SimulatedSCMOS):
    """A camera that stops sending after `frames` frames and says nothing (restarted: it
    answers, but has forgotten the stream)."""

    def __init__(self, frames: int, **kwargs):
        super().__init__(**kwargs)
        self.frames, self.sent = frames, 0

    def read_into(self, out, timeout):
        if self.sent >= self.frames:
            time.sleep(timeout)
            raise TimeoutError
        info = super().read_into(out, timeout)
        self.sent += 1
        return info


def _silent_camera(tmp_path, frames: int) -> SCMOSCamera:
    driver = SilentAfter(frames, shape=(64, 64), seed=7)
    return SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path / "data", ring_mb=4)


@pytest.mark.parametrize("plan", ["count", "movie"])
def test_a_camera_that_stops_sending_fails_the_run_keeping_its_frames(
    plan, tmp_path, RE, recorder, monkeypatch
):
    """Frames owed and none for the silence limit (shortened here): the run fails saying
    the camera stopped sending, not a wait for ever; the file keeps the frames taken."""
    monkeypatch.setattr(stream_module, "SILENCE_SECONDS", 0.5)
    cam = _silent_camera(tmp_path, 30)
    try:
        cam.exposure_time.set(0.002)
        with pytest.raises(Exception) as info:
            if plan == "count":
                RE(count([cam], num=100))
            else:
                cam.acquire_period.set(0.005)
                RE(movie(cam, frames=1000))
        assert "the camera sent no frame for" in repr(info.value) + repr(info.value.__cause__)
        assert recorder.of("stop")[0]["exit_status"] == "fail"
        with h5py.File(cam.file_path.get(), "r") as f:
            outcome = layout.Outcome.read(f)
        assert outcome is not None and not outcome.complete and outcome.frames_written == 30
    finally:
        cam.destroy()


def test_a_step_scan_may_wait_between_points_longer_than_the_silence_limit(
    cam, RE, recorder, monkeypatch
):
    """A camera asked for no frame owes none: a count with a delay (or a slow motor, or a
    slow stop) longer than the limit failed, its file marked failed, every frame taken."""
    monkeypatch.setattr(stream_module, "SILENCE_SECONDS", 0.3)
    RE(count([cam], num=3, delay=1.0))
    assert recorder.of("stop")[0]["exit_status"] == "success"
    with h5py.File(cam.file_path.get(), "r") as f:
        outcome = layout.Outcome.read(f)
    assert outcome is not None and outcome.complete and outcome.frames_written == 3


def test_a_timed_movie_whose_camera_fell_silent_before_its_end_fails(tmp_path, RE, recorder):
    """Its time is up before the silence limit: a free-running camera silent for its last
    second sent the movie none of that second's frames, and the movie says so."""
    cam = _silent_camera(tmp_path, 30)
    try:
        cam.exposure_time.set(0.002)
        cam.acquire_period.set(0.01)
        with pytest.raises(Exception) as info:
            RE(movie(cam, seconds=2))
        assert "the camera sent no frame for" in repr(info.value) + repr(info.value.__cause__)
        assert recorder.of("stop")[0]["exit_status"] == "fail"
        assert _movie_rows(recorder, "cam_image")[-1][1] == 30
    finally:
        cam.destroy()


@pytest.mark.filterwarnings("ignore:.*(missed by the camera|dropped):RuntimeWarning")
@pytest.mark.parametrize("overflow", ["block", "drop"])
def test_a_timed_movie_whose_writer_falls_behind_counts_every_frame_of_its_time(
    tmp_path, RE, recorder, overflow
):
    """The writer held back (a bandwidth cap paces 64 MB windows) past the movie's end: the
    camera, not read while the ring was full, was taken for silent and failed the movie,
    and the frames it took meanwhile were counted nowhere."""
    cam = SCMOSCamera(
        name="cam",
        driver=SimulatedSCMOS(shape=(2048, 2048), seed=3),
        write_dir=tmp_path,
        ring_frames=8,
        overflow=overflow,
        write_limit_mb_s=16,  # the first 64 MB window is written, then held until 4 s
    )
    try:
        cam.roi.set((0, 0, 256, 256))  # 128 kB a frame
        cam.exposure_time.set(0.001)  # 1000 frames/s: 2000 frames, 250 MB, in the movie's 2 s
        RE(movie(cam, seconds=2.0))
        assert recorder.of("stop")[0]["exit_status"] == "success"
        with h5py.File(cam.file_path.get(), "r") as f:
            outcome = layout.Outcome.read(f)
            last = int(f[layout.FRAME_NUMBER][layout.stored_frames(f) - 1])
        assert outcome is not None and outcome.complete
        taken = outcome.frames_written + outcome.frames_missed + outcome.frames_dropped
        assert taken > outcome.frames_written  # some lost, and counted
        assert last + 1 <= taken  # every frame up to the last one written is counted
        assert 1998 <= taken <= 2030  # the movie's time's (a few more before its clock began)
    finally:
        cam.destroy()


@pytest.mark.parametrize("how", ["stop", "abort"])
def test_a_writer_that_dies_while_a_movie_is_paused_fails_its_stop_or_abort(cam, RE, how):
    """The movie's status took the error while the plan waited on nothing (paused): a stop
    or abort then ended the run without a word, the frames after the last flush gone."""
    cam.acquire_period.set(0.005)
    kicked_off = threading.Event()
    RE.msg_hook = lambda msg: kicked_off.set() if msg.command == "kickoff" else None

    def pause_once_recording() -> None:
        kicked_off.wait(30)
        time.sleep(0.5)
        RE.request_pause(defer=False)

    threading.Thread(target=pause_once_recording).start()
    with pytest.raises(RunEngineInterrupted):
        RE(movie(cam, frames=100_000))
    RE.msg_hook = None
    os.kill(cam._writer.pid, signal.SIGKILL)
    assert cam._writer.ended.wait(10)
    # The writer's error itself, or the movie's status failed by it (as the RunEngine saw it)
    with pytest.raises(
        (StreamError, FailedStatus), match=r"died with exit code -9\. .* holds the first \d+"
    ):
        getattr(RE, how)()
    assert cam.trigger_mode.get() == "software"  # the movie's settings given back


def test_a_movie_collected_into_two_streams_is_refused(cam, driver, RE, tmp_path):
    """Each stream would read the file's frames from the first: the second collect is
    refused, and the first stream holds the frames it was given, each its own."""
    catalog = open_catalog(tmp_path / "catalog")
    RE.subscribe(CatalogWriter(catalog))
    cam.trigger_mode.set("internal")
    cam.acquire_period.set(0.005)
    cam.num_frames.set(300)

    @bpp.stage_decorator([cam])
    @bpp.run_decorator()
    def plan():
        yield from bps.declare_stream(cam, name="early", collect=True)
        yield from bps.declare_stream(cam, name="late", collect=True)
        yield from bps.kickoff(cam, wait=True)
        yield from bps.sleep(1.0)  # some frames in the file, more to come
        yield from bps.collect(cam, name="early")
        yield from bps.complete(cam, wait=True)
        yield from bps.collect(cam, name="late")

    with (
        pytest.raises(RuntimeError, match="collected into stream 'early' of this run, and now"),
        pytest.warns(RuntimeWarning, match="were never collected into the run"),
    ):
        RE(plan())
    run = catalog[-1]
    assert run.metadata["stop"]["exit_status"] == "fail" and list(run["late"]) == []
    numbers = run["early"]["cam_frame_number"].read()
    assert 0 < len(numbers) < 300
    np.testing.assert_array_equal(
        run["early"]["cam_image"].read(), [driver.expected_frame(int(n)) for n in numbers]
    )


def test_a_second_kickoff_in_one_staging_is_refused(cam, RE, recorder):
    """complete() ends a staging's movie (its camera stops): a second kickoff would record
    nothing and the run would end well."""
    cam.trigger_mode.set("internal")
    cam.num_frames.set(10)

    @bpp.stage_decorator([cam])
    @bpp.run_decorator()
    def plan():
        yield from bps.declare_stream(cam, name="primary", collect=True)
        for _ in range(2):
            yield from bps.kickoff(cam, wait=True)
            yield from bps.complete(cam, wait=True)
            yield from bps.collect(cam, name="primary")

    with pytest.raises(RuntimeError, match="cam was kicked off already in this staging"):
        RE(plan())
    assert recorder.of("stream_datum")[0]["indices"] == {"start": 0, "stop": 10}


def test_frames_recorded_after_the_last_collect_are_told(cam, RE, recorder):
    """A plan that never calls complete: the camera records until it is unstaged, after
    the run closed, and the frames after its last collect are in the file only."""
    cam.trigger_mode.set("internal")
    cam.acquire_period.set(0.005)

    @bpp.stage_decorator([cam])
    @bpp.run_decorator()
    def plan():
        yield from bps.declare_stream(cam, name="primary", collect=True)
        yield from bps.kickoff(cam, wait=True)
        yield from bps.sleep(0.3)
        yield from bps.collect(cam, name="primary")

    with pytest.warns(RuntimeWarning, match=r"cam: \d+ of the \d+ frames in .* were never col"):
        RE(plan())
    pages = recorder.of("stream_datum")
    collected = max((datum["indices"]["stop"] for datum in pages), default=0)
    with h5py.File(cam.file_path.get(), "r") as f:
        assert f[layout.DATA].shape[0] > collected


def test_a_movie_that_records_no_frame_says_so(cam, RE):
    cam.trigger_mode.set("internal")
    cam.acquire_period.set(2.0)  # the first frame 2 s after the start
    with pytest.warns(RuntimeWarning, match="cam recorded no frame"):
        RE(movie(cam, seconds=0.1))
    assert cam.frames_written.get() == 0
