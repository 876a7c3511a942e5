"""Plans for a camera that runs faster than one event per frame."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import Msg

from ophyd_scmos.device import SCMOSCamera


def movie(
    cam: SCMOSCamera,
    *,
    frames: int | None = None,
    seconds: float | None = None,
    stream: str = "primary",
    page_every: float = 0.5,
    md: dict[str, Any] | None = None,
) -> Generator[Msg, Any, str]:
    """Record a free-running camera at full rate for `frames` frames or `seconds` seconds.

    One run, one file; while the camera runs, a StreamDatum page is collected every
    `page_every` seconds, so a catalog sees the movie grow. The camera is put in internal
    trigger mode (unless it is in external mode) and given back as it was.
    """
    if not (frames or seconds):
        raise ValueError("movie needs frames= or seconds=")
    if frames is not None and frames < 1 or seconds is not None and not seconds > 0:
        raise ValueError(f"frames must be >= 1 and seconds > 0; got {frames=}, {seconds=}")
    before = {sig: sig.get() for sig in (cam.trigger_mode, cam.num_frames, cam.duration)}
    mode = before[cam.trigger_mode]
    settings = {
        cam.trigger_mode: mode if mode == "external" else "internal",
        cam.num_frames: frames or 0,
        cam.duration: float(seconds or 0),
    }
    metadata = {
        "plan_name": "movie",
        "detectors": [cam.name],
        "plan_args": {"frames": frames, "seconds": seconds},
        "num_points": frames,
        **(md or {}),
    }

    @bpp.stage_decorator([cam])
    @bpp.run_decorator(md=metadata)
    def record():
        yield from bps.declare_stream(cam, name=stream, collect=True)
        yield from bps.kickoff(cam, wait=True)
        yield from bps.complete(cam, group="movie", wait=False)
        done = False
        while not done:  # waiting (not sleeping) lets RE.waiting_hook show progress bars
            done = yield from bps.wait(group="movie", timeout=page_every, error_on_timeout=False)
            yield from bps.collect(cam, name=stream)

    def restore():
        for sig, value in before.items():
            yield from bps.abs_set(sig, value)

    for sig, value in settings.items():
        yield from bps.abs_set(sig, value)
    return (yield from bpp.finalize_wrapper(record(), restore()))
