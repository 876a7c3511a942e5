"""The superblock at the start of a run file: is the file whole, is it open for writing, and
making it openable again after its writer was killed, as `h5clear -s` does.

A SWMR writer marks the superblock "open for writing"; if it dies without closing, every
later plain open fails ("file is already open for write") although the data is consistent:
SWMR orders its writes so that a reader always sees a valid file. Clearing the flag is a
one-byte change in the version 2/3 superblock, plus its Jenkins lookup3 checksum.

The superblock also records how long the file is. A plain open refuses a shorter file
("truncated file"), but a SWMR reader (Tiled's, for one) skips that check: it reads the
missing frames of a truncated file as zeros, or retries its missing metadata for minutes.
`check_readable` makes the check for such readers.

A writer killed while HDF5 closes a file can leave it shorter than recorded too: the close
writes the metadata and the superblock, then sets the file's length, which extends it over
space nothing points at yet. `finish_close` finishes that close, as `h5clear --increment` would,
but only where the missing bytes are such space: never where frames or metadata were cut.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

SIGNATURE = b"\x89HDF\r\n\x1a\n"
_FLAGS_AT = 11  # signature, version, size of offsets, size of lengths, then the flags byte
_MASK = 0xFFFFFFFF


class UnreadableFile(OSError):
    """A run file that cannot be read as it was written: missing, cut short, or not HDF5."""


class MissingFile(UnreadableFile, FileNotFoundError):
    """A run file that is not where its run says (moved, deleted, or on an unmounted disk)."""


@dataclass(frozen=True)
class Superblock:
    version: int
    end_of_file: int  #: the file's length in bytes, as HDF5 last recorded it
    open_for_writing: bool  #: a writer has the file open, or died with it open


def read_superblock(path: str | os.PathLike) -> Superblock:
    """Read the superblock (versions 0-3, after a user block if there is one).

    Raises `MissingFile` or `UnreadableFile` (not an HDF5 file), naming `path`.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            at = 0
            while at < size:  # HDF5 looks at 0, 512, 1024, 2048, ...
                f.seek(at)
                block = f.read(128)
                if block.startswith(SIGNATURE):
                    break
                at = 512 if at == 0 else 2 * at
            else:
                if size == 0:  # a camera reserves its run's file name empty, then writes it
                    raise UnreadableFile(
                        f"{path} is empty: a run starting (its writer has not opened it "
                        "yet), or one whose start failed"
                    )
                raise UnreadableFile(f"{path} is not an HDF5 file (no superblock in {size} bytes)")
    except FileNotFoundError:
        raise MissingFile(
            errno.ENOENT, "no such file (moved, deleted, or its disk is not mounted)", str(path)
        ) from None
    version = block[8]
    if version in (0, 1):
        offsets, flags = block[13], int.from_bytes(block[20:24], "little")
        addresses = 24 if version == 0 else 28  # base, free space, end of file, driver
    elif version in (2, 3):
        offsets, flags = block[9], block[_FLAGS_AT]
        addresses = 12  # base, superblock extension, end of file, root group
    else:
        raise UnreadableFile(f"{path}: unknown HDF5 superblock version {version}")
    eof_at = addresses + 2 * offsets
    return Superblock(
        version=version,
        end_of_file=int.from_bytes(block[eof_at : eof_at + offsets], "little"),
        open_for_writing=flags != 0,
    )


def check_readable(
    path: str | os.PathLike, run: str | None = None, camera: str | None = None
) -> Superblock:
    """Raise `UnreadableFile` (or `MissingFile`), saying what is wrong, unless `path` is an
    HDF5 file at least as long as its superblock records, whose objects' metadata reads,
    and (`run`, `camera` given) that records no other run's frames, nor another camera's;
    return its superblock.

    A file open for writing is only checked for its length, and only where no process here
    writes it (its writer stopped before its last writes reached the disk: a power cut, or
    killed with its session): a SWMR reader would read what is missing as frames of zeros.
    Its objects are not opened: its writer may still be writing them (on another host).
    """
    superblock = read_superblock(path)
    size = os.stat(path).st_size
    if size < superblock.end_of_file:
        if not superblock.open_for_writing:
            why = "cut short by an unfinished copy or a full disk?"
        elif writing_process(path) is None:
            why = (
                "open for writing, and no process here writes it: its writer stopped before "
                "its last writes reached the disk (a power cut, or killed with its session)"
            )
        else:
            return superblock  # its writer may have recorded space it has not filled yet
        raise UnreadableFile(
            f"{path} is truncated: {size} bytes where HDF5 recorded {superblock.end_of_file} "
            f"({why})"
        )
    if not superblock.open_for_writing:
        _check_metadata(path, run, camera)
    return superblock


def writing_process(path: str | os.PathLike) -> int | None:
    """A process that has `path` open for writing (Linux: /proc), or None. One reading it
    (a reader following a file, another recovery reading a journal) writes nothing."""
    target = os.path.realpath(path)
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                if os.path.realpath(fd) == target and _open_for_writing(fd):
                    return int(fd_dir.parent.name)
        except OSError:  # gone meanwhile, or not ours to look at
            continue
    return None


def _open_for_writing(fd: Path) -> bool:
    """Whether the open file `fd` (/proc/PID/fd/N) was opened to write (its fdinfo's flags)."""
    info = (fd.parent.parent / "fdinfo" / fd.name).read_text()
    flags = int(next(line.split()[1] for line in info.splitlines() if line.startswith("flags:")), 8)
    return flags & os.O_ACCMODE != os.O_RDONLY


#: what h5py raises for a file whose metadata is damaged or cut short: it varies with the part
H5PY_FAILURES = (OSError, KeyError, RuntimeError, ValueError)
#: HDF5's error for a second open of a file in one process with other locking than the first
LOCKING_DIFFERS = "locking flag values don't match"


def open_unlocked(open_file: Callable[[bool | None], T]) -> T:
    """`open_file(locking)` without HDF5's file lock (a reader needs none, and a writer's
    or a reader's lock would refuse it), else with HDF5's default locking where this process
    holds the file so already: HDF5 refuses a second open of a file with other locking."""
    try:
        return open_file(False)
    except OSError as exc:
        if LOCKING_DIFFERS not in str(exc):
            raise
        return open_file(None)


def _check_metadata(
    path: str | os.PathLike, run: str | None = None, camera: str | None = None
) -> None:
    """Open every object of the file, without SWMR: a SWMR reader retries a damaged
    object's checksum for minutes, a plain one fails at once. Without file locks, unless
    this process has the file open already (`h5py.File(path)` beside an in-process
    catalog): HDF5 then wants the same locking as that open. With `run`, the run the file
    records, if any, must be it (`another_runs_file`); with `camera`, the camera that wrote
    it, if it says, must be that one (two cameras' files of one run swapped)."""
    import h5py

    from ophyd_scmos.pipeline import layout

    try:
        with open_unlocked(lambda locking: h5py.File(path, "r", locking=locking)) as f:
            f.visititems(lambda name, obj: None)
            entry = f.get(layout.ENTRY)
            outcome = layout.Outcome.read(f) if run is not None and entry is not None else None
            wrote = entry.attrs.get("device_name") if entry is not None else None
    except H5PY_FAILURES as exc:
        raise UnreadableFile(f"{path} is damaged: {exc}") from None
    wrong = None if outcome is None or run is None else another_runs_file(path, outcome.run, run)
    if wrong is None and camera is not None and wrote is not None and str(wrote) != camera:
        wrong = (
            f"{path} holds the frames of camera {wrote}, not of {camera}: it is not this "
            "camera's file (put there since: two cameras' files swapped?)"
        )
    if wrong is not None:
        raise UnreadableFile(wrong)


def another_runs_file(path: str | os.PathLike, recorded: str | None, run: str) -> str | None:
    """What is wrong where the file at `path`, recording the frames of run `recorded`, is
    read as run `run`'s: a wrong restore put another run's file at its path. None where
    nothing is (the file records no run, or this one)."""
    if recorded in (None, run):
        return None
    return (
        f"{path} holds the frames of run {recorded}, not of {run}: it is not this run's file "
        "(put there since: a wrong restore?)"
    )


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


A, B, C = 0, 1, 2
_MIX = ((A, C, B, 4), (B, A, C, 6), (C, B, A, 8), (A, C, B, 16), (B, A, C, 19), (C, B, A, 4))
_FINAL = ((C, B, 14), (A, C, 11), (B, A, 25), (C, B, 16), (A, C, 4), (B, A, 14), (C, B, 24))


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 `hashlittle`, the checksum HDF5 puts on its metadata."""
    v = [(0xDEADBEEF + len(data) + initval) & _MASK] * 3
    blocks = max(0, (len(data) - 1) // 12)  # the last 1..12 bytes get the final mix
    for i in range(blocks + 1):
        block = data[12 * i : 12 * i + 12]
        if not block:
            return v[C]  # empty input
        block += bytes(12 - len(block))
        for j in range(3):
            v[j] = (v[j] + int.from_bytes(block[4 * j : 4 * j + 4], "little")) & _MASK
        if i < blocks:
            for x, y, z, k in _MIX:
                v[x] = ((v[x] - v[y]) & _MASK) ^ _rot(v[y], k)
                v[y] = (v[y] + v[z]) & _MASK
        else:
            for x, y, k in _FINAL:
                v[x] = ((v[x] ^ v[y]) - _rot(v[y], k)) & _MASK
    return v[C]


def clear_open_flags(path: str | os.PathLike) -> bool:
    """Clear the superblock's file-consistency flags; True if they were set.

    Only for a file whose writer is gone: the caller guarantees no process has it open.
    Raises ValueError if the file does not start with a checksummed v2/v3 superblock.
    """
    with open(path, "r+b") as f:
        head = f.read(12)
        if not head:
            read_superblock(path)  # says what an empty file is
        if head[:8] != SIGNATURE or head[8] not in (2, 3):
            raise ValueError(
                f"{path}: not a file ophyd-scmos wrote (no HDF5 version 2/3 superblock)"
            )
        size = 12 + 4 * head[9]  # base, extension, end-of-file and root addresses
        f.seek(0)
        block = f.read(size + 4)
        (stored,) = struct.unpack("<I", block[size:])
        if lookup3(block[:size]) != stored:
            raise ValueError(f"{path}: superblock checksum does not match; not touching it")
        if block[_FLAGS_AT] == 0:
            return False
        cleared = block[:_FLAGS_AT] + b"\0" + block[_FLAGS_AT + 1 : size]
        f.seek(0)
        f.write(cleared + struct.pack("<I", lookup3(cleared)))
        f.flush()
        os.fsync(f.fileno())
    return True


def finish_close(path: str | os.PathLike) -> bool:
    """Extend a file shorter than its superblock records to that length, if what is missing
    is space nothing in the file points at (a close cut short); True if it did.

    Checked after extending, with the extension read as zeros: every object's metadata (each
    checksummed) and every chunk must lie within what was there. Otherwise the file gets its
    own length back and `UnreadableFile` says it is truncated.
    """
    superblock = read_superblock(path)
    size = os.stat(path).st_size
    if superblock.open_for_writing or size >= superblock.end_of_file:
        return False
    os.truncate(path, superblock.end_of_file)
    try:
        _check_metadata(path)
        _check_chunks_within(path, size)
    except UnreadableFile:
        os.truncate(path, size)
        raise UnreadableFile(
            f"{path} is truncated: {size} bytes where HDF5 recorded {superblock.end_of_file}, "
            "and what is missing holds data"
        ) from None
    return True


def _check_chunks_within(path: str | os.PathLike, size: int) -> None:
    """Raise `UnreadableFile` if a dataset's data lies past the first `size` bytes."""
    import h5py

    def check(name: str, obj: object) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.chunks is None:
            offset = obj.id.get_offset()
            ends = [] if offset is None else [offset + obj.id.get_storage_size()]
        else:
            ends = []
            obj.id.chunk_iter(lambda chunk: ends.append(chunk.byte_offset + chunk.size))
        if any(end > size for end in ends):
            raise UnreadableFile(f"{path}: {name} has data past byte {size}")

    with h5py.File(path, "r", locking=False) as f:
        f.visititems(check)
