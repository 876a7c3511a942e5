"""Compression choices for the frame dataset, as HDF5 filters any h5py + hdf5plugin reads."""

from __future__ import annotations

from typing import Any

import hdf5plugin

#: name -> factory of `create_dataset` keyword arguments
CODECS = {
    "bitshuffle-lz4": lambda: hdf5plugin.Bitshuffle(cname="lz4"),
    "blosc2-lz4": lambda: hdf5plugin.Blosc2(
        cname="lz4", clevel=5, filters=hdf5plugin.Blosc2.SHUFFLE
    ),
    "blosc2-zstd": lambda: hdf5plugin.Blosc2(
        cname="zstd", clevel=3, filters=hdf5plugin.Blosc2.SHUFFLE
    ),
}


def check_compression(name: str | None) -> str | None:
    """Return the canonical name, or raise ValueError listing what is offered."""
    if name in (None, "", "none"):
        return None
    if name not in CODECS:
        raise ValueError(f"compression {name!r} is not one of: none, {', '.join(CODECS)}")
    return name


def dataset_options(name: str | None) -> dict[str, Any]:
    """Keyword arguments that make `create_dataset` use the named compression."""
    name = check_compression(name)
    return {} if name is None else dict(CODECS[name]())
