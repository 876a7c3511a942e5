"""Camera frames to disk: shared-memory ring -> writer process -> HDF5."""

from ophyd_scmos.pipeline.compression import CODECS
from ophyd_scmos.pipeline.options import PipelineOptions
from ophyd_scmos.pipeline.ring import FrameRing, RingSpec
from ophyd_scmos.pipeline.stream import FrameStream, StreamError

__all__ = ["CODECS", "FrameRing", "FrameStream", "PipelineOptions", "RingSpec", "StreamError"]
