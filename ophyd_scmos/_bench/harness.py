"""The runs to disk: a plain write, the naive baseline and our pipeline, in bursts, on a capped
disk, and free-running at a camera's rate."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from ophyd_scmos._bench.cameras import EXPOSURE, Shape, bank_of, make_camera
from ophyd_scmos.drivers import CameraSettings, SimulatedSCMOS, TriggerMode
from ophyd_scmos.pipeline.options import DEFAULT_RING_MB, PipelineOptions
from ophyd_scmos.pipeline.stream import FrameStream
from ophyd_scmos.pipeline.writeback import WriteBehind, fsync_path

T = TypeVar("T")

PLAIN = "plain file write"
PLAIN_BEHIND = "plain, write-behind"
NAIVE = "naive mp.Queue + h5py"

#: one variant's run into the file it is given: seconds to the closed file, to the fsync
Job = Callable[[Path], tuple[float, float]]


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


@contextlib.contextmanager
def scratch_dir(parent: Path | None) -> Iterator[Path]:
    """A directory on the disk under test, gone afterwards whatever happened."""
    path = Path(tempfile.mkdtemp(prefix="scmos-bench-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- variants: each returns (seconds to closed file, seconds to fsync) ------------------------
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
        behind.close()
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
    # The default ring, or just the burst's size when it is shorter: no frame of it waits
    # for a slot in either, and there is less memory to set up.
    ring = min(int(DEFAULT_RING_MB * 2**20) // shape.frame_bytes, n)
    options = PipelineOptions(
        ring_frames=max(ring, 2),  # a ring has two slots at least
        compression=compression,
        write_limit_mb_s=write_limit_mb_s,
    )
    stream = FrameStream(cam, path, options=options)
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


# -- bursts -----------------------------------------------------------------------------------
def burst(
    shape: Shape, n: int, scratch: Path, repeat: int, variants: list[str | None]
) -> list[Timing]:
    """Plain writes, the naive baseline and our pipeline per compression: medians."""
    bank = bank_of(make_camera(shape, 1))
    jobs: dict[str, Job] = {
        PLAIN: lambda p: plain_write(bank, n, p),
        PLAIN_BEHIND: lambda p: plain_write(bank, n, p, write_behind=True),
        NAIVE: lambda p: naive(shape, n, p),
    }
    for c in variants:
        jobs[variant_name(c)] = partial(ours, shape, n, compression=c)
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


def capped(
    shape: Shape, n: int, scratch: Path, repeat: int, cap_mb_s: float, variants: list[str | None]
) -> list[Timing]:
    """Our pipeline on a disk no faster than `cap_mb_s` (the writer paces its writes): what
    compression buys where the disk, not the CPU, is the limit. Medians to the final fsync."""
    jobs: dict[str, Job] = {
        variant_name(c): partial(ours, shape, n, compression=c, write_limit_mb_s=cap_mb_s)
        for c in variants
    }
    return _timings(shape, n, *_rounds(jobs, scratch, repeat))


def rotated(items: Sequence[T], r: int) -> list[T]:
    """`items` in the order of round `r`: each round starts one place later, so that no
    variant always runs first or after the same one. A run's place alone moves its rate by up
    to 10% on this VM (the same variant in two places of one round, paired over 8 rounds)."""
    k = r % len(items)
    return [*items[k:], *items[:k]]


def _rounds(
    jobs: dict[str, Job], scratch: Path, repeat: int
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, int]]:
    """Each job `repeat` times, in an order rotated every round, after a `sync` (each meets
    the same page cache): its (closed, fsync) seconds per round, and its file's size."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in jobs}
    sizes: dict[str, int] = {}
    for r in range(repeat):
        for name in rotated(list(jobs), r):
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


def _paired(
    times: list[tuple[float, float]], plain: list[tuple[float, float]]
) -> tuple[float, float]:
    """Median of per-round ratios (closed, on disk): the disk drifts less within a round."""
    closed, disk = (
        statistics.median(p[i] / t[i] for t, p in zip(times, plain, strict=True)) for i in (0, 1)
    )
    return closed, disk


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
    options = PipelineOptions(ring_mb=ring_mb, overflow="drop", compression=compression)
    stream = FrameStream(cam, path, options=options)
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
