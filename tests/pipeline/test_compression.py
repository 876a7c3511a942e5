"""Our precompressed chunks: bit-exact, and readable by anyone with h5py + hdf5plugin alone."""

from __future__ import annotations

import io
import subprocess
import sys

import h5py
import hdf5plugin  # noqa: F401 - registers the filters for reading
import numpy as np
import pytest

from ophyd_scmos.drivers import CameraSettings, SimulatedSCMOS
from ophyd_scmos.pipeline import CODECS, FrameStream, layout
from ophyd_scmos.pipeline.compression import ChunkCompressor, dataset_options
from ophyd_scmos.pipeline.options import PipelineOptions
from tests.conftest import expected_frames


def camera_frames(shape: tuple[int, int], n: int, dtype: str) -> np.ndarray:
    """Realistic frames (noise, spots); uint8 ones as an 8-bit camera mode would clip them."""
    cam = SimulatedSCMOS(shape=shape, seed=11)
    cam.open()
    cam.configure(CameraSettings(exposure_time=0.002))
    frames = expected_frames(cam, n)
    return np.minimum(frames, 255).astype(np.uint8) if dtype == "u1" else frames


@pytest.mark.parametrize("dtype", ["u2", "u1"])
@pytest.mark.parametrize("codec", sorted(CODECS))
def test_precompressed_chunks_read_back_bit_exact_through_the_declared_filter(
    tmp_path, codec, dtype
):
    # 37x53: a frame that is not a whole number of compression blocks
    frames = camera_frames((37, 53), 5, dtype)
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f, ChunkCompressor(codec, dtype) as compressor:
        ds = f.create_dataset(
            "d", shape=frames.shape, chunks=(1, 37, 53), dtype=dtype, **dataset_options(codec)
        )
        for i, chunk in enumerate(compressor.imap(frames)):
            ds.id.write_direct_chunk((i, 0, 0), chunk)
    with h5py.File(path, "r") as f:
        assert f["d"].id.get_create_plist().get_nfilters() == 1
        np.testing.assert_array_equal(f["d"][()], frames)


@pytest.mark.parametrize("dtype", ["u2", "u1"])
def test_bitshuffle_chunks_are_the_bytes_the_filter_itself_stores(tmp_path, dtype):
    # 150x157: several bitshuffle blocks, a partial one, and a tail that is not a multiple of 8
    frame = camera_frames((150, 157), 1, dtype)[0]
    with h5py.File(tmp_path / "b.h5", "w") as f:
        ds = f.create_dataset(
            "d",
            shape=(1, *frame.shape),
            chunks=(1, *frame.shape),
            dtype=dtype,
            **dataset_options("bitshuffle-lz4"),
        )
        ds[0] = frame
        _, stored = ds.id.read_direct_chunk((0, 0, 0))
    for workers in (1, 2, 3, 5):  # the frame cut into that many pieces, compressed apart
        with ChunkCompressor("bitshuffle-lz4", dtype, workers=workers) as compressor:
            pieces = compressor.encoder.split(frame)
            assert len(pieces) <= workers and (len(pieces) > 1) == (workers > 1)
            np.testing.assert_array_equal(np.concatenate(pieces), frame.reshape(-1))
            assert compressor.encode(frame) == stored
            assert list(compressor.imap([frame, frame])) == [stored, stored]


def test_compression_pays_on_camera_frames():
    frame = camera_frames((256, 256), 1, "u2")[0]
    for codec in CODECS:
        with ChunkCompressor(codec, "u2") as compressor:
            assert len(compressor.encode(frame)) < frame.nbytes / 1.5, codec


def test_chunks_come_in_frame_order_with_a_bounded_number_in_flight():
    frames = [np.full((16, 16), k, np.uint16) for k in range(50)]
    pulled = 0

    def source():
        nonlocal pulled
        for frame in frames:
            pulled += 1
            yield frame

    with ChunkCompressor("bitshuffle-lz4", "u2", workers=2) as compressor:
        chunks = compressor.imap(source())
        first = next(chunks)
        assert pulled <= 4  # two frames a worker, however long the batch
        decoded = [first, *chunks]
    with ChunkCompressor("bitshuffle-lz4", "u2", workers=1) as one:
        assert decoded == [one.encode(f) for f in frames]


def test_none_is_not_a_compressor():
    with pytest.raises(ValueError, match="needs a compression"):
        ChunkCompressor("none", "u2")


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_a_stream_whose_ring_wraps_stores_every_frame_compressed(tmp_path, codec):
    cam = SimulatedSCMOS(shape=(96, 128), seed=5, camera_buffer_frames=200)
    cam.open()
    cam.configure(CameraSettings(exposure_time=0.0005))
    path = tmp_path / "run.h5"
    stream = FrameStream(
        cam, path, PipelineOptions(ring_mb=0.2, compression=codec)
    )  # 8 slots, 200 frames
    stream.open()
    cam.software_trigger(200)
    stream.wait(200, timeout=60)
    summary = stream.close()
    assert (summary.frames_written, summary.frames_dropped, summary.frames_missed) == (200, 0, 0)
    # a reader with nothing of ours: plain h5py + hdf5plugin in a fresh interpreter
    reader = (
        "import sys, h5py, hdf5plugin, numpy as np\n"
        "with h5py.File(sys.argv[1], 'r') as f:\n"
        f"    np.save(sys.stdout.buffer, f['{layout.DATA}'][()])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", reader, str(path)], capture_output=True, check=True
    ).stdout
    np.testing.assert_array_equal(np.load(io.BytesIO(out)), expected_frames(cam, 200))
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f[layout.FRAME_NUMBER][()], np.arange(200))
        assert f[layout.DATA].id.get_storage_size() < 200 * 96 * 128 * 2 / 1.5
