"""A ring of frame slots in shared memory, so frames cross processes without pickling.

The producer (acquisition thread) copies each frame once, from the camera into a slot, and
sends only the slot index to the writer process. The writer publishes how many slots it has
released in a counter in the same segment; the producer never overwrites an unreleased slot.

Segment layout: a 64-byte header (released counter), per-slot metadata arrays (frame number,
camera timestamp, host timestamp), then page-aligned frame slots.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import asdict, dataclass
from multiprocessing import resource_tracker, shared_memory

import numpy as np

PAGE = 4096
_HEADER = 64


def _round_up(n: int, to: int = PAGE) -> int:
    return -(-n // to) * to


@dataclass(frozen=True)
class RingSpec:
    """What another process needs to attach to a ring: JSON-friendly."""

    name: str
    frame_shape: tuple[int, int]
    dtype: str
    n_slots: int

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self.frame_shape)) * np.dtype(self.dtype).itemsize

    @property
    def slot_stride(self) -> int:
        return _round_up(self.frame_bytes)

    @property
    def data_offset(self) -> int:
        return _round_up(_HEADER + 24 * self.n_slots)

    @property
    def segment_bytes(self) -> int:
        return self.data_offset + self.slot_stride * self.n_slots

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> RingSpec:
        return cls(d["name"], tuple(d["frame_shape"]), d["dtype"], int(d["n_slots"]))


class FrameRing:
    """Fixed slots of one frame shape in a POSIX shared-memory segment."""

    def __init__(self, spec: RingSpec, shm: shared_memory.SharedMemory, owner: bool):
        self.spec = spec
        self._shm = shm
        self._owner = owner
        buf = shm.buf
        n = spec.n_slots
        self._released = np.ndarray((1,), np.int64, buf, 0)
        self.frame_number = np.ndarray((n,), np.int64, buf, _HEADER)
        self.camera_timestamp = np.ndarray((n,), np.float64, buf, _HEADER + 8 * n)
        self.host_timestamp = np.ndarray((n,), np.float64, buf, _HEADER + 16 * n)
        self._slots = [
            np.ndarray(spec.frame_shape, spec.dtype, buf, spec.data_offset + i * spec.slot_stride)
            for i in range(n)
        ]

    @classmethod
    def create(cls, frame_shape: tuple[int, int], dtype: np.dtype | str, n_slots: int) -> FrameRing:
        """Allocate a new segment; raises MemoryError naming /dev/shm when it is too small."""
        if n_slots < 2:
            raise ValueError(f"a ring needs at least 2 slots, got {n_slots}")
        probe = RingSpec("", tuple(frame_shape), np.dtype(dtype).str, n_slots)
        try:
            shm = shared_memory.SharedMemory(create=True, size=probe.segment_bytes)
        except OSError as exc:
            raise MemoryError(
                f"cannot allocate a {probe.segment_bytes / 2**20:.0f} MiB frame ring in shared "
                f"memory ({exc}); make /dev/shm larger (Docker: --shm-size) or the ring smaller"
            ) from exc
        spec = RingSpec(shm.name, probe.frame_shape, probe.dtype, n_slots)
        ring = cls(spec, shm, owner=True)
        ring._released[0] = 0
        _touch(shm)
        return ring

    @classmethod
    def attach(cls, spec: RingSpec) -> FrameRing:
        """Attach from another process; only the creating process ever unlinks the segment."""
        shm = shared_memory.SharedMemory(name=spec.name)
        if sys.version_info < (3, 13):
            # Before 3.13 attaching registers the segment with this process's resource
            # tracker, which would unlink it when this process exits.
            resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
        return cls(spec, shm, owner=False)

    def slot(self, index: int) -> np.ndarray:
        return self._slots[index]

    @property
    def released(self) -> int:
        """Frames the writer has finished with, counted since the ring was made."""
        return int(self._released[0])

    def release_to(self, count: int) -> None:
        self._released[0] = count

    def close(self) -> None:
        """Drop this process's mapping; the owner also removes the segment. Idempotent."""
        if not self._slots:
            return
        self._slots.clear()
        del self._released, self.frame_number, self.camera_timestamp, self.host_timestamp
        self._shm.close()
        if self._owner:
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()
        self._owner = False


def _touch(shm: shared_memory.SharedMemory) -> None:
    """Fault the pages in now, so the first frames do not pay for page allocation."""
    view = np.ndarray((shm.size,), np.uint8, shm.buf)
    view[::PAGE] = 0
    del view
