"""What a camera's events may hold. Catalogs (Tiled with bluesky-tiled-plugins) read a
stream's images as the camera file's frames in order, from the first: an event whose frames
are not the next ones of the one stream of the one run the file serves would be read as
other frames, silently. Such an event is refused before it is emitted, saying why."""

from __future__ import annotations

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
import pytest
from ophyd.sim import motor

from ophyd_scmos import CatalogWriter, open_catalog


def staged_run(cam, body):
    @bpp.stage_decorator([cam])
    @bpp.run_decorator()
    def plan():
        yield from body()

    return plan()


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
