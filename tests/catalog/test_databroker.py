"""databroker's own catalog (databroker[all]: its MongoDB layout, here on mongomock, served by
Tiled in-process) replays our runs through the v2 `BlueskyRun` API and v1's `get_images`,
with area-detector-handlers' AD_HDF5 handler found by entry point.

(The v1 ``header.table(fill=True)`` path on the same catalog is in tests/test_device.py.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import databroker.v2
import numpy as np
import pytest
from bluesky.plans import count

from tests.conftest import expected_frames


@pytest.fixture
def catalog() -> Iterator[Any]:
    """databroker's temporary catalog, closed after the test: its in-process server thread
    would outlive it, and a child forked later (multiprocessing's default on Linux) would
    wait for that thread at exit, forever."""
    catalog = databroker.v2.temp()
    yield catalog
    catalog.context.close()


def test_databroker_catalog_replays_frames_through_v2_and_get_images(
    catalog, cam, driver, RE, recorder
) -> None:
    RE.subscribe(catalog.v1.insert)
    cam.frames_per_point.set(2)
    RE(count([cam], num=12))
    uid = recorder.of("start")[0]["uid"]
    frames = expected_frames(driver, 24).reshape(12, 2, 64, 96)

    run = catalog[uid]
    assert type(run).__name__.startswith("BlueskyRun")
    dataset = run.primary.read()
    np.testing.assert_array_equal(dataset["cam_image"].values, frames)
    lazy = run["primary"]["data"]["cam_image"]  # sliced on the server, one event here
    np.testing.assert_array_equal(lazy[11], frames[11])
    assert [name for name, _ in run.documents(fill=False)][:3] == [
        "start",
        "descriptor",
        "resource",
    ]

    db = catalog.v1
    images = db.get_images(db[uid], "cam_image")
    assert len(images) == 12
    np.testing.assert_array_equal(np.asarray(images[7]), frames[7])
