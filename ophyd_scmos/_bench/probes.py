"""What is measured beside the disk: compression engines in memory, peak memory of a stream
and of its writer, and the RunEngine's events/s with `count`."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ophyd_scmos._bench.cameras import EXPOSURE
from ophyd_scmos.drivers import CameraSettings, SimulatedSCMOS
from ophyd_scmos.pipeline.compression import CODECS, ChunkCompressor, dataset_options
from ophyd_scmos.pipeline.options import PipelineOptions
from ophyd_scmos.pipeline.stream import FrameStream

# -- compression engines: CPU only, no disk ---------------------------------------------------
_worker: dict[str, Any] = {}


def _attach(name: str, shape: tuple[int, ...], dtype: str, codec: str) -> None:
    shm = shared_memory.SharedMemory(name=name)
    _worker.update(shm=shm, bank=np.ndarray(shape, dtype, shm.buf), encode=None)
    _worker["encode"] = CODECS[codec].encoder(np.dtype(dtype), 1)


def _encode_shared(k: int) -> bytes:
    return _worker["encode"](_worker["bank"][k % len(_worker["bank"])])


def engines(bank: np.ndarray, n: int, workers: int) -> list[dict[str, Any]]:
    """Frames/s each codec compresses: HDF5's filter in h5py, our threads, worker processes."""
    rows = []
    shm = shared_memory.SharedMemory(create=True, size=bank.nbytes)
    try:
        np.ndarray(bank.shape, bank.dtype, shm.buf)[:] = bank
        for codec in CODECS:
            timings = {}
            with h5py.File("mem", "w", driver="core", backing_store=False) as f:
                ds = f.create_dataset(
                    "d",
                    (n, *bank.shape[1:]),
                    bank.dtype,
                    chunks=(1, *bank.shape[1:]),
                    **dataset_options(codec),
                )
                t0 = time.perf_counter()
                for k in range(n):
                    ds[k] = bank[k % len(bank)]
                ds.id.flush()
                timings["hdf5plugin filter in h5py (1 core)"] = time.perf_counter() - t0
            with ChunkCompressor(codec, bank.dtype, workers) as compressor:
                t0 = time.perf_counter()
                for _ in compressor.imap(bank[k % len(bank)] for k in range(n)):
                    pass
                timings[f"ours: {workers} threads"] = time.perf_counter() - t0
            with ProcessPoolExecutor(
                workers,
                mp_context=mp.get_context("spawn"),
                initializer=_attach,
                initargs=(shm.name, bank.shape, bank.dtype.str, codec),
            ) as pool:
                list(pool.map(_encode_shared, range(workers)))  # started and attached
                t0 = time.perf_counter()
                list(pool.map(_encode_shared, range(n), chunksize=1))
                timings[f"{workers} worker processes"] = time.perf_counter() - t0
            for engine, seconds in timings.items():
                rows.append({"codec": codec, "engine": engine, "fps": n / seconds})
    finally:
        shm.close()
        shm.unlink()
    return rows


# -- memory -----------------------------------------------------------------------------------
def peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM: the high-water mark of this mapping alone (ru_maxrss survives fork and exec)."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024 / 1e6


def memory_probe(
    frames: int, ring_mb: float, compression: str | None, directory: str
) -> dict[str, Any]:
    """Run one small-frame stream in this (fresh) process; peak RSS of it and of its writer."""
    cam = SimulatedSCMOS(shape=(256, 256), seed=0, camera_buffer_frames=frames)
    cam.open()
    cam.configure(CameraSettings(exposure_time=1e-5))
    path = Path(directory) / f"memory-{frames}-{compression}.h5"
    options = PipelineOptions(ring_mb=ring_mb, compression=compression)
    stream = FrameStream(cam, path, options=options)
    stream.open()
    writer = stream.writer
    assert writer is not None  # open() started it
    done = threading.Event()
    cam.software_trigger(frames)
    stream.wait_for(frames, lambda error: done.set())
    writer_peak = 0.0
    while not done.wait(0.05):
        writer_peak = max(writer_peak, peak_rss_mb(writer.pid))
    while stream.frames_written < frames:  # the writer's work is done; it has not exited yet
        writer_peak = max(writer_peak, peak_rss_mb(writer.pid))
        time.sleep(0.01)
    writer_peak = max(writer_peak, peak_rss_mb(writer.pid))
    summary = stream.close()
    path.unlink()
    return {
        "frames": summary.frames_written,
        "main_peak_mb": peak_rss_mb(),
        "writer_peak_mb": writer_peak,
    }


def memory(
    lengths: list[int], ring_mb: float, compression: str | None, scratch: Path
) -> list[dict[str, Any]]:
    """Each length in a fresh interpreter, so nothing else inflates the peaks."""
    code = (
        f"import json, sys; from {__name__} import memory_probe; "
        "print(json.dumps(memory_probe(*json.loads(sys.argv[1]))))"
    )
    rows = []
    for frames in lengths:
        args = json.dumps([frames, ring_mb, compression, str(scratch)])
        out = subprocess.run(
            [sys.executable, "-c", code, args], capture_output=True, text=True, check=True
        ).stdout
        rows.append(
            {
                "compression": compression or "none",
                "ring_mb": ring_mb,
                **json.loads(out.splitlines()[-1]),
            }
        )
    return rows


# -- RE(count) --------------------------------------------------------------------------------
def re_count(n: int, scratch: Path) -> dict[str, float]:
    """Events/s of count with ophyd.sim's trivial detector, and with our camera (full frames),
    uncompressed and with bitshuffle-lz4 (a step scan's frame compressed on every core)."""
    from bluesky import RunEngine
    from bluesky.plans import count
    from ophyd.sim import det

    from ophyd_scmos import SCMOSCamera

    RE = RunEngine({})
    t0 = time.perf_counter()
    RE(count([det], num=n))
    rates = {"ophyd.sim det": n / (time.perf_counter() - t0)}
    driver = SimulatedSCMOS(shape=(2048, 2048), seed=0)
    for compression in (None, "bitshuffle-lz4"):
        cam = SCMOSCamera(
            name="cam", driver=driver, write_dir=scratch / "re", compression=compression
        )
        try:
            cam.exposure_time.set(EXPOSURE)
            t0 = time.perf_counter()
            RE(count([cam], num=n))
            rates[f"SCMOSCamera 2048x2048, {compression or 'uncompressed'}"] = n / (
                time.perf_counter() - t0
            )
        finally:
            cam.destroy()
        shutil.rmtree(scratch / "re")
    return {"events": n, **rates}
