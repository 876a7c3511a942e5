"""Write-behind: the file's bytes are unchanged, and what is behind the window leaves memory."""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import threading
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
def test_windows_before_the_last_leave_the_page_cache_once_closed_and_the_bytes_stay(tmp_path):
    data = np.random.default_rng(1).integers(0, 255, 6 * WINDOW, np.uint8)
    path = tmp_path / "f.bin"
    with open(path, "wb", buffering=0) as f:
        behind = WriteBehind(f.fileno(), window=WINDOW)
        for piece in np.split(data, 24):
            f.write(piece)
            behind.advance(f.tell())
        behind.close()  # every window handed over has been pushed
        resident = resident_pages(path, data.nbytes)
    assert behind.pushed == data.nbytes
    per_window = WINDOW // mmap.PAGESIZE
    # windows 0-4 were pushed, waited for and dropped; 5 is still on its way
    assert resident[: 5 * per_window].sum() == 0
    np.testing.assert_array_equal(np.fromfile(path, np.uint8), data)


@linux_only
def test_a_failed_writeback_is_an_error_not_silence(tmp_path):
    fd = os.open(tmp_path / "f.bin", os.O_WRONLY | os.O_CREAT)
    os.close(fd)  # sync_file_range on it fails (EBADF), as it would on a disk's I/O error
    behind = WriteBehind(fd, window=1)
    behind.advance(10)  # handed over: the failure comes on the pushing thread
    with pytest.raises(OSError, match="writing the file to disk failed"):
        behind.close()
    with pytest.raises(OSError, match="writing the file to disk failed"):
        behind.advance(20)  # and nothing more is handed over


@linux_only
def test_the_writer_waits_for_the_disk_only_when_it_is_a_window_behind(tmp_path, monkeypatch):
    """A disk that does not answer (each writeback blocks until `disk` is set) holds the
    pushing thread, not `advance`, until a window finds the one before it not taken."""
    disk = threading.Event()
    calls = []

    def slow_sync_file_range(fd, start, length, flags):
        calls.append((start, length, flags))
        disk.wait()
        return 0

    monkeypatch.setattr(writeback, "_SYNC_FILE_RANGE", slow_sync_file_range)
    with open(tmp_path / "f.bin", "wb", buffering=0) as f:
        behind = WriteBehind(f.fileno(), window=WINDOW)
        behind.advance(WINDOW)  # taken by the thread, which waits for the disk
        behind.advance(2 * WINDOW)  # waits in the queue
        third = threading.Thread(target=behind.advance, args=(3 * WINDOW,))
        third.start()
        third.join(0.5)
        assert third.is_alive()  # the disk is a window behind: the writer waits
        assert calls == [(0, WINDOW, writeback._WRITE)]
        disk.set()
        third.join(10)
        assert not third.is_alive()
        behind.close()
    assert behind.pushed == 3 * WINDOW
    assert [c[:2] for c in calls if c[2] == writeback._WRITE] == [
        (0, WINDOW),
        (WINDOW, WINDOW),
        (2 * WINDOW, WINDOW),
    ]


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
