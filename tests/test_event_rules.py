"""What a camera's events may hold. Catalogs (Tiled with bluesky-tiled-plugins) read a
stream's images as the camera file's frames in order, from the first: an event whose frames
are not the next ones of the one stream of the one run the file serves would be read as
other frames, silently. Such an event is refused before it is emitted, saying why."""

from __future__ import annotations

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import count
from bluesky.utils import RunEngineInterrupted
from event_model import DocumentNames
from ophyd.sim import motor

from ophyd_scmos import CatalogWriter, open_catalog


def staged_run(cam, body):
    @bpp.stage_decorator([cam])
    @bpp.run_decorator()
    def plan():
        yield from body()

    return plan()


def paused_after_one_point(cam, RE) -> None:
    """A run of two points of `cam`, paused after its first (the camera staged, its file
    open)."""

    def body():
        yield from bps.trigger_and_read([cam])
        yield from bps.checkpoint()
        yield from bps.pause()
        yield from bps.trigger_and_read([cam])

    with pytest.raises(RunEngineInterrupted):
        RE(staged_run(cam, body))


def test_a_second_stream_is_refused_and_the_first_reads_its_own_frames(cam, driver, RE, tmp_path):
    def body():
        yield from bps.trigger_and_read([cam], name="dark")
        yield from bps.trigger_and_read([cam], name="dark")
        yield from bps.trigger_and_read([cam, motor])

    catalog = open_catalog(tmp_path / "catalog")
    RE.subscribe(CatalogWriter(catalog))
    with pytest.raises(RuntimeError, match="cam's frames went to stream 'dark' of this run, an"):
        RE(staged_run(cam, body))
    run = catalog[-1]
    assert run.metadata["stop"]["exit_status"] == "fail"
    assert list(run) == ["dark"]  # no event of "primary" reached the catalog
    images = run["dark"]["cam_image"].read()
    np.testing.assert_array_equal(images[:, 0], [driver.expected_frame(k) for k in (0, 1)])


def test_a_staging_serves_one_run(cam, RE, recorder):
    def two_runs():
        for _ in range(2):
            yield from bpp.run_wrapper(bps.trigger_and_read([cam]))

    with pytest.raises(RuntimeError, match="cam was staged once for two runs"):
        RE(bpp.stage_wrapper(two_runs(), [cam]))
    first, second = recorder.of("stop")
    assert first["exit_status"] == "success" and second["exit_status"] == "fail"
    assert len(recorder.of("event")) == 1


def read_unstaged(cam):
    yield from bps.create()
    yield from bps.read(cam)
    yield from bps.save()


def two_points(cam):
    yield from bps.trigger_and_read([cam])
    yield from bps.trigger_and_read([cam])


def read_twice(cam):
    yield from bps.trigger_and_read([cam])
    yield from read_unstaged(cam)


def trigger_twice(cam):
    yield from bps.trigger(cam, wait=True)
    yield from bps.trigger_and_read([cam])


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (read_unstaged, "no trigger since it was staged for this run"),
        (two_points, None),  # each event its own trigger: recorded
        (read_twice, "no trigger since its last event"),
        (trigger_twice, "triggered 2 times since its last event"),
    ],
)
def test_an_event_holds_the_frames_of_the_one_trigger_before_it(cam, RE, recorder, body, says):
    if says is None:
        RE(staged_run(cam, lambda: body(cam)))
        assert [e["data"]["cam_frame_number"] for e in recorder.of("event")] == [0, 1]
        return
    with pytest.raises(RuntimeError, match=says):
        RE(staged_run(cam, lambda: body(cam)))
    events = recorder.of("event")
    datums = {d["datum_id"]: d for d in recorder.of("datum")}
    points = [datums[e["data"]["cam_image"]]["datum_kwargs"]["point_number"] for e in events]
    assert points == list(range(len(points)))  # every event emitted holds its own rows


def test_a_camera_monitored_says_what_to_monitor_instead(cam, RE):
    def nothing():
        yield from bps.null()

    with pytest.raises(ValueError, match=r"cam cannot be monitored: .* \(cam.frames_written\)"):
        RE(bpp.monitor_during_wrapper(bpp.run_wrapper(nothing()), [cam]))


def test_a_read_before_the_trigger_completed_is_refused(cam, RE, recorder):
    """bps.trigger does not wait by default: read at once, the event would hold the last
    point's statistics and frame number beside a datum of frames not yet in the file."""
    cam.exposure_time.set(0.2)

    def body():
        yield from bps.trigger(cam)
        yield from bps.create()
        yield from bps.read(cam)
        yield from bps.save()

    with pytest.raises(RuntimeError, match="cam was read before its trigger completed"):
        RE(staged_run(cam, body))
    assert recorder.of("event") == []
    assert recorder.of("stop")[0]["exit_status"] == "fail"


def test_the_image_is_read_with_its_camera_only(cam, RE, recorder):
    """Read alone, cam.image would put a datum id in an event with no document describing
    its frames (the camera's reading collects them), and the run would not keep them."""

    def body():
        yield from bps.trigger(cam, wait=True)
        yield from bps.create()
        yield from bps.read(cam.image)
        yield from bps.save()

    with pytest.raises(RuntimeError, match=r"cam_image is read with its camera \(cam\)"):
        RE(staged_run(cam, body))
    assert recorder.of("event") == []
    assert cam.image.get() != ""  # its value is there to see, as any signal's


def test_a_step_scans_camera_collected_says_collect_is_for_movies(cam, RE, recorder):
    """Collected like a movie, a step scan's camera would point stream rows at the frames
    its events point at too (bluesky asserted on its description, saying nothing of why)."""

    def body():
        yield from bps.trigger_and_read([cam])
        yield from bps.collect(cam)

    with pytest.raises(RuntimeError, match=r"cam is staged for a step scan .* movie\(cam, ...\)"):
        RE(staged_run(cam, body))
    assert len(recorder.of("event")) == 1 and recorder.of("stream_datum") == []
    assert recorder.of("stop")[0]["exit_status"] == "fail"


def test_staged_again_within_a_run_the_camera_reads_alike(cam, driver, RE, recorder, tmp_path):
    """A plan may unstage and stage its camera between points (each staging a file of its
    own); staged again with other frames_per_point, its events would no longer be what the
    run's descriptor says: refused, before any file is made. Alike, the run replays."""
    catalog = open_catalog(tmp_path / "catalog")
    RE.subscribe(CatalogWriter(catalog))

    def restaged(change):
        @bpp.run_decorator()
        def plan():
            for _ in range(2):
                yield from bps.stage(cam)
                yield from bps.trigger_and_read([cam])
                yield from bps.unstage(cam)
                yield from change()

        return plan()

    def nothing():
        yield from bps.null()

    RE(restaged(nothing))
    images = catalog[-1]["primary"]["cam_image"].read()
    numbers = [event["data"]["cam_frame_number"] for event in recorder.of("event")]
    np.testing.assert_array_equal(images[:, 0], [driver.expected_frame(n) for n in numbers])

    def two_frames_per_point():
        yield from bps.mv(cam.frames_per_point, 2)

    files = set((tmp_path / "data").iterdir())
    with pytest.raises(ValueError, match=r"cam was staged again within run .*cam_image"):
        RE(restaged(two_frames_per_point))
    assert len(set((tmp_path / "data").iterdir()) - files) == 1  # the first staging's file
    assert len(recorder.of("event")) == 3

    # The configuration is recorded once too: a longer exposure's frames were recorded as
    # taken with the first; a region moved, its statistics were of other pixels.
    cam.frames_per_point.set(1)

    def longer_exposure():
        yield from bps.mv(cam.exposure_time, 2 * cam.exposure_time.get())

    def region_moved():
        cam.rois["spot"] = (1, 1, 4, 4)
        yield from bps.null()

    cam.rois["spot"] = (0, 0, 4, 4)
    changes = ((longer_exposure, r"\(cam_exposure_time\)"), (region_moved, r"\(cam_regions\)"))
    for change, says in changes:
        with pytest.raises(ValueError, match=r"cam was staged again within run .*" + says):
            RE(restaged(change))


def test_another_engine_refused_the_camera_leaves_the_paused_run_its_file(cam, RE, recorder):
    """bluesky's stage_wrapper unstages the camera its refused stage did not stage: the
    camera stays the paused run's, which resumes into its file."""

    paused_after_one_point(cam, RE)
    other = RunEngine({}, call_returns_result=False)
    with (
        pytest.raises(RuntimeError, match="cam is already staged"),
        pytest.warns(RuntimeWarning, match="cam was not unstaged: another RunEngine staged it"),
    ):
        other(count([cam]))
    RE.resume()
    assert recorder.of("stop")[0]["exit_status"] == "success"
    numbers = [event["data"]["cam_frame_number"] for event in recorder.of("event")]
    assert numbers == [0, 1] and cam.frames_written.get() == 2


def test_a_refusal_is_what_the_run_reports_whatever_follows(cam, RE, recorder):
    """A camera in a baseline is refused as a primary reading too; the baseline's last
    reading is refused again, and the run still says why it was refused first."""
    with pytest.raises(RuntimeError, match="cam's frames went to stream 'baseline'"):
        RE(bpp.baseline_wrapper(count([cam]), [cam]))
    assert "cam's frames went to stream 'baseline'" in recorder.of("stop")[0]["reason"]


def test_a_checkpoint_after_the_trigger_says_why_resume_finds_no_trigger(cam, RE):
    """Resumed, a plan goes back to its last checkpoint; the camera cuts the frames of the
    point whose event never came, for the plan to take them again. A checkpoint between the
    trigger and the read never takes them again: the refusal says so."""

    def body():
        yield from bps.trigger(cam, wait=True)
        yield from bps.checkpoint()
        yield from bps.pause()
        yield from bps.create()
        yield from bps.read(cam)
        yield from bps.save()

    with pytest.raises(RunEngineInterrupted):
        RE(staged_run(cam, body))
    assert RE.state == "paused"
    with pytest.raises(RuntimeError, match="put the checkpoint before the trigger"):
        RE.resume()


def test_the_runengine_holds_no_bound_method_of_the_cameras(cam, RE):
    """bluesky drops a dead bound method from its registry in whichever thread collects its
    object, which races its own subscribing (a KeyError in `_remove_proxy`): the camera's
    listener to saved events is a function the registry holds, reaching it weakly."""
    registry = RE.dispatcher.cb_registry.callbacks
    before = dict(registry.get(DocumentNames.event, {}))
    held = {}

    def plan():
        yield from bps.stage(cam)
        held.update(registry.get(DocumentNames.event, {}))
        yield from bps.unstage(cam)

    RE(plan())
    added = [proxy for cid, proxy in held.items() if cid not in before]
    assert len(added) == 1 and added[0].inst is None  # a function, held strongly
    assert registry.get(DocumentNames.event, {}).keys() == before.keys()  # unstaged: gone


def test_another_engines_refused_trigger_leaves_the_paused_run_its_points(cam, RE, recorder):
    """Triggered from a second RunEngine's run (no stage there), the camera counted that
    point into the paused run's, which failed when it resumed."""

    paused_after_one_point(cam, RE)

    @bpp.run_decorator()
    def quick_look():
        yield from bps.trigger_and_read([cam])

    other = RunEngine({}, call_returns_result=False)
    with pytest.raises(RuntimeError, match="cam is staged by another RunEngine"):
        other(quick_look())
    RE.resume()
    assert recorder.of("stop")[0]["exit_status"] == "success"
    numbers = [event["data"]["cam_frame_number"] for event in recorder.of("event")]
    assert numbers == [0, 1] and cam.frames_written.get() == 2
