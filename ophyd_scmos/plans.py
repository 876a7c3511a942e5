"""Plans for a camera that runs faster than one event per frame."""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import FailedStatus, Msg

from ophyd_scmos.device import SCMOSCamera


def movie(
    *cams: SCMOSCamera,
    frames: int | None = None,
    seconds: float | None = None,
    stream: str = "primary",
    page_every: float = 0.5,
    md: dict[str, Any] | None = None,
) -> Generator[Msg, Any, str]:
    """Record free-running cameras at full rate for `frames` frames or `seconds` seconds.

    One run; one file (and one writer process) per camera. One camera's frames are the rows
    of `stream`; with several cameras each has a stream of its own, ``<stream>_<camera>``,
    as each takes its own number of frames (a stream's columns all have one length). While
    the cameras run, a StreamDatum page of each is collected every `page_every` seconds, so
    a catalog written by `CatalogWriter` sees the movie grow. Every frame's time on its
    camera's clock (``<cam>_frame_time``) and on the computer's (``<cam>_host_time``, one
    clock for all cameras) are columns, so frames of several cameras can be matched. Each
    camera is put in internal trigger mode (unless it is in external mode) and given back as
    it was.

    However the movie ends (its frames taken, `RE.stop()` or `RE.abort()` after a pause,
    a writer that died), the cameras are stopped and every frame their files hold is
    collected into the run before it closes.
    """
    if not cams:
        raise ValueError("movie needs at least one camera")
    if len({cam.name for cam in cams}) < len(cams):
        raise ValueError(f"movie's cameras must have distinct names: {[c.name for c in cams]}")
    if not (frames or seconds):
        raise ValueError("movie needs frames= or seconds=")
    if frames is not None and frames < 1 or seconds is not None and not seconds > 0:
        raise ValueError(f"frames must be >= 1 and seconds > 0; got {frames=}, {seconds=}")
    before = {
        sig: sig.get() for cam in cams for sig in (cam.trigger_mode, cam.num_frames, cam.duration)
    }
    settings: dict[Any, Any] = {}
    for cam in cams:
        mode = before[cam.trigger_mode]
        settings[cam.trigger_mode] = mode if mode == "external" else "internal"
        settings[cam.num_frames] = frames or 0
        settings[cam.duration] = float(seconds or 0)
    metadata = {
        "plan_name": "movie",
        "detectors": [cam.name for cam in cams],
        "plan_args": {"frames": frames, "seconds": seconds},
        "num_points": frames,
        **(md or {}),
    }

    streams = {cam.name: stream if len(cams) == 1 else f"{stream}_{cam.name}" for cam in cams}

    @bpp.stage_decorator(cams)
    @bpp.run_decorator(md=metadata)
    def record():
        for cam in cams:
            yield from bps.declare_stream(cam, name=streams[cam.name], collect=True)
        yield from bpp.finalize_wrapper(fly(), collect_every_frame())

    def fly():
        for cam in cams:
            yield from bps.kickoff(cam, group="kickoff")
        yield from bps.wait(group="kickoff")
        movies = []
        for cam in cams:
            movies.append((yield from bps.complete(cam, group="movie", wait=False)))
        # Waiting (not sleeping) lets RE.waiting_hook show progress bars; the last page is
        # `collect_every_frame`'s. A pause cancels a wait, and bluesky forgets its group with
        # it: resumed (the cameras recorded on), the movies' own statuses say when it ends.
        while True:
            done = yield from bps.wait(group="movie", timeout=page_every, error_on_timeout=False)
            if done and all(movie.done for movie in movies):
                break
            if done:
                yield from bps.sleep(page_every)
            yield from collect()
        for movie in movies:  # a failure the forgotten group's wait did not raise
            if not movie.success:
                raise FailedStatus(movie) from movie.exception()

    def collect():
        for cam in cams:
            yield from bps.collect(cam, name=streams[cam.name])

    def collect_every_frame():
        """The last page of each camera once all its frames are in its file, whatever ended
        the movie: a stopped camera's `complete` waits for the frames on their way."""
        for cam in cams:
            yield from bps.stop(cam)
        for cam in cams:
            with contextlib.suppress(Exception):  # a failure is already on its way out
                yield from bps.complete(cam, wait=True)
        yield from collect()

    for sig, value in settings.items():
        yield from bps.abs_set(sig, value)
    for cam in cams:  # given back at unstage, which the RunEngine does even on RE.halt()
        cam.restore_at_unstage({sig: before[sig] for sig in settings if sig.parent is cam})
    return (yield from record())
