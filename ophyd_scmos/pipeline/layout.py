"""The one owner of our HDF5 file format: one NeXus entry, frames on axis 0, an outcome.

`/entry/data/data` is what areaDetector's HDF5 plugin writes and what the AD_HDF5 handler and
Tiled read; the NeXus attributes let generic viewers (silx, h5web) show the images. Each
frame's statistics (see `stats`) grow beside the frames under `/entry/stats`. A file made
without images (statistics only) has no `/entry/data/data`: `/entry/data` then holds only
each frame's number and timestamps, and its statistics count its frames. When a file is
closed, `/entry` records how its writing ended (`Outcome`): the writer, the stream
that recovers a dead writer's file, `ophyd-scmos recover` and the catalog's file statistics
all go through this module to write or read it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import h5py
import numpy as np

from ophyd_scmos.pipeline import stats

ENTRY = "/entry"
DATA_GROUP = "/entry/data"
DATA = "/entry/data/data"
FRAME_NUMBER = "/entry/data/frame_number"
TIMESTAMP = "/entry/data/timestamp"
HOST_TIMESTAMP = "/entry/data/host_timestamp"
STATS_GROUP = "/entry/stats"  #: per-frame statistics: <group>/<region>/<stat>, one row a frame
METADATA_STEP = 4096  #: per-frame metadata datasets are stored in chunks of this many frames


def create_layout(
    f: h5py.File,
    frame_shape: tuple[int, int],
    dtype: np.dtype | str,
    *,
    compression: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    images: bool = True,
) -> h5py.Dataset | None:
    """Make the entry with empty, growable datasets and return the frame dataset (None
    without `images`: the frames' numbers and timestamps are then all `/entry/data` holds,
    an NXcollection, since NeXus's NXdata needs a signal).

    `compression` is keyword arguments for `create_dataset` (e.g. an hdf5plugin filter).
    """
    entry = f.create_group(ENTRY)
    entry.attrs["NX_class"] = "NXentry"
    group = f.create_group(DATA_GROUP)
    data = None
    if images:
        # NeXus's chain to the plottable data, which viewers (h5web, silx) follow from the root
        f.attrs["NX_class"] = "NXroot"
        f.attrs["default"] = ENTRY.strip("/")
        entry.attrs["default"] = "data"
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
    else:
        group.attrs["NX_class"] = "NXcollection"
    create_columns(group, ["frame_number"], np.int64)
    for column in create_columns(group, ["timestamp", "host_timestamp"], np.float64):
        column.attrs["units"] = "s"
    f[TIMESTAMP].attrs["long_name"] = (
        "camera clock (its zero is the camera's: its start or power-up); host_timestamp is the "
        "absolute time"
    )
    f[HOST_TIMESTAMP].attrs["long_name"] = "host UNIX time when the frame reached the ring"
    for key, value in (attrs or {}).items():
        entry.attrs[key] = value
    return data


def stats_path(region: str, stat: str) -> str:
    """Where a region's statistic is stored, one value per frame (the whole frame's region
    is `stats.FRAME`)."""
    return f"{STATS_GROUP}/{region}/{stat}"


def create_stats(
    f: h5py.File, frame_shape: tuple[int, int], regions: Mapping[str, stats.Region]
) -> list[h5py.Dataset]:
    """Make the empty, growable statistics datasets, the whole frame's first, then each
    region's, each in `stats.STATS` order: the order of `stats.compute`'s values. Each
    region's group records its (x, y, width, height) in frame pixels."""
    group = f.create_group(STATS_GROUP)
    group.attrs["NX_class"] = "NXcollection"
    rows, cols = frame_shape
    datasets = []
    for name, region in {stats.FRAME: (0, 0, cols, rows), **regions}.items():
        region_group = group.create_group(name)
        region_group.attrs["NX_class"] = "NXcollection"
        region_group.attrs["region"] = list(region)
        datasets += create_columns(region_group, stats.STATS, np.float64)
    return datasets


def create_columns(group: h5py.Group, names: Iterable[str], dtype: type) -> list[h5py.Dataset]:
    """Empty 1-D datasets of `dtype` that grow in chunks of METADATA_STEP values, as h5py's
    ``create_dataset(name, shape=(0,), maxshape=(None,), chunks=(METADATA_STEP,))`` makes
    them, from one property list: h5py derives one for each (~50 us a dataset, at every
    run's start; a region's statistics are nine)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk((METADATA_STEP,))
    dcpl.set_obj_track_times(False)
    space = h5py.h5s.create_simple((0,), (h5py.h5s.UNLIMITED,))
    tid = h5py.h5t.py_create(np.dtype(dtype), logical=True)
    return [
        h5py.Dataset(h5py.h5d.create(group.id, name.encode(), tid, space, dcpl=dcpl))
        for name in names
    ]


@dataclass(frozen=True)
class Outcome:
    """How a file's writing ended, kept as attributes of `/entry` once the file is closed.

    Attributes cannot be created while a file is in SWMR mode, so a file whose writer never
    closed it has none: `read` then returns None.
    """

    frames_written: int  #: frames the file holds
    frames_dropped: int  #: read from the camera but discarded (ring full, `drop` policy)
    frames_missed: int  #: lost by the camera itself
    complete: bool  #: False when writing ended early (writer killed, disk full, camera lost)
    error: str | None = None  #: why it ended early, where known
    end_time: float | None = None  #: UNIX time the outcome was recorded
    #: the run (its start's uid) the frames are of, where the camera was told before the
    #: file closed: `recover` finds the run by it, wherever the file was moved
    run: str | None = None

    def write(self, f: h5py.File) -> None:
        entry = f[ENTRY]
        for key, value in asdict(self).items():
            if key == "end_time":
                value = time.time() if value is None else value
            if value is None:
                entry.attrs.pop(key, None)
            else:
                entry.attrs[key] = value

    def store(self, path: str | os.PathLike) -> None:
        """Write it into the closed file at `path` (attributes cannot be created in SWMR
        mode). Without HDF5's file lock, which a SWMR reader still following the file holds
        (the documented way to follow a run): the lock would refuse this."""
        with h5py.File(path, "r+", locking=False) as f:
            self.write(f)

    @classmethod
    def read(cls, f: h5py.File) -> Outcome | None:
        attrs = f[ENTRY].attrs
        if "complete" not in attrs:
            return None

        def get(key: str) -> Any:
            value = attrs.get(key)
            return value.item() if hasattr(value, "item") else value

        return cls(
            frames_written=int(get("frames_written")),
            frames_dropped=int(get("frames_dropped")),
            frames_missed=int(get("frames_missed")),
            complete=bool(get("complete")),
            error=get("error"),
            end_time=get("end_time"),
            run=get("run"),
        )


def measured_frames(f: h5py.File) -> int | None:
    """Frames whose statistics the file holds; None in a file without statistics."""
    path = stats_path(stats.FRAME, "total")
    return f[path].shape[0] if path in f else None


def stored_frames(f: h5py.File) -> int:
    """Frames the file records (0 if it has none yet): those its frame dataset holds, or in
    a file without images, those whose statistics it holds. Statistics reach the file up to
    a flush interval after the frames' numbers and timestamps: a killed writer may leave a
    few frames numbered but without statistics, and those are not counted."""
    path = DATA if DATA in f else stats_path(stats.FRAME, "total")
    return f[path].shape[0] if path in f else 0
