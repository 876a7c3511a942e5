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
"""

from __future__ import annotations

import math
from typing import Any

from tiled.adapters.hdf5 import HDF5Adapter, HDF5ArrayAdapter
from tiled.utils import path_from_uri

from ophyd_scmos.pipeline.recovery import check_readable, open_unlocked

__all__ = ["CheckedHDF5Adapter"]


class CheckedHDF5Adapter(HDF5Adapter):
    """Tiled's `HDF5Adapter`, refusing a file that is missing, shorter than HDF5 recorded or
    damaged, and serving no frame the catalog does not name; a file no writer holds is read
    without SWMR, which would retry a damaged part for minutes, and without HDF5's file lock
    (readers need none: the writer writes in SWMR mode)."""

    @classmethod
    def from_catalog(cls, data_source: Any, node: Any, /, **parameters: Any) -> Any:
        being_written = False
        for asset in data_source.assets:
            if asset.data_uri.startswith("file:"):
                superblock = check_readable(path_from_uri(asset.data_uri))
                being_written = being_written or superblock.open_for_writing
        if not being_written:
            parameters["swmr"] = False
        # Unlocked (whatever the documents ask), as `check_readable` opens it, maybe at this
        # moment for another request.
        opener = super(CheckedHDF5Adapter, cls).from_catalog
        adapter = open_unlocked(
            lambda locking: opener(data_source, node, **{**parameters, "locking": locking})
        )
        if isinstance(adapter, HDF5ArrayAdapter):
            array, shape = adapter._array, data_source.structure.shape
            frame_size = math.prod(array.shape[1:])
            frames = math.prod(shape) // frame_size if frame_size else 0
            if array.ndim != len(shape) and array.shape[0] > frames:  # still growing
                adapter = HDF5ArrayAdapter(
                    array[:frames],
                    adapter.structure(),
                    metadata=adapter.metadata(),
                    specs=adapter.specs,
                )
        return adapter
