"""Plans for a camera that runs faster than one event per frame."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import Msg

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

    One run; one file (and one writer process) per camera. While the cameras run, a
    StreamDatum page of each is collected every `page_every` seconds, so a catalog sees the
    movie grow. Every frame's time on its camera's clock (``<cam>_frame_time``) and on the
    computer's (``<cam>_host_time``, one clock for all cameras) are columns of the stream,
    so frames of several cameras can be matched. Each camera is put in internal trigger mode
    (unless it is in external mode) and given back as it was.
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

    @bpp.stage_decorator(cams)
    @bpp.run_decorator(md=metadata)
    def record():
        yield from bps.declare_stream(*cams, name=stream, collect=True)
        for cam in cams:
            yield from bps.kickoff(cam, group="kickoff")
        yield from bps.wait(group="kickoff")
        for cam in cams:
            yield from bps.complete(cam, group="movie", wait=False)
        done = False
        while not done:  # waiting (not sleeping) lets RE.waiting_hook show progress bars
            done = yield from bps.wait(group="movie", timeout=page_every, error_on_timeout=False)
            yield from bps.collect(*cams, name=stream)

    def restore():
        for sig, value in before.items():
            yield from bps.abs_set(sig, value)

    for sig, value in settings.items():
        yield from bps.abs_set(sig, value)
    return (yield from bpp.finalize_wrapper(record(), restore()))
