"""The throughput harness behind `ophyd-scmos bench`: every number against the machine's own.

Absolute rates vary from machine to machine and minute to minute here (page cache, a disk
whose speed flips, other processes), so every variant runs in the same process on the same
disk, in rotated order, after a `sync`, and is quoted as a ratio to a plain file write of the
same bytes measured in the same run. Each burst is timed twice: to the closed file (the page
cache may still hold it) and to the final `fsync` (on disk). Long runs, several times what
the page cache absorbs, make the disk the limit.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ophyd_scmos.drivers import (
    CameraError,
    CameraSettings,
    FrameInfo,
    SimulatedSCMOS,
    TriggerMode,
)
from ophyd_scmos.pipeline.compression import CODECS, ChunkCompressor, dataset_options
from ophyd_scmos.pipeline.stream import FrameStream
from ophyd_scmos.pipeline.writeback import WriteBehind

#: exposure of the simulated frames: realistic counts, and the camera never the bottleneck
EXPOSURE = 0.001
BANK = 8  #: distinct frames a burst cycles through
PLAIN = "plain file write"
PLAIN_BEHIND = "plain, write-behind"


@dataclass(frozen=True)
class Shape:
    """One camera format under test."""

    rows: int
    cols: int
    dtype: str  #: numpy dtype string
    label: str  #: which camera it stands for

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.cols * np.dtype(self.dtype).itemsize

    @property
    def name(self) -> str:
        return f"{self.rows}x{self.cols} {np.dtype(self.dtype).name}"


SHAPES = {
    "orca": Shape(2048, 2048, "u2", "Hamamatsu ORCA-Flash4.0 V3, 100 fps"),
    "kinetix8": Shape(3200, 3200, "u1", "Teledyne Kinetix 8-bit, 500 fps"),
}


@dataclass
class Timing:
    """One variant's burst: medians over repeats."""

    variant: str
    frames: int
    closed_fps: float  #: frames / time to the closed file
    disk_fps: float  #: frames / time to the final fsync
    ratio: float = 1.0  #: raw bytes / bytes in the file
    runs: list[tuple[float, float]] = field(default_factory=list)  #: seconds: closed, fsync
    #: median over rounds of (this / the plain write of the same round): closed, on disk
    vs_plain: tuple[float, float] = (1.0, 1.0)
    #: the same, on disk, against the plain write with write-behind
    vs_behind: float = 1.0


# -- cameras ----------------------------------------------------------------------------------
class EightBitSCMOS:
    """SimulatedSCMOS frames as an 8-bit readout mode delivers them (values clipped at 255).

    Software trigger only, and frames are ready at once (a camera with on-board memory):
    the harness times the host side. Frame k is bank[k % BANK], drawn from the simulator.
    """

    def __init__(self, shape: tuple[int, int], seed: int = 0):
        sim = SimulatedSCMOS(shape=shape, seed=seed)
        sim.open()
        sim.configure(CameraSettings(exposure_time=EXPOSURE))
        self._bank = np.stack([np.minimum(sim.expected_frame(k), 255) for k in range(BANK)])
        self._bank = self._bank.astype(np.uint8)
        self._cond = threading.Condition()
        self._queued = self._next = 0
        self._running = False
        self._t0 = 0.0
        self.settings = CameraSettings(exposure_time=EXPOSURE)

    model = "Simulated sCMOS, 8-bit mode"
    dtype = np.dtype(np.uint8)

    @property
    def sensor_shape(self) -> tuple[int, int]:
        return self._bank.shape[1:]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self._bank.shape[1:]

    def open(self) -> None:
        """Nothing to open: the frames were drawn in __init__."""

    def close(self) -> None:
        self.stop()

    def configure(self, settings: CameraSettings) -> None:
        self.settings = settings

    def start(self) -> None:
        with self._cond:
            self._queued = self._next = 0
            self._running, self._t0 = True, time.monotonic()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()

    def software_trigger(self, frames: int = 1) -> None:
        with self._cond:
            self._queued += frames
            self._cond.notify_all()

    def read_into(self, out: np.ndarray, timeout: float) -> FrameInfo:
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._next < self._queued or not self._running, timeout
            ):
                raise TimeoutError(f"no frame within {timeout} s")
            if not self._running:
                raise CameraError("camera stopped")
            k = self._next
            self._next += 1
        np.copyto(out, self._bank[k % BANK])
        return FrameInfo(k, time.monotonic() - self._t0)

    def expected_frame(self, k: int) -> np.ndarray:
        return self._bank[k % BANK].copy()


def make_camera(shape: Shape, buffer_frames: int) -> SimulatedSCMOS | EightBitSCMOS:
    """A software-triggered camera whose on-board buffer holds the whole burst."""
    if shape.dtype == "u1":
        cam: Any = EightBitSCMOS((shape.rows, shape.cols))
    else:
        cam = SimulatedSCMOS(
            shape=(shape.rows, shape.cols), seed=0, camera_buffer_frames=max(1, buffer_frames)
        )
        cam.open()
        cam.configure(CameraSettings(exposure_time=EXPOSURE))
    return cam


def bank_of(cam: Any) -> np.ndarray:
    return np.stack([cam.expected_frame(k) for k in range(BANK)])


# -- variants: each returns (seconds to closed file, seconds to fsync), path of its file -----
def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def memcpy(bank: np.ndarray, n: int) -> float:
    """Seconds to copy n frames once: a camera driver's cost of filling a ring slot."""
    out = np.empty_like(bank[0])
    t0 = time.perf_counter()
    for k in range(n):
        np.copyto(out, bank[k % len(bank)])
    return time.perf_counter() - t0


def plain_write(
    bank: np.ndarray, n: int, path: Path, write_behind: bool = False
) -> tuple[float, float]:
    """The disk's limit: the same bytes appended to a plain binary file (as `dd` does), or
    with the write-behind our writer uses (the best this machine does with them)."""
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        behind = WriteBehind(f.fileno())
        for k in range(n):
            f.write(bank[k % len(bank)])
            if write_behind:
                behind.advance(f.tell())
        closed = time.perf_counter()
        os.fsync(f.fileno())
    return closed - t0, time.perf_counter() - t0


def _naive_writer(path: str, queue: mp.Queue) -> None:
    """The hand-rolled approach: pickled frames through a Queue, stacked on the last axis."""
    with h5py.File(path, "w") as f:
        dset = None
        i = 0
        while (frame := queue.get()) is not None:
            if dset is None:
                dset = f.create_dataset(
                    "image", (*frame.shape, 100), maxshape=(*frame.shape, None), dtype=frame.dtype
                )
            if i == dset.shape[2]:
                dset.resize(i + 100, axis=2)
            dset[:, :, i] = frame
            i += 1


def naive(shape: Shape, n: int, path: Path) -> tuple[float, float]:
    cam = make_camera(shape, n)
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    writer = ctx.Process(target=_naive_writer, args=(str(path), queue))
    writer.start()
    frame = np.empty(cam.frame_shape, cam.dtype)
    cam.start()
    t0 = time.perf_counter()
    cam.software_trigger(n)
    for _ in range(n):
        cam.read_into(frame, timeout=10)
        queue.put(frame)
    queue.put(None)
    writer.join()
    closed = time.perf_counter()
    fsync_path(path)
    cam.stop()
    return closed - t0, time.perf_counter() - t0


def ours(
    shape: Shape, n: int, path: Path, compression: str | None, write_limit_mb_s: float | None = None
) -> tuple[float, float]:
    cam = make_camera(shape, n)
    stream = FrameStream(
        cam, path, ring_mb=256, compression=compression, write_limit_mb_s=write_limit_mb_s
    )
    stream.open()
    t0 = time.perf_counter()
    cam.software_trigger(n)
    stream.wait(n)
    summary = stream.close()
    closed = time.perf_counter()
    fsync_path(path)
    if summary.frames_written != n:
        raise RuntimeError(f"{compression or 'uncompressed'}: wrote {summary.frames_written}/{n}")
    return closed - t0, time.perf_counter() - t0


def variant_name(compression: str | None) -> str:
    return f"ours, {compression or 'uncompressed'}"


def burst(
    shape: Shape, n: int, scratch: Path, repeat: int, variants: list[str | None]
) -> list[Timing]:
    """Plain writes, the naive baseline and our pipeline per compression: medians."""
    bank = bank_of(make_camera(shape, 1))
    jobs: dict[str, Callable[[Path], tuple[float, float]]] = {
        PLAIN: lambda p: plain_write(bank, n, p),
        PLAIN_BEHIND: lambda p: plain_write(bank, n, p, write_behind=True),
    }
    jobs["naive mp.Queue + h5py"] = lambda p: naive(shape, n, p)
    for c in variants:
        jobs[variant_name(c)] = lambda p, c=c: ours(shape, n, p, c)
    # Untimed warm-up of the same size: on this VM the first writer to touch memory the guest
    # has not used for a while pays several times the kernel time, whichever variant it is.
    plain_write(bank, n, scratch / "warm-up.bin")
    (scratch / "warm-up.bin").unlink()
    runs, sizes = _rounds(jobs, scratch, repeat)
    out = _timings(shape, n, runs, sizes)
    for timing in out:
        timing.vs_plain = _paired(timing.runs, runs[PLAIN])
        timing.vs_behind = _paired(timing.runs, runs[PLAIN_BEHIND])[1]
    return out


def _rounds(
    jobs: dict[str, Callable[[Path], tuple[float, float]]], scratch: Path, repeat: int
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, int]]:
    """Each job `repeat` times, in an order rotated every round, after a `sync` (each meets
    the same page cache): its (closed, fsync) seconds per round, and its file's size."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in jobs}
    sizes: dict[str, int] = {}
    names = list(jobs)
    for r in range(repeat):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            path = scratch / "bench.out"
            os.sync()
            runs[name].append(jobs[name](path))
            sizes[name] = path.stat().st_size
            path.unlink()
    return runs, sizes


def _timings(
    shape: Shape, n: int, runs: dict[str, list[tuple[float, float]]], sizes: dict[str, int]
) -> list[Timing]:
    """Medians of each job's rounds; compression ratios of our files."""
    out = []
    for name, times in runs.items():
        closed, disk = (statistics.median(t[i] for t in times) for i in (0, 1))
        ratio = n * shape.frame_bytes / sizes[name] if name.startswith("ours") else 1.0
        out.append(Timing(name, n, n / closed, n / disk, ratio, times))
    return out


def _paired(times: list[tuple[float, float]], plain: list[tuple[float, float]]) -> tuple:
    """Median of per-round ratios (closed, on disk): the disk drifts less within a round."""
    return tuple(
        statistics.median(p[i] / t[i] for t, p in zip(times, plain, strict=True)) for i in (0, 1)
    )


def capped(
    shape: Shape, n: int, scratch: Path, repeat: int, cap_mb_s: float, variants: list[str | None]
) -> list[Timing]:
    """Our pipeline on a disk no faster than `cap_mb_s` (the writer paces its writes): what
    compression buys where the disk, not the CPU, is the limit. Medians to the final fsync."""
    jobs = {variant_name(c): lambda p, c=c: ours(shape, n, p, c, cap_mb_s) for c in variants}
    return _timings(shape, n, *_rounds(jobs, scratch, repeat))


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


# -- sustained free run -----------------------------------------------------------------------
def sustained(
    shape: Shape,
    rate: float,
    seconds: float,
    compression: str | None,
    scratch: Path,
    ring_mb: float = 256,
) -> dict[str, Any]:
    """Free-run the camera at `rate` for `seconds`; count every frame lost, and where."""
    free = shutil.disk_usage(scratch).free
    need = rate * seconds * shape.frame_bytes
    if need > 0.8 * free:  # a full disk measures the disk-full path, not throughput
        seconds = 0.8 * free / (rate * shape.frame_bytes)
    cam = SimulatedSCMOS(shape=(shape.rows, shape.cols), seed=0)
    cam.open()
    cam.configure(
        CameraSettings(
            exposure_time=EXPOSURE, acquire_period=1 / rate, trigger_mode=TriggerMode.INTERNAL
        )
    )
    path = scratch / "sustained.h5"
    os.sync()
    stream = FrameStream(cam, path, ring_mb=ring_mb, overflow="drop", compression=compression)
    stream.open()  # the camera free-runs from here
    t0 = time.perf_counter()
    fill = 0.0
    while (elapsed := time.perf_counter() - t0) < seconds:
        time.sleep(min(0.25, seconds - elapsed))
        fill = max(fill, stream.ring_fill)
    summary = stream.close()
    drained = time.perf_counter() - t0
    fsync_path(path)
    on_disk = time.perf_counter() - t0
    size = path.stat().st_size
    path.unlink()
    taken = summary.frames_acquired + summary.frames_dropped + summary.frames_missed
    return {
        "variant": variant_name(compression),
        "rate": rate,
        "seconds": round(seconds, 1),
        "taken": taken,
        "written": summary.frames_written,
        "dropped": summary.frames_dropped,
        "missed": summary.frames_missed,
        "peak_ring_fill": round(fill, 2),
        "drain_s": round(drained - seconds, 2),
        "fsync_s": round(on_disk - drained, 2),
        "ratio": summary.frames_written * shape.frame_bytes / size if size else 0.0,
    }


# -- memory -----------------------------------------------------------------------------------
def peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM: the high-water mark of this mapping alone (ru_maxrss survives fork and exec)."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024 / 1e6


def memory_probe(frames: int, ring_mb: float, compression: str | None, directory: str) -> dict:
    """Run one small-frame stream in this (fresh) process; peak RSS of it and of its writer."""
    cam = SimulatedSCMOS(shape=(256, 256), seed=0, camera_buffer_frames=frames)
    cam.open()
    cam.configure(CameraSettings(exposure_time=1e-5))
    path = Path(directory) / f"memory-{frames}-{compression}.h5"
    stream = FrameStream(cam, path, ring_mb=ring_mb, compression=compression)
    stream.open()
    done = threading.Event()
    cam.software_trigger(frames)
    stream.wait_for(frames, lambda error: done.set())
    writer_peak = 0.0
    while not done.wait(0.05):
        writer_peak = max(writer_peak, peak_rss_mb(stream.writer.pid))
    while stream.frames_written < frames:  # the writer's work is done; it has not exited yet
        writer_peak = max(writer_peak, peak_rss_mb(stream.writer.pid))
        time.sleep(0.01)
    writer_peak = max(writer_peak, peak_rss_mb(stream.writer.pid))
    summary = stream.close()
    path.unlink()
    return {
        "frames": summary.frames_written,
        "main_peak_mb": peak_rss_mb(),
        "writer_peak_mb": writer_peak,
    }


def memory(
    lengths: list[int], ring_mb: float, compression: str | None, scratch: Path
) -> list[dict]:
    """Each length in a fresh interpreter, so nothing else inflates the peaks."""
    rows = []
    for frames in lengths:
        code = (
            "import json, sys; from ophyd_scmos.pipeline.bench import memory_probe; "
            "print(json.dumps(memory_probe(*json.loads(sys.argv[1]))))"
        )
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
        cam.exposure_time.set(EXPOSURE)
        t0 = time.perf_counter()
        RE(count([cam], num=n))
        rates[f"SCMOSCamera 2048x2048, {compression or 'uncompressed'}"] = n / (
            time.perf_counter() - t0
        )
        shutil.rmtree(scratch / "re")
    return {"events": n, **rates}


@contextlib.contextmanager
def scratch_dir(parent: Path | None) -> Iterator[Path]:
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="scmos-bench-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_json(obj: Any) -> Any:
    return asdict(obj) if isinstance(obj, Timing) else obj
