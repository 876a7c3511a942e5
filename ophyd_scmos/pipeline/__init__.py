"""Camera frames to disk: shared-memory ring -> writer process -> HDF5.

The names below load their modules when first used: a module that needs only one part
(the catalog's file recovery, say) does not load h5py and the compressors with the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ophyd_scmos.pipeline.compression import CODECS
    from ophyd_scmos.pipeline.options import PipelineOptions
    from ophyd_scmos.pipeline.ring import FrameRing, RingSpec
    from ophyd_scmos.pipeline.stream import FrameStream, StreamError

__all__ = ["CODECS", "FrameRing", "FrameStream", "PipelineOptions", "RingSpec", "StreamError"]

#: each public name's module
_MODULES = {
    "CODECS": "compression",
    "PipelineOptions": "options",
    "FrameRing": "ring",
    "RingSpec": "ring",
    "FrameStream": "stream",
    "StreamError": "stream",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
