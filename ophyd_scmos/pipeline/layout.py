"""Where things live in our HDF5 files: one NeXus entry, frames on axis 0.

`/entry/data/data` is what areaDetector's HDF5 plugin writes and what the AD_HDF5 handler and
Tiled read; the NeXus attributes let generic viewers (silx, h5web) show the images.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

ENTRY = "/entry"
DATA_GROUP = "/entry/data"
DATA = "/entry/data/data"
FRAME_NUMBER = "/entry/data/frame_number"
TIMESTAMP = "/entry/data/timestamp"
HOST_TIMESTAMP = "/entry/data/host_timestamp"
METADATA_STEP = 4096  #: per-frame metadata datasets grow in chunks of this many frames


def create_layout(
    f: h5py.File,
    frame_shape: tuple[int, int],
    dtype: np.dtype | str,
    *,
    compression: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> h5py.Dataset:
    """Make the entry with empty, growable datasets and return the frame dataset.

    `compression` is keyword arguments for `create_dataset` (e.g. an hdf5plugin filter).
    """
    entry = f.create_group(ENTRY)
    entry.attrs["NX_class"] = "NXentry"
    entry.attrs["default"] = "data"
    group = f.create_group(DATA_GROUP)
    group.attrs["NX_class"] = "NXdata"
    group.attrs["signal"] = "data"
    data = group.create_dataset(
        "data",
        shape=(0, *frame_shape),
        maxshape=(None, *frame_shape),
        chunks=(1, *frame_shape),
        dtype=dtype,
        **dict(compression or {}),
    )
    data.attrs["interpretation"] = "image"
    for name, dt, units in (
        ("frame_number", np.int64, None),
        ("timestamp", np.float64, "s"),
        ("host_timestamp", np.float64, "s"),
    ):
        ds = group.create_dataset(
            name, shape=(0,), maxshape=(None,), chunks=(METADATA_STEP,), dtype=dt
        )
        if units:
            ds.attrs["units"] = units
    f[TIMESTAMP].attrs["long_name"] = "camera timestamp since acquisition start"
    f[HOST_TIMESTAMP].attrs["long_name"] = "host UNIX time when the frame reached the ring"
    for key, value in (attrs or {}).items():
        entry.attrs[key] = value
    return data
