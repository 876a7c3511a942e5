"""`RE(count([cam], num))` through a real camera stack, replayed from the catalog.

Both test stacks make frame k of a fresh camera a pure function of k and the settings (the
DemoCamera's waves advance a phase per frame; the fake GigE camera draws a ramp from the frame
id, which starts at the same value in every new fake camera process). So the tests compare the
replay, frame for frame, with the first `num` frames a fresh camera serves when read through
the stack directly, without ophyd-scmos.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from bluesky import RunEngine
from bluesky.plans import count
from bluesky_tiled_plugins import TiledWriter

from ophyd_scmos import SCMOSCamera, open_catalog
from ophyd_scmos.drivers import CameraDriver
from ophyd_scmos.pipeline import layout


def count_and_replay(
    driver: CameraDriver, tmp_path: Path, num: int, **settings: object
) -> tuple[np.ndarray, np.ndarray, float]:
    """Run count(num) into an embedded catalog; return (frames replayed from the catalog as
    (num, H, W), frame numbers from the file, events per second)."""
    import time

    cam = SCMOSCamera(name="cam", driver=driver, write_dir=tmp_path / "data", ring_mb=16)
    for name, value in settings.items():
        getattr(cam, name).set(value)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(TiledWriter(open_catalog(tmp_path / "catalog")))
    t = time.perf_counter()
    uids = RE(count([cam], num=num))
    assert isinstance(uids, tuple)  # call_returns_result=False: the run uids
    (uid,) = uids
    rate = num / (time.perf_counter() - t)
    frames = open_catalog(tmp_path / "catalog")[uid]["primary"]["cam_image"].read()
    assert frames.shape == (num, 1, *driver.frame_shape)
    assert cam.frames_dropped.get() == 0 and cam.frames_missed.get() == 0
    with h5py.File(cam.file_path.get(), "r") as f:
        numbers = f[layout.FRAME_NUMBER][()]
    return np.asarray(frames[:, 0]), numbers, rate
