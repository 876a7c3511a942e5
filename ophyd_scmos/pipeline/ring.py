"""A ring of frame slots in shared memory, so frames cross processes without pickling.

The producer (acquisition thread) copies each frame once, from the camera into a slot, and
sends only the slot index to the writer process. The writer publishes how many slots it has
released in a counter in the same segment; the producer never overwrites an unreleased slot.

A live view reads the newest frame best-effort, from its own process (`newest`): it never
holds a slot and nothing waits for it. The producer marks each slot's generation odd while a
frame lands in it and names the newest complete slot in the header; a reader's copy counts
only if the slot's generation did not change while it copied. One extra slot past the
writer's (`preview`) takes the frames no one records while a view watches, so that the
newest of them stays put while the next arrives.

Segment layout: a 128-byte header (`Header` fields), per-slot arrays (frame number, camera
timestamp, host timestamp, generation), then page-aligned frame slots.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from typing import Any

import numpy as np

PAGE = 4096
_HEADER = 128
_PER_SLOT = 4 * 8  #: frame number, camera timestamp, host timestamp, generation


class Header:
    """Indices of the header's 8-byte fields."""

    RELEASED = 0  #: slots the writer has finished with (writer)
    DELIVERED = 1  #: frames that landed in a slot, recorded or not, since the ring was made
    NEWEST = 2  #: the slot of the newest of them
    ACQUIRED = 3  #: this run's frames recorded so far (producer)
    DROPPED = 4  #: this run's frames dropped from a full ring (producer)
    MISSED = 5  #: this run's frames the camera lost (producer)
    WRITTEN = 6  #: this run's frames in the file (acquiring process)
    WATCHED_UNTIL = 7  #: a live view watches until this time.time() (float; the view)
    RUN_BASE = 8  #: slots released before this run began (acquiring process)


SHM_DIR = Path("/dev/shm")  #: where Linux keeps POSIX shared memory
#: how long a new ring waits for room in /dev/shm (seconds) before it is refused
ROOM_WAIT = 1.5
#: ring names: this prefix, the creating process's pid, a random token
_PREFIX = "scmos_"


def _round_up(n: int, to: int = PAGE) -> int:
    return -(-n // to) * to


@dataclass(frozen=True)
class RingSpec:
    """What another process needs to attach to a ring: JSON-friendly."""

    name: str
    frame_shape: tuple[int, int]
    dtype: str
    n_slots: int

    @functools.cached_property  # read for every frame written
    def frame_bytes(self) -> int:
        return math.prod(self.frame_shape) * np.dtype(self.dtype).itemsize

    @functools.cached_property
    def slot_stride(self) -> int:
        return _round_up(self.frame_bytes)

    @property
    def all_slots(self) -> int:
        """The writer's slots and the preview slot."""
        return self.n_slots + 1

    @property
    def data_offset(self) -> int:
        return _round_up(_HEADER + _PER_SLOT * self.all_slots)

    @property
    def segment_bytes(self) -> int:
        return self.data_offset + self.slot_stride * self.all_slots

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> RingSpec:
        return cls(d["name"], tuple(d["frame_shape"]), d["dtype"], int(d["n_slots"]))


@dataclass(frozen=True)
class NewestFrame:
    """The newest frame in a ring (a copy, or what a view read of it), for a live view."""

    ring: str  #: the ring's name: `delivered` counts its frames
    delivered: int  #: frames that had landed in the ring, this one included
    frame_number: int  #: the camera's
    host_time: float  #: time.time() when it landed
    image: np.ndarray
    shape: tuple[int, int]  #: the frame's (rows, columns), whatever the image was read as


class FrameRing:
    """Fixed slots of one frame shape in a POSIX shared-memory segment."""

    def __init__(self, spec: RingSpec, shm: shared_memory.SharedMemory, owner: bool):
        self.spec = spec
        self._shm = shm
        self._owner = owner
        buf = shm.buf
        n = spec.all_slots
        self.header = np.ndarray((_HEADER // 8,), np.int64, buf, 0)
        self._watched_until = np.ndarray((1,), np.float64, buf, 8 * Header.WATCHED_UNTIL)
        self.frame_number = np.ndarray((n,), np.int64, buf, _HEADER)
        self.camera_timestamp = np.ndarray((n,), np.float64, buf, _HEADER + 8 * n)
        self.host_timestamp = np.ndarray((n,), np.float64, buf, _HEADER + 16 * n)
        self._generation = np.ndarray((n,), np.int64, buf, _HEADER + 24 * n)
        self._slots = [
            np.ndarray(spec.frame_shape, spec.dtype, buf, spec.data_offset + i * spec.slot_stride)
            for i in range(n)
        ]
        self.preview = spec.n_slots  #: the slot for frames no one records, while watched

    @classmethod
    def create(cls, frame_shape: tuple[int, int], dtype: np.dtype | str, n_slots: int) -> FrameRing:
        """Allocate a new segment; raises MemoryError naming /dev/shm when it is too small."""
        if n_slots < 2:
            raise ValueError(f"a ring needs at least 2 slots, got {n_slots}")
        probe = RingSpec("", (frame_shape[0], frame_shape[1]), np.dtype(dtype).str, n_slots)
        size = probe.segment_bytes
        remove_orphan_rings()
        _wait_for_room(size)
        name = f"{_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
        try:
            shm = shared_memory.SharedMemory(name, create=True, size=size)
        except OSError as exc:
            raise MemoryError(_no_room(size, str(exc), exc.errno)) from exc
        try:
            # tmpfs hands out a segment larger than its free space, and touching the pages
            # then kills the process with SIGBUS: reserve them now, where failing is an error.
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(shm._fd, 0, size)  # type: ignore[attr-defined]
            spec = RingSpec(shm.name, probe.frame_shape, probe.dtype, n_slots)
            ring = cls(spec, shm, owner=True)
            ring.header[:] = 0
            _touch(shm)
        except BaseException as exc:  # Ctrl-C too: a ring no one holds must not stay behind
            shm.close()
            shm.unlink()
            if isinstance(exc, OSError):
                raise MemoryError(_no_room(size, exc.strerror or str(exc), exc.errno)) from exc
            raise
        return ring

    @classmethod
    def attach(cls, spec: RingSpec) -> FrameRing:
        """Attach from another process; only the creating process ever unlinks the segment."""
        # Attaching registers the segment with this process's resource tracker, which would
        # unlink it when this process exits: from 3.13 on it can be told not to.
        if sys.version_info >= (3, 13):
            shm = shared_memory.SharedMemory(name=spec.name, track=False)
        else:
            shm = shared_memory.SharedMemory(name=spec.name)
            if not spec.name.startswith(f"{_PREFIX}{os.getpid()}_"):
                resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
        return cls(spec, shm, owner=False)

    def slot(self, index: int) -> np.ndarray:
        return self._slots[index]

    @property
    def released(self) -> int:
        """Frames the writer has finished with, counted since the ring was made."""
        return int(self.header[Header.RELEASED])

    def release_to(self, count: int) -> None:
        self.header[Header.RELEASED] = count

    # -- the live view's way in -----------------------------------------------------------
    def land(self, slot: int, read: Callable[[np.ndarray], Any]) -> Any:
        """`read(slot's array)` (a camera's `read_into`), marked landing meanwhile, and
        `landed` once it returns; what it raised leaves the slot as it was marked before."""
        self.landing(slot)
        try:
            info = read(self._slots[slot])
        except BaseException:
            self.landing(slot)  # nothing landed: even again
            raise
        self.landed(slot, info.frame_number, info.camera_timestamp)
        return info

    def landing(self, slot: int) -> None:
        """A frame starts to land in `slot` (producer): a reader copying it now discards it."""
        self._generation[slot] += 1

    def landed(self, slot: int, frame_number: int, camera_timestamp: float) -> None:
        """The frame in `slot` is complete (producer): it is the newest."""
        self.frame_number[slot] = frame_number
        self.camera_timestamp[slot] = camera_timestamp
        self.host_timestamp[slot] = time.time()
        self._generation[slot] += 1
        self.header[Header.NEWEST] = slot
        self.header[Header.DELIVERED] += 1

    @property
    def watched(self) -> bool:
        """A live view has looked in the last seconds."""
        return bool(self._watched_until[0] > time.time())

    def watch(self, seconds: float = 2.0) -> None:
        """Say that a live view watches (reader): the producer keeps the newest unrecorded
        frame in place meanwhile."""
        self._watched_until[0] = time.time() + seconds

    def newest(
        self, after: int = 0, read: Callable[[np.ndarray], np.ndarray] = np.copy
    ) -> NewestFrame | None:
        """`read` of the newest complete frame (a copy; a view may bin it instead, reading the
        slot once), if more than `after` frames have landed (`NewestFrame.delivered`), else
        None; None too where the producer was writing the slot meanwhile (the next call gets
        a newer one). `read` must return a new array, never the slot. Never waits."""
        delivered = int(self.header[Header.DELIVERED])
        if delivered <= after:
            return None
        slot = int(self.header[Header.NEWEST])
        before = int(self._generation[slot])
        if before % 2:
            return None
        image = read(self._slots[slot])
        number, landed = int(self.frame_number[slot]), float(self.host_timestamp[slot])
        frame = NewestFrame(self.spec.name, delivered, number, landed, image, self.spec.frame_shape)
        return frame if int(self._generation[slot]) == before else None

    def close(self) -> None:
        """Drop this process's mapping; the owner also removes the segment. Idempotent."""
        if not self._slots:
            return
        self._slots.clear()
        del self.header, self._watched_until, self._generation
        del self.frame_number, self.camera_timestamp, self.host_timestamp
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


def _free_shm() -> int | None:
    """Bytes free in /dev/shm, or None where there is no such directory."""
    try:
        disk = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return disk.f_bavail * disk.f_frsize


def _no_room(size: int, reason: str, errno_: int | None = None) -> str:
    if errno_ == errno.EFBIG:  # not the room: this process may make no file that large
        return (
            f"cannot make a {size / 2**20:.0f} MiB frame ring in shared memory ({reason}): "
            "the process's file-size limit (ulimit -f) is smaller; raise it, or give the "
            "camera a smaller ring (ring_mb=...)"
        )
    free = _free_shm()
    free_text = "" if free is None else f"; {free / 2**20:.0f} MiB free"
    return (
        f"cannot make a {size / 2**20:.0f} MiB frame ring in shared memory ({SHM_DIR}"
        f"{free_text}: {reason}); give the camera a smaller ring (ring_mb=..., or ring_frames=; "
        "a ring holds two frames at least: else smaller frames, a ROI or binning) "
        "or make /dev/shm larger (Docker: --shm-size=1g)"
    )


def _wait_for_room(size: int) -> None:
    """Raise MemoryError unless /dev/shm has room for `size` bytes, or has it within
    `ROOM_WAIT` seconds: a ring just removed stays taken while a live view maps it, and the
    view lets go of it within a second."""
    deadline = time.monotonic() + ROOM_WAIT
    while (free := _free_shm()) is not None and free < size:
        if time.monotonic() > deadline:
            raise MemoryError(_no_room(size, "not enough room"))
        time.sleep(0.05)


def ring_exists(name: str) -> bool:
    """Whether the ring `name` is still in shared memory (True where there is no /dev/shm
    to look in)."""
    return not SHM_DIR.is_dir() or (SHM_DIR / name).exists()


def remove_orphan_rings() -> list[str]:
    """Remove rings left in /dev/shm by processes that are gone (killed with their whole
    process group, so no resource tracker was left to do it); return their names."""
    removed: list[str] = []
    if not Path("/proc/self").exists():  # no way to tell who is alive
        return removed
    for entry in SHM_DIR.glob(f"{_PREFIX}*_*"):
        pid = entry.name[len(_PREFIX) :].split("_", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
            removed.append(entry.name)
    return removed
