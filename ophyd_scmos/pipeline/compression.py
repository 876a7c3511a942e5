"""Compression of frames into chunks that any h5py + hdf5plugin reader decodes.

The dataset declares an hdf5plugin filter, so readers need nothing of ours. The writer does
not let HDF5 run that filter (single-threaded, and this machine's hdf5plugin build has no
OpenMP or AVX2): `ChunkCompressor` encodes each frame into exactly the bytes the filter would
store, in a pool of threads, and the writer stores them with direct chunk writes.

Threads, not processes: both encoders release the GIL while they work, and a thread reads the
ring slot in place, while a worker process must send every compressed chunk back through a
pipe. `ophyd-scmos bench` measures both engines beside each other on the machine at hand.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import hdf5plugin
import numpy as np

#: bitshuffle's block, in bytes: the filter's automatic choice for every element size we store
BITSHUFFLE_BLOCK_BYTES = 8192


class FrameEncoder:
    """Frame -> the chunk bytes the dataset's filter would store.

    A frame may be cut into pieces that compress independently (`split`, `encode`, `join`),
    so one frame keeps every core busy: a step scan's event waits for its frame alone.
    """

    def split(self, frame: np.ndarray) -> list[np.ndarray]:
        return [frame]

    def encode(self, piece: np.ndarray) -> bytes:
        raise NotImplementedError

    def join(self, frame: np.ndarray, encoded: list[bytes]) -> bytes:
        return encoded[0]

    def __call__(self, frame: np.ndarray) -> bytes:
        """The whole frame's chunk, in this thread."""
        return self.join(frame, [self.encode(piece) for piece in self.split(frame)])


@dataclass(frozen=True)
class Codec:
    """One offered compression: the filter the dataset declares, and our encoder for it."""

    name: str
    filter: Callable[[], Mapping[str, Any]]  #: `create_dataset` keyword arguments
    encoder: Callable[[np.dtype, int], FrameEncoder]  #: for a dtype, in up to n pieces


class _BitshuffleLZ4(FrameEncoder):
    """bitshuffle's blocks are compressed one by one: a frame cut at block boundaries gives,
    piece after piece, exactly the bytes of the whole frame."""

    def __init__(self, dtype: np.dtype, pieces: int):
        # One OpenMP thread per call: our pool already has a thread per core, and OpenMP
        # threads on top of it oversubscribe them. libgomp reads this once, when it loads.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import bitshuffle  # not bitshuffle.h5: its wheel bundles another libhdf5

        self._compress = bitshuffle.compress_lz4
        self.block = BITSHUFFLE_BLOCK_BYTES // dtype.itemsize  #: elements
        self.pieces = pieces

    def split(self, frame: np.ndarray) -> list[np.ndarray]:
        flat = frame.reshape(-1)
        blocks = -(-flat.size // self.block)
        step = -(-blocks // self.pieces) * self.block  # whole blocks; the last piece the rest
        return [flat[i : i + step] for i in range(0, flat.size, step)]

    def encode(self, piece: np.ndarray) -> bytes:
        return self._compress(piece, self.block)

    def join(self, frame: np.ndarray, encoded: list[bytes]) -> bytes:
        # The filter's chunk: big-endian (uncompressed bytes, block bytes), then the blocks.
        header = struct.pack(">QI", frame.nbytes, self.block * frame.itemsize)
        return b"".join((header, *encoded))


class _Blosc2(FrameEncoder):
    """One frame per call (its super-chunk frame format has one header for the whole)."""

    def __init__(self, dtype: np.dtype, codec: str, clevel: int, shuffle: str):
        import blosc2

        blosc2.set_releasegil(True)  # compress2 runs outside the GIL; SChunk's methods do not
        self._blosc2 = blosc2
        self.cparams = blosc2.CParams(
            codec=blosc2.Codec[codec.upper()],
            clevel=clevel,
            filters=[blosc2.Filter[shuffle]],
            typesize=dtype.itemsize,
            nthreads=1,  # one frame per pool thread
        )

    def encode(self, frame: np.ndarray) -> bytes:
        # The filter stores a one-chunk super-chunk frame; a bare chunk does not decode.
        # Built contiguous, the frame is one buffer already and to_cframe barely copies.
        chunk = self._blosc2.compress2(frame, cparams=self.cparams)
        schunk = self._blosc2.SChunk(chunksize=frame.nbytes, cparams=self.cparams, contiguous=True)
        schunk.insert_chunk(0, chunk)
        return schunk.to_cframe()


def _blosc2_filter(cname: str, clevel: int, shuffle: str) -> Callable[[], Mapping[str, Any]]:
    return lambda: hdf5plugin.Blosc2(
        cname=cname,  # type: ignore[arg-type]  # one of the names hdf5plugin lists
        clevel=clevel,
        filters=getattr(hdf5plugin.Blosc2, shuffle),
    )


def _blosc2_codec(name: str, cname: str, clevel: int, shuffle: str) -> Codec:
    return Codec(
        name,
        _blosc2_filter(cname, clevel, shuffle),
        lambda dtype, _pieces: _Blosc2(dtype, cname, clevel, shuffle),
    )


CODECS: dict[str, Codec] = {
    c.name: c
    for c in (
        Codec("bitshuffle-lz4", lambda: hdf5plugin.Bitshuffle(cname="lz4"), _BitshuffleLZ4),
        # Blosc2's own bit shuffle + LZ4: the ratio of bitshuffle-lz4 at ~1.5x its speed.
        _blosc2_codec("blosc2-lz4", "lz4", 5, "BITSHUFFLE"),
        # Level 1: on sCMOS frames it keeps nearly all of level 3's ratio at 3-4x the speed.
        _blosc2_codec("blosc2-zstd", "zstd", 1, "SHUFFLE"),
    )
}


def dataset_options(name: str | None) -> dict[str, Any]:
    """Keyword arguments that make `create_dataset` use the named compression (None: none)."""
    return {} if name is None else dict(CODECS[name].filter())


def default_workers() -> int:
    """One compressing thread per core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class ChunkCompressor:
    """Encodes frames into filter-compatible chunks in a thread pool, results in frame order."""

    def __init__(self, name: str, dtype: np.dtype | str, workers: int | None = None):
        if name not in CODECS:
            raise ValueError(
                f"ChunkCompressor needs a compression, one of {', '.join(CODECS)}; got {name!r}"
            )
        self.name = name
        self.workers = workers or default_workers()
        self.encoder = CODECS[name].encoder(np.dtype(dtype), self.workers)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"scmos-{name}")

    def encode(self, frame: np.ndarray) -> bytes:
        """One frame's chunk, in the calling thread."""
        return self.encoder(frame)

    def imap(self, frames: Iterable[np.ndarray]) -> Generator[bytes, None, None]:
        """Chunks for `frames`, in order, with at most two frames per worker in flight.

        Each frame's pieces go to the pool at once, so even a lone frame uses every worker.
        The window bounds memory by the pool, not the batch, and keeps every worker busy
        while the caller writes the chunk before.
        """
        split, encode = self.encoder.split, self.encoder.encode
        window: deque[tuple[np.ndarray, list[Future[bytes]]]] = deque()
        try:
            for frame in frames:
                window.append((frame, [self._pool.submit(encode, p) for p in split(frame)]))
                if len(window) >= 2 * self.workers:
                    yield self._joined(*window.popleft())
            while window:
                yield self._joined(*window.popleft())
        finally:
            for _, futures in window:  # abandoned by the caller: start no frames nobody wants
                for future in futures:
                    future.cancel()

    def _joined(self, frame: np.ndarray, futures: list[Future[bytes]]) -> bytes:
        return self.encoder.join(frame, [future.result() for future in futures])

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ChunkCompressor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
