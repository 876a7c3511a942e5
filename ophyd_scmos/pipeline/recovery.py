"""Make a file openable again after its writer was killed, as `h5clear -s` does.

A SWMR writer marks the superblock "open for writing"; if it dies without closing, every
later plain open fails ("file is already open for write") although the data is consistent:
SWMR orders its writes so that a reader always sees a valid file. Clearing the flag is a
one-byte change in the version 2/3 superblock, plus its Jenkins lookup3 checksum.
"""

from __future__ import annotations

import os
import struct

SIGNATURE = b"\x89HDF\r\n\x1a\n"
_FLAGS_AT = 11  # signature, version, size of offsets, size of lengths, then the flags byte
_MASK = 0xFFFFFFFF


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
        if head[:8] != SIGNATURE or head[8] not in (2, 3):
            raise ValueError(f"{path}: not an HDF5 file with a version 2/3 superblock")
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
