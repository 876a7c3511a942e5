"""Plans: bluesky's (`count`, `bp.scan`, ...), a movie at the camera's full rate
(`movie(cam, seconds=10)`, `movie(cam, frames=5000)`), and dark frames (`darks`)."""

import bluesky.plan_stubs as bps
import bluesky.plans as bp  # noqa: F401 - for the session
import bluesky.preprocessors as bpp
from bluesky.plans import count

from ophyd_scmos.plans import movie  # noqa: F401 - for the session


def darks(cam, num=100, *, shutter=None, closed="close", covered=False, md=None):
    """Record `num` dark frames with the camera's current settings, as a run marked
    ``frame_type="dark"``, so analysis finds the darks that match a run's exposure and ROI
    (``from tiled.queries import Eq; catalog.search(Eq("frame_type", "dark"))``).

    The light must be kept off the sensor, and no bundled driver works a shutter (the
    simulated camera has none: its scene stays in its frames). Either pass the lab's
    shutter as an ophyd device, `shutter`, which is set to `closed` for the run and back to
    where it was afterwards, even if the run fails; or cover the camera yourself and say
    so with ``covered=True``.
    """
    if shutter is None and not covered:
        raise ValueError(
            f"darks: {cam.name} has no shutter this session can close ({cam.driver.model}); "
            "pass shutter=<your shutter device>, or cover the camera and pass covered=True"
        )
    metadata = {
        "frame_type": "dark",
        "dark_method": "covered" if shutter is None else f"shutter {shutter.name}",
        **(md or {}),
    }
    plan = count([cam], num=num, md=metadata)
    if shutter is None:
        return (yield from plan)
    before = yield from bps.rd(shutter)
    yield from bps.mv(shutter, closed)
    return (yield from bpp.finalize_wrapper(plan, bps.mv(shutter, before)))
