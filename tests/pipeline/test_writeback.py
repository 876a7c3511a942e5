"""Write-behind: the file's bytes are unchanged, and what is behind the window leaves memory."""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import time

import numpy as np
import pytest

from ophyd_scmos.pipeline import writeback
from ophyd_scmos.pipeline.writeback import WriteBehind

WINDOW = 2**20
linux_only = pytest.mark.skipif(
    writeback._SYNC_FILE_RANGE is None, reason=f"no sync_file_range on {sys.platform}"
)


def resident_pages(path, length: int) -> np.ndarray:
    """Which pages of the file's first `length` bytes are in the page cache (mincore)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    pages = np.zeros(-(-length // mmap.PAGESIZE), np.uint8)
    # a private mapping: writable for ctypes, and reading it copies nothing
    with open(path, "rb") as f, mmap.mmap(f.fileno(), length, access=mmap.ACCESS_COPY) as mm:
        start = ctypes.c_char.from_buffer(mm)
        failed = libc.mincore(ctypes.addressof(start), length, pages.ctypes.data)
        del start
    if failed:
        raise OSError(ctypes.get_errno(), "mincore failed")
    return pages & 1


@linux_only
def test_windows_behind_the_last_two_leave_the_page_cache_and_the_bytes_stay(tmp_path):
    data = np.random.default_rng(1).integers(0, 255, 6 * WINDOW, np.uint8)
    path = tmp_path / "f.bin"
    with open(path, "wb", buffering=0) as f:
        behind = WriteBehind(f.fileno(), window=WINDOW)
        for piece in np.split(data, 24):
            f.write(piece)
            behind.advance(f.tell())
        resident = resident_pages(path, data.nbytes)
    assert behind.pushed == data.nbytes
    per_window = WINDOW // mmap.PAGESIZE
    # windows 0-3 were pushed, waited for and dropped; 4 and 5 are still on their way
    assert resident[: 4 * per_window].sum() == 0
    np.testing.assert_array_equal(np.fromfile(path, np.uint8), data)


@linux_only
def test_a_failed_writeback_is_an_error_not_silence(tmp_path):
    fd = os.open(tmp_path / "f.bin", os.O_WRONLY | os.O_CREAT)
    os.close(fd)  # sync_file_range on it fails (EBADF), as it would on a disk's I/O error
    with pytest.raises(OSError, match="writing the file to disk failed"):
        WriteBehind(fd, window=1).advance(10)


def test_a_bandwidth_limit_paces_the_pushes(tmp_path):
    data = np.zeros(4 * WINDOW, np.uint8)
    with open(tmp_path / "f.bin", "wb", buffering=0) as f:
        behind = WriteBehind(f.fileno(), window=WINDOW, limit=20 * WINDOW)  # 20 windows/s
        t0 = time.monotonic()
        behind.advance(0)  # the first bytes: the clock starts
        for piece in np.split(data, 4):
            f.write(piece)
            behind.advance(f.tell())
        assert time.monotonic() - t0 >= 4 / 20  # a floor: pacing sleeps, it never hurries
    assert behind.pushed == data.nbytes
    with pytest.raises(ValueError, match="must be > 0"):
        WriteBehind(0, limit=0)
