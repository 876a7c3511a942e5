"""The adapter our catalogs read HDF5 files with: Tiled's own, once the file is checked.

Tiled opens a run's file in SWMR mode (its documents ask for it, so that a run is readable
while it is written). A file being written holds more frames than the catalog has been told
of so far, and Tiled reshapes only a file of the catalog's rank that grew (a step scan's
images are (points, frames per point, rows, columns) over the file's (frames, rows,
columns)): the adapter serves the frames the catalog names, as Tiled would. SWMR also
skips HDF5's end-of-file check: a truncated file then reads as
zero-filled frames, or hangs for minutes retrying its lost metadata. Every read first checks
the file (`check_readable`), so a damaged, missing or moved file fails at once, with its path
and what is wrong. Loaded by Tiled's server (embedded or `ophyd-scmos serve`), never by the
`ophyd_scmos.catalog` package itself: it imports Tiled.

Tiled reads a file's dataset one HDF5 chunk at a time, opening the file for each: our files
keep a frame per chunk, so a run of 10,000 frames read whole opened its file 10,000 times
(~50 MB/s here). The adapter reads it in blocks of frames (`BLOCK_BYTES`), the file opened
once for each; a read of one frame still reads that frame only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import dask.array
import numpy as np
from tiled.adapters.hdf5 import HDF5Adapter, HDF5ArrayAdapter, h5open
from tiled.utils import path_from_uri

from ophyd_scmos.catalog.summary import IMAGE_RUN
from ophyd_scmos.pipeline.recovery import UnreadableFile, check_readable, open_unlocked

__all__ = ["CheckedHDF5Adapter"]

IMAGE = "_image"  #: how a camera's image key ends: ``<camera>_image``

#: a file's frames are read at most this many bytes of them at once, the file opened once
BLOCK_BYTES = 64 << 20


class CheckedHDF5Adapter(HDF5Adapter):
    """Tiled's `HDF5Adapter`, refusing a file that is missing, shorter than HDF5 recorded or
    damaged, and serving no frame the catalog does not name; a file no writer holds is read
    without SWMR, which would retry a damaged part for minutes, and without HDF5's file lock
    (readers need none: the writer writes in SWMR mode)."""

    @classmethod
    def from_catalog(cls, data_source: Any, node: Any, /, **parameters: Any) -> Any:
        being_written = False
        paths = []
        run = (node.metadata_ or {}).get(IMAGE_RUN)  #: the run its file must record, if any
        # and the camera (`<camera>_image`), where this package registered the image
        camera = node.key.removesuffix(IMAGE) if run and node.key.endswith(IMAGE) else None
        for asset in data_source.assets:
            if asset.data_uri.startswith("file:"):
                paths.append(path_from_uri(asset.data_uri))
                superblock = check_readable(paths[-1], run, camera)
                being_written = being_written or superblock.open_for_writing
        if not being_written:
            parameters["swmr"] = False
        # Unlocked (whatever the documents ask), as `check_readable` opens it, maybe at this
        # moment for another request.
        opener = super(CheckedHDF5Adapter, cls).from_catalog
        opened: dict[str, Any] = {}

        def open_with(locking: bool | None) -> Any:
            opened.update(parameters, locking=locking)
            return opener(data_source, node, **opened)

        adapter = open_unlocked(open_with)
        if isinstance(adapter, HDF5ArrayAdapter):
            array, shape = adapter._array, tuple(data_source.structure.shape)
            frames = None
            if len(paths) == 1 and not (opened.get("slice") or opened.get("squeeze")):
                frames = _Frames.of(paths[0], opened, array, shape)
                if frames is None and not being_written:
                    _refuse_fewer_frames(paths[0], array, shape)
            if frames is not None:
                entry_bytes = frames.dtype.itemsize * math.prod(shape[1:])
                array = dask.array.from_array(
                    frames,
                    chunks=(max(1, BLOCK_BYTES // max(1, entry_bytes)), *shape[1:]),
                    name=False,
                    meta=np.empty((0,) * len(shape), frames.dtype),
                )
            else:
                frame_size = math.prod(array.shape[1:])
                count = math.prod(shape) // frame_size if frame_size else 0
                if array.ndim != len(shape) and array.shape[0] > count:  # still growing
                    array = array[:count]
            if array is not adapter._array:
                adapter = HDF5ArrayAdapter(
                    array, adapter.structure(), metadata=adapter.metadata(), specs=adapter.specs
                )
        return adapter


def _refuse_fewer_frames(path: Path, stored: Any, shape: tuple[int, ...]) -> None:
    """A closed file of the run's frame shape holding fewer frames than the run's documents
    name is not the file they were written for (replaced or cut since): Tiled would fail to
    reshape it, naming neither the file nor why."""
    if not _a_stack_of_frames(stored, shape):
        return
    needed = math.prod(shape[:-2])
    if stored.shape[0] < needed:
        raise UnreadableFile(
            f"{path} holds {stored.shape[0]} frames where its run's documents name {needed}: "
            "it is not the file they were written for (replaced or cut since)"
        )


def _a_stack_of_frames(stored: Any, shape: tuple[int, ...]) -> bool:
    """Whether the dataset `stored` is a stack of frames of the catalog's `shape`'s frames."""
    return stored.ndim == 3 and len(shape) >= 3 and tuple(shape[-2:]) == tuple(stored.shape[1:])


class _Frames:
    """A file's frames as the catalog shapes them (`shape`: each entry of its first axis is
    the next `per` frames of the file), for dask to read in blocks: the file is opened once
    for each block, and a read of a few entries reads their frames only."""

    def __init__(self, path: Path, options: dict[str, Any], shape: tuple[int, ...], dtype: Any):
        self.path, self.options, self.shape, self.dtype = path, options, shape, np.dtype(dtype)
        self.ndim = len(shape)
        self.per = math.prod(shape[1 : len(shape) - 2])  #: frames per entry (a point's k)

    @classmethod
    def of(
        cls, path: Path, opened: dict[str, Any], stored: Any, shape: tuple[int, ...]
    ) -> _Frames | None:
        """The frames of the file at `path`, whose dataset Tiled's adapter with `opened` (its
        parameters) read as `stored` (its shape and dtype), in the catalog's `shape`; None
        where that dataset is not a stack of frames of that shape holding them all (Tiled's
        own reading is kept)."""
        if not _a_stack_of_frames(stored, shape):
            return None
        options = {
            "dataset": opened.get("dataset"),
            "swmr": opened.get("swmr", True),
            "libver": opened.get("libver", "latest"),
            "locking": opened.get("locking"),
        }
        frames = cls(path, options, shape, stored.dtype)
        return frames if shape[0] * frames.per <= stored.shape[0] else None

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        first, rest = index[0], index[1:]
        if isinstance(first, slice):
            entries = range(self.shape[0])[first]
            if not entries:
                return np.empty((0, *self.shape[1:]), self.dtype)[(slice(None),) + rest]
            lo, hi = min(entries[0], entries[-1]), max(entries[0], entries[-1]) + 1
            local: Any = slice(entries[0] - lo, None if entries.step < 0 else hi - lo, entries.step)
        else:  # an entry, or entries (dask's fancy indexing)
            wanted = np.arange(self.shape[0])[first]
            lo, hi = (int(wanted.min()), int(wanted.max()) + 1) if wanted.size else (0, 0)
            local = wanted - lo
        with h5open(self.path, **self.options) as ds:
            stored = ds[lo * self.per : hi * self.per]
        return stored.reshape(hi - lo, *self.shape[1:])[(local,) + rest]
