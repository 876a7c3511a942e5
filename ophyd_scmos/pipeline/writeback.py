"""Write-behind: push a growing file to disk while it is written, and keep it out of memory.

Left alone, Linux lets gigabytes of dirty pages pile up, starts writing them late, and then
stalls the writer until they are on disk; every new page is fresh memory as well. Streaming
writers do better (see `ophyd-scmos bench`, "plain write, write-behind"): start writeback of
each window as soon as it is written, wait for the window before it, and drop that one from
the page cache. A thread does the pushing and the waiting, so the writer waits for the disk
only when the disk is a window behind. The page cache holds at most four windows of the file
(the one being written, one waiting to be pushed, one being pushed, the one before it on its
way to disk), the disk is busy from the first frame, and a crash of the machine loses at most
those four windows.

Linux only (sync_file_range); elsewhere `WriteBehind` does nothing and the kernel decides.
A bandwidth cap (`limit`, bytes/s) paces the pushes on any system: it leaves a shared disk's
bandwidth to others, and lets `ophyd-scmos bench` measure what a slower disk would give.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import queue
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

#: bytes between two pushes
WINDOW = 64 * 2**20
#: space held on the disk for HDF5's own metadata, so a full disk still closes cleanly
HEADROOM = 8 * 2**20

_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4


def file_identity(fd: int) -> tuple[int, int]:
    """(device, inode) of an open file: which file its path must still name (`names_file`)."""
    stat = os.fstat(fd)
    return stat.st_dev, stat.st_ino


def names_file(path: str | os.PathLike, identity: tuple[int, int]) -> bool:
    """Whether `path` still names the file of `identity`: not deleted, moved away or replaced
    by another file since. Whatever is done to a run's file by its path (its outcome
    recorded, its open mark cleared) is done only then: never to another run's file."""
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return (stat.st_dev, stat.st_ino) == identity


def fsync_path(path: str | os.PathLike) -> None:
    """Have the file at `path` on disk (a closed file then survives a power cut)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_file_range() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    function = getattr(libc, "sync_file_range", None)
    if function is None or not hasattr(os, "posix_fadvise"):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _sync_file_range()


class WriteBehind:
    """Follows the end of one file descriptor's file as it grows (appends only).

    Its own thread starts each window's writeback and waits for the window before it, so the
    writer goes on writing meanwhile (a step scan's trigger, which waits for the writer, then
    never waits for the disk too; a movie's frames go on to the file while the disk catches
    up). `advance` waits only when a window it hands over finds the one before it not taken
    yet. A failed writeback is raised by the next `advance` or by `close`, which must come
    before the file descriptor is closed.
    """

    def __init__(self, fd: int, window: int = WINDOW, limit: float | None = None):
        if limit is not None and not limit > 0:
            raise ValueError(f"a write bandwidth limit must be > 0 bytes/s, got {limit}")
        self.fd = fd
        self.window = window
        self.limit = limit
        self.pushed = 0  #: bytes handed to writeback
        self._start: float | None = None  #: when the first bytes came, for the limit
        self._windows: queue.Queue[tuple[int, int] | None] = queue.Queue(1)
        self._failure: OSError | None = None
        self._pusher: threading.Thread | None = None

    def advance(self, end: int) -> None:
        """The file now ends at `end`: push the new bytes once they make a window."""
        if self._start is None:
            self._start = time.monotonic()
        if end - self.pushed < self.window:
            return
        if self.limit is not None:  # no faster than `limit` since the first bytes
            time.sleep(max(0.0, self._start + end / self.limit - time.monotonic()))
        self._raise_failure()
        if _SYNC_FILE_RANGE is not None:
            if self._pusher is None:
                self._pusher = threading.Thread(target=self._push, name="write-behind", daemon=True)
                self._pusher.start()
            self._windows.put((self.pushed, end - self.pushed))
        self.pushed = end

    def close(self) -> None:
        """Wait for the windows handed over to be on their way to disk (the file descriptor
        may then be closed); raise if writing one failed."""
        if self._pusher is not None:
            self._windows.put(None)
            self._pusher.join()
            self._pusher = None
        self._raise_failure()

    def _push(self) -> None:
        """Start each window's writeback, then wait for the one before and drop it from the
        page cache."""
        previous = None
        while (window := self._windows.get()) is not None:
            if self._failure is not None:
                continue  # the writer is told at its next call; drain until `close`
            try:
                self._call(*window, _WRITE)
                if previous is not None:
                    self._call(*previous, _WAIT_BEFORE | _WRITE | _WAIT_AFTER)
                    os.posix_fadvise(self.fd, *previous, os.POSIX_FADV_DONTNEED)
            except OSError as exc:
                self._failure = exc
            previous = window

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _call(self, start: int, length: int, flags: int) -> None:
        assert _SYNC_FILE_RANGE is not None
        if _SYNC_FILE_RANGE(self.fd, start, length, flags) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"writing the file to disk failed: {os.strerror(code)}")


def room(
    path: str | os.PathLike[str], file_size: int, *, reserved: bool = False
) -> tuple[int, int]:
    """(bytes the file at `path` may still grow by, the errno that says why not more).

    The disk's free space (ENOSPC) or this process's file-size limit, ``ulimit -f`` (EFBIG),
    whichever is less, less HEADROOM for the metadata HDF5 writes when the file closes: on
    the disk, unless a `CloseReserve` already holds it apart (`reserved`).
    """
    disk = os.statvfs(Path(path).absolute().parent)
    free = disk.f_bavail * disk.f_frsize - (0 if reserved else HEADROOM)
    reason = errno.ENOSPC
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and limit - file_size - HEADROOM < free:
        free, reason = limit - file_size - HEADROOM, errno.EFBIG
    return max(0, free), reason


def _out_of_inodes(directory: str | os.PathLike[str]) -> bool:
    try:
        disk = os.statvfs(directory)
    except OSError:
        return False
    return disk.f_files > 0 and disk.f_favail == 0


class CloseReserve:
    """HEADROOM bytes of a disk held for a file's close, in a file without a name (nothing
    is left behind, whatever ends the process), given back just before the close: HDF5
    writes its metadata then, and a disk that another process filled meanwhile would leave
    the file damaged, its frames and outcome unreadable. Where the disk cannot hold them
    apart (no such file, no `fallocate`), `held` is False: they are only kept free."""

    def __init__(self, directory: str | os.PathLike[str]):
        self._file: IO[bytes] | None = None
        try:
            self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (held open)
            os.posix_fallocate(self._file.fileno(), 0, HEADROOM)
        except OSError as exc:
            self.release()
            if exc.errno == errno.ENOSPC:
                raise
        self.held = self._file is not None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Room:
    """`room` for one file that grows frame by frame, asked before every frame. The disk is
    asked again only when the room it last gave runs low or a tenth of a second has passed:
    a `statvfs` per frame costs as much as writing a small frame."""

    RECHECK_SECONDS = 0.1
    LOW = 64 * 2**20  #: below this, every frame asks the disk

    def __init__(self, path: str | os.PathLike[str], *, reserved: bool = False):
        self.path, self.reserved = path, reserved
        self._space, self._reason = 0, errno.ENOSPC
        self._file_size = 0  #: the file's size when the disk was last asked
        self._asked = -float("inf")

    def __call__(self, file_size: int) -> tuple[int, int]:
        space = self._space - (file_size - self._file_size)
        now = time.monotonic()
        if space < self.LOW or now - self._asked > self.RECHECK_SECONDS:
            self._space, self._reason = room(self.path, file_size, reserved=self.reserved)
            self._file_size, self._asked, space = file_size, now, self._space
        return max(0, space), self._reason


def no_room(reason: int, needed: str, directory: str | os.PathLike[str] | None = None) -> OSError:
    """The error for a full disk or a reached file-size limit, saying which; with the
    `directory` of the file, a disk out of files (inodes) rather than bytes says so."""
    if reason == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        what = f"File size limit reached (ulimit -f: {limit / 2**20:.0f} MiB)"
    elif directory is not None and _out_of_inodes(directory):
        return OSError(
            reason,
            f"No file can be added to the file system (its inodes all taken: df -i), for {needed}",
        )
    else:
        what = "No space left on device"
    kept = f"kept {HEADROOM // 2**20} MiB for the file to close cleanly"
    return OSError(reason, f"{what} for {needed} ({kept})")
