"""How one camera's pipeline runs: ring size, overflow policy, compression, disk bandwidth.

`PipelineOptions` is checked once, when it is made: the lab configuration builds it, the
camera holds it, the stream passes it on, and the writer process receives it inside its
`WriterConfig`. Nothing downstream checks these values again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from ophyd_scmos.pipeline.compression import CODECS
from ophyd_scmos.pipeline.ring import RingSpec

OverflowPolicy = Literal["block", "drop"]
OVERFLOW_POLICIES: tuple[OverflowPolicy, ...] = ("block", "drop")
DEFAULT_RING_MB = 256.0


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


@dataclass(frozen=True)
class PipelineOptions:
    """The pipeline's knobs, each checked here with a message that names it and what is allowed.

    The ring holds `ring_mb` megabytes (default 256) or `ring_frames` frames, not both: all
    the memory a stream takes however long it runs. `overflow`: ``block`` waits for the
    writer (the camera buffers or misses frames meanwhile, counted), ``drop`` discards frames
    from a full ring and counts them. `compression`: None or one of `CODECS`.
    `write_limit_mb_s` caps the writer's disk bandwidth, to share a disk. `flush_interval`:
    the longest a written frame waits before readers (and a crash) see it, in seconds.
    `stall_timeout`: how long the writer may say nothing while frames wait for it (stopped,
    or writing to a disk that does not answer) before the run fails, in seconds.
    """

    ring_mb: float | None = None
    ring_frames: int | None = None
    overflow: OverflowPolicy = "block"
    compression: str | None = None
    write_limit_mb_s: float | None = None
    flush_interval: float = 0.5
    stall_timeout: float = 60.0

    def __post_init__(self) -> None:
        ring_mb, ring_frames = self.ring_mb, self.ring_frames
        if ring_mb is not None and ring_frames is not None:
            raise ValueError(
                f"give the ring's size as ring_mb or ring_frames, not both ({ring_mb}, "
                f"{ring_frames})"
            )
        if ring_frames is not None:
            if isinstance(ring_frames, bool) or not isinstance(ring_frames, int) or ring_frames < 2:
                raise ValueError(f"ring_frames must be an integer >= 2, got {ring_frames!r}")
        elif ring_mb is None:
            object.__setattr__(self, "ring_mb", DEFAULT_RING_MB)
        elif not _positive_number(ring_mb):
            raise ValueError(f"ring_mb must be positive (megabytes), got {ring_mb!r}")
        else:
            object.__setattr__(self, "ring_mb", float(ring_mb))
        if self.overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow={self.overflow!r} is not one of {OVERFLOW_POLICIES}")
        compression = None if self.compression in (None, "", "none") else self.compression
        if compression is not None and compression not in CODECS:
            raise ValueError(
                f"compression {self.compression!r} is not one of: none, {', '.join(CODECS)}"
            )
        object.__setattr__(self, "compression", compression)
        limit = self.write_limit_mb_s
        if limit is not None:
            if not _positive_number(limit):
                raise ValueError(f"write_limit_mb_s must be positive, got {limit!r}")
            object.__setattr__(self, "write_limit_mb_s", float(limit))
        for name in ("flush_interval", "stall_timeout"):
            if not _positive_number(getattr(self, name)):
                raise ValueError(f"{name} must be positive seconds, got {getattr(self, name)!r}")

    def slots_for(self, frame_shape: tuple[int, int], dtype: np.dtype | str) -> int:
        """Ring slots for frames of this shape: `ring_frames`, or as many as fit in `ring_mb`
        (at least 2: one filling, one writing)."""
        if self.ring_frames is not None:
            return self.ring_frames
        assert self.ring_mb is not None  # __post_init__ fills the default
        stride = RingSpec("", frame_shape, np.dtype(dtype).str, 0).slot_stride
        return max(2, int(self.ring_mb * 2**20) // stride)

    def to_dict(self) -> dict[str, Any]:
        """As plain values, for the writer's message and for the file's attributes."""
        return asdict(self)
