"""What is measured beside the disk: compression engines in memory, peak memory of a stream
and of its writer, and the RunEngine's events/s with `count`."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ophyd_scmos._bench.cameras import EXPOSURE
from ophyd_scmos._bench.harness import rotated
from ophyd_scmos.catalog.local_server import IDLE_ENV
from ophyd_scmos.config import CONFIG_ENV
from ophyd_scmos.drivers import CameraSettings, SimulatedSCMOS
from ophyd_scmos.pipeline.compression import CODECS, ChunkCompressor, dataset_options
from ophyd_scmos.pipeline.options import PipelineOptions
from ophyd_scmos.pipeline.process import STATUS_THREAD
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


# -- pace: what a scientist waits for between and within short runs ---------------------------
def pace(rounds: int, events: int, scratch: Path) -> dict[str, Any]:
    """The interactive loop, ours beside ophyd.sim's trivial detector in the same process:
    a one-event `count` run (its whole cost: stage, trigger, unstage; also with the run
    written into an embedded catalog by CatalogWriter, as a session does), `count` events/s at
    a 256x256 region with CatalogWriter into an embedded catalog (how long our trigger
    waits in each of those events for its frame to be flushed and measured, and the CPU an
    event costs each thread of this process and the writer's process, `StepCpu`; ophyd-async's
    simulated detector beside them where it is installed), and a full-frame `count` beside a
    movie at the same settings. Beside them in the count, the floor: `FloorDetector`, which
    keeps our guarantee (a step's frame written by another process and flushed when its
    trigger completes) and does nothing else. Every round runs the detectors in a rotated
    order; medians are quoted."""
    from bluesky import RunEngine
    from bluesky.plans import count
    from ophyd.sim import det

    from ophyd_scmos import CatalogWriter, SCMOSCamera, open_catalog
    from ophyd_scmos._bench.floor import FloorDetector
    from ophyd_scmos.plans import movie

    waits: list[float] = []  #: seconds from each trigger to its status done

    class TimedCamera(SCMOSCamera):
        """Keeps how long each trigger's status took in `waits`: the wait a step-scan event
        adds."""

        def trigger(self) -> Any:
            start = time.perf_counter()
            status = super().trigger()
            status.add_callback(lambda _: waits.append(time.perf_counter() - start))
            return status

    RE = RunEngine({})
    small = TimedCamera(
        name="cam", driver=SimulatedSCMOS(shape=(2048, 2048), seed=0), write_dir=scratch / "pace"
    )
    # Memory for every frame of the movie on the camera: it throttles to the writer's pace
    # instead of missing frames, as a count does by waiting.
    camera = SimulatedSCMOS(shape=(2048, 2048), seed=1, camera_buffer_frames=100_000)
    full = SCMOSCamera(name="cam", driver=camera, write_dir=scratch / "pace")
    floor = FloorDetector(name="cam", shape=(256, 256), write_dir=scratch / "pace")
    try:
        small.roi.set((896, 896, 256, 256))
        small.exposure_time.set(1e-5)
        full.exposure_time.set(EXPOSURE)

        def seconds(plan: Any, cpu: list[dict[str, float]] | None = None, pid: int = 0) -> float:
            """Wall seconds of the plan; where its CPU went (`StepCpu`, with the writer process
            `pid`, if any) appended to `cpu`."""
            meter, t0 = StepCpu(pid), time.perf_counter()
            RE(plan)
            if cpu is not None:
                cpu.append(meter.seconds())
            return time.perf_counter() - t0

        def one_event_runs(times: int) -> dict[str, list[float]]:
            """Seconds of `times` one-event runs of each, in rotated order."""
            detectors = {"ophyd.sim det": det, "SCMOSCamera": small}
            runs: dict[str, list[float]] = {name: [] for name in detectors}
            for r in range(times):
                for name in rotated(list(detectors), r):
                    runs[name].append(seconds(count([detectors[name]], num=1)))
            waits.clear()
            return runs

        RE(count([small], num=1))  # the camera's writer starts here, once
        RE(count([floor], num=1))  # and the floor's
        one = one_event_runs(rounds * 10)
        token = RE.subscribe(CatalogWriter(open_catalog(scratch / "pace-catalog")))
        one_catalog = one_event_runs(rounds * 3)
        plans: dict[str, Callable[[], Any]] = {
            "ophyd.sim det": lambda: count([det], num=events),
            "SCMOSCamera": lambda: count([small], num=events),
            FLOOR: lambda: count([floor], num=events),
        }
        peer = _peer_count(events, scratch / "pace")
        if peer is not None:
            plans[PEER] = peer
        writers = {"SCMOSCamera": small._writer, FLOOR: floor._writer}  # started above
        tiled: dict[str, list[float]] = {name: [] for name in plans}
        cpu: dict[str, list[dict[str, float]]] = {name: [] for name in plans}
        for r in range(rounds):
            for name in rotated(list(plans), r):
                writer = writers.get(name)
                pid = 0 if writer is None else writer.pid
                tiled[name].append(events / seconds(plans[name](), cpu[name], pid))
        RE.unsubscribe(token)
        open_s = _open_catalog_seconds(scratch / "pace-catalog", rounds)
        full_frames = max(events // 5, 50)
        RE(count([full], num=1))
        stepped: dict[str, list[float]] = {"count": [], "movie": []}
        full_plans = {
            "count": lambda: count([full], num=full_frames),
            "movie": lambda: movie(full, frames=full_frames),
        }
        for r in range(rounds):
            for name in rotated(list(full_plans), r):
                stepped[name].append(full_frames / seconds(full_plans[name]()))
    finally:
        small.destroy()
        full.destroy()
        floor.destroy()
        shutil.rmtree(scratch / "pace", ignore_errors=True)
        shutil.rmtree(scratch / "pace-catalog", ignore_errors=True)
    return {
        "rounds": rounds,
        "events": events,
        "one_event_run_ms": {k: 1e3 * float(np.median(v)) for k, v in one.items()},
        "one_event_run_ratio": float(
            np.median(np.divide(one["SCMOSCamera"], one["ophyd.sim det"]))
        ),
        "one_event_run_into_catalog_ms": {
            k: 1e3 * float(np.median(v)) for k, v in one_catalog.items()
        },
        "count_256_tiled_events_s": {k: float(np.median(v)) for k, v in tiled.items()},
        "count_256_tiled_ratio": {
            name: float(np.median(np.divide(rates, tiled["ophyd.sim det"])))
            for name, rates in tiled.items()
            if name != "ophyd.sim det"
        },
        "count_256_ours_vs_floor": float(np.median(np.divide(tiled["SCMOSCamera"], tiled[FLOOR]))),
        "count_256_trigger_wait_ms": 1e3 * float(np.median(waits)),
        "count_256_cpu_ms": {name: _per_event_ms(runs, events) for name, runs in cpu.items()},
        "full_frame_per_s": {k: float(np.median(v)) for k, v in stepped.items()},
        "full_frame_count_vs_movie": float(
            np.median(np.divide(stepped["count"], stepped["movie"]))
        ),
        "open_catalog_s": open_s,
        "ipython_prompt_s": _ipython_prompt_seconds(scratch / "pace-home", rounds),
    }


class StepCpu:
    """Where a plan's CPU goes, from its start to `seconds()`: this process's in all (every
    thread, those ended meanwhile too), its Python threads' by role (`THREAD_ROWS`, where
    threads have CPU clocks), and the writer process's (`pid`, 0: none; Linux's /proc). The
    steps of a scan hand each event from thread to thread and process to process, each
    waiting for the one before: this says which of them spends what."""

    def __init__(self, pid: int = 0):
        self.pid = pid
        # The process's clock read before its threads' here and after them at the end: what
        # is left of it for threads that ended (`ENDED`) is never below zero.
        self.process, self.threads = time.process_time_ns(), _threads_cpu_ns()
        self.writer = _process_cpu_ns(pid)

    def seconds(self) -> dict[str, float]:
        threads, process = _threads_cpu_ns(), time.process_time_ns() - self.process
        rows: dict[str, float] = {}
        if threads:
            rows = dict.fromkeys([*THREAD_ROWS.values(), ENDED, OTHER], 0.0)
            lived = 0  # ns of the threads there at both ends; the rest is of threads that ended
            for key, (name, ns) in threads.items():
                if key in self.threads:
                    spent = ns - self.threads[key][1]
                    rows[THREAD_ROWS.get(name, OTHER)] += spent / 1e9
                    lived += spent
            rows[ENDED] = (process - lived) / 1e9
        rows[PROCESS] = process / 1e9
        if self.pid:
            rows[WRITER] = (_process_cpu_ns(self.pid) - self.writer) / 1e9
        return rows


#: the pace section's rows of where a step's CPU goes: threads by name, then the rest
THREAD_ROWS = {
    "bluesky-run-engine": "the RunEngine's thread",
    STATUS_THREAD: "the writer's status thread",
    "scmos-catalog-writer": "the catalog writer's thread",
}
ENDED = "threads of one run (the camera's)"  #: and any thread Python does not know of
OTHER = "other threads"
PROCESS = "this process"
WRITER = "the writer process"


def _threads_cpu_ns() -> dict[tuple[int, int | None], tuple[str, int]]:
    """Each Python thread of this process: its ids -> (its name, its CPU ns so far, from its
    own clock: exact, where /proc's lags a running thread by up to a clock tick); {} where
    threads have no CPU clocks."""
    threads = {}
    for thread in threading.enumerate():
        if thread.ident is None:  # not started
            continue
        with contextlib.suppress(AttributeError, OSError):  # no thread clocks; it ended meanwhile
            clock = time.pthread_getcpuclockid(thread.ident)
            key = (thread.ident, thread.native_id)  # one ends, another may take its ident
            threads[key] = (thread.name, time.clock_gettime_ns(clock))
    return threads


def _process_cpu_ns(pid: int) -> int:
    """CPU ns of all the threads of process `pid` (0, or off Linux: 0), from /proc."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*") if pid else ():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def _per_event_ms(runs: list[dict[str, float]], events: int) -> dict[str, float]:
    """Each `StepCpu` row's median over the runs, in ms per event."""
    return {row: 1e3 * float(np.median([run[row] for run in runs])) / events for row in runs[0]}


#: the nearest peer's detector in the pace section's table
PEER = "ophyd-async SimBlobDetector"
#: the least a device with our guarantee does (`FloorDetector`), in the same table
FLOOR = "floor"


def _peer_count(events: int, directory: Path) -> Callable[[], Any] | None:
    """`count` of ophyd-async's simulated detector (320x240 uint8 frames and their sums,
    written to HDF5 by the RunEngine's own event loop), prepared for the same 10 us exposure
    as ours; None where ophyd-async is not installed (`pip install 'ophyd-async[sim]'`)."""
    try:
        from ophyd_async.core import (
            StaticPathProvider,
            TriggerInfo,
            UUIDFilenameProvider,
            init_devices,
        )
        from ophyd_async.sim import SimBlobDetector
    except ImportError:
        return None
    import bluesky.plan_stubs as bps
    from bluesky.plans import count

    directory.mkdir(parents=True, exist_ok=True)
    with init_devices(set_name=False):
        peer = SimBlobDetector(StaticPathProvider(UUIDFilenameProvider(), directory), name="peer")
    # count stages each run, which forgets a preparation: the first shot prepares
    exposure = TriggerInfo(number_of_events=1, livetime=1e-5, deadtime=1e-6)

    def plan() -> Any:
        prepared = False

        def shot(detectors: Any, take_reading: Any = None) -> Any:
            nonlocal prepared
            if not prepared:
                yield from bps.prepare(peer, exposure, wait=True)
                prepared = True
            yield from bps.one_shot(detectors, take_reading)

        return count([peer], num=events, per_shot=shot)

    return plan


def _open_catalog_seconds(directory: Path, rounds: int) -> float:
    """Median seconds of `open_catalog()` on the existing embedded catalog `directory`, after
    imports (Tiled's client and bluesky-tiled-plugins' client classes: ~2 s here), in a new
    process each time (what `ophyd-scmos runs` or a new session pays)."""
    script = (
        "import sys, time\n"
        "from ophyd_scmos import open_catalog\n"
        "import ophyd_scmos.catalog.embedded, tiled.client, bluesky_tiled_plugins\n"
        "t = time.perf_counter(); open_catalog(sys.argv[1]); print(time.perf_counter() - t)\n"
    )
    times = []
    for _ in range(rounds):
        out = subprocess.run(
            [sys.executable, "-c", script, str(directory)],
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(float(out.stdout.split()[-1]))
    return float(np.median(times))


def _ipython_prompt_seconds(home: Path, rounds: int) -> float:
    """Median seconds from starting `ophyd-scmos ipython` in a terminal (a pseudo-terminal
    here) to its first prompt, as a user whose home is `home` (the first session, which
    creates the catalog and starts its server, is not counted)."""
    env = {
        **{k: v for k, v in os.environ.items() if k != CONFIG_ENV},  # the default profile
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "IPYTHONDIR": str(home / ".ipython"),
        "MPLBACKEND": "Agg",
        IDLE_ENV: "5",  # the catalog's server stops seconds after the last session
    }
    command = [
        sys.executable,
        "-c",
        "import sys; from ophyd_scmos.cli import main; sys.exit(main())",
        "ipython",
    ]
    times = []
    for _ in range(rounds + 1):
        pid, terminal = pty.fork()
        if pid == 0:  # the session, in the pseudo-terminal
            os.execve(sys.executable, command, env)
        started, seen = time.perf_counter(), b""
        try:
            while b"In [" not in seen:
                if not select.select([terminal], [], [], 120)[0]:
                    raise TimeoutError(f"no IPython prompt in 120 s: {seen[-500:]!r}")
                try:
                    seen += os.read(terminal, 1 << 16)
                except OSError:  # EIO: the session ended, its terminal closed
                    said = seen[-2000:].decode(errors="replace")
                    raise RuntimeError(f"IPython ended before its prompt: {said}") from None
            times.append(time.perf_counter() - started)
            os.write(terminal, b"exit\r")
            with contextlib.suppress(OSError):  # the terminal closes with the session
                while select.select([terminal], [], [], 120)[0] and os.read(terminal, 1 << 16):
                    pass
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(terminal)
    shutil.rmtree(home, ignore_errors=True)
    return float(np.median(times[1:]))


# -- live view: what watching costs a recording, and what the page gets ----------------------
#: A page's loop, as a process of its own: asks for the next frame binned to 1024x1024, as
#: fast as they come, says READY at its first, and stops when its stdin closes; then prints
#: updates/s while recording and the median and 95th percentile of frame-to-page latency
#: (the frame's landing in the ring to its bytes here).
_PAGE = """
import json, struct, sys, threading, time
import httpx
base, token = sys.argv[1].split("/?token=")
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
after, ring, latencies, times = 0, "", [], []
with httpx.Client(timeout=10) as client:
    while not stop.is_set():
        params = {"token": token, "after": after, "ring": ring, "width": 1024, "height": 1024}
        r = client.get(base + "/frame", params=params)
        if r.status_code != 200:
            continue
        (size,) = struct.unpack("<I", r.content[:4])
        header = json.loads(r.content[4 : 4 + size])
        if after == 0:
            print("READY", flush=True)
        after, ring = header["delivered"], header["ring"]
        if header["mode"] == "recording":
            latencies.append(time.time() - header["host_time"])
            times.append(time.monotonic())
latencies.sort()
nan = float("nan")
print(json.dumps({
    "updates_s": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else nan,
    "latency_ms_median": 1e3 * latencies[len(latencies) // 2] if latencies else nan,
    "latency_ms_p95": 1e3 * latencies[int(len(latencies) * 0.95)] if latencies else nan,
}))
"""


def live_view(rounds: int, frames: int, scratch: Path) -> dict[str, Any]:
    """Movie frames/s at 2048x2048 and 512x512 with the live view closed and open (a page
    process asking for every newest frame), in an order rotated every round; and what the
    page got."""
    from bluesky import RunEngine

    from ophyd_scmos import SCMOSCamera
    from ophyd_scmos.plans import movie

    RE = RunEngine({})
    results: dict[str, Any] = {"rounds": rounds, "frames": frames}
    for side in (2048, 512):
        camera = SimulatedSCMOS(shape=(side, side), seed=2, camera_buffer_frames=100_000)
        cam = SCMOSCamera(name="cam", driver=camera, write_dir=scratch / "live")
        rates: dict[str, list[float]] = {"closed": [], "open": []}
        pages: list[dict[str, float]] = []
        try:
            cam.trigger_mode.set("internal")
            cam.exposure_time.set(EXPOSURE)
            RE(movie(cam, frames=10))  # the writer starts here, once
            for r in range(rounds):
                for view in rotated(["closed", "open"], r):
                    page = None
                    if view == "open":
                        page = subprocess.Popen(
                            [sys.executable, "-c", _PAGE, str(cam.live())],
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE,
                            text=True,
                        )
                        assert page.stdout is not None
                        page.stdout.readline()  # READY: it has its first frame
                    t0 = time.perf_counter()
                    RE(movie(cam, frames=frames))
                    rates[view].append(frames / (time.perf_counter() - t0))
                    if page is not None:
                        out, _ = page.communicate("", timeout=60)
                        pages.append(json.loads(out))
                        cam.live(False)
                    shutil.rmtree(scratch / "live", ignore_errors=True)
        finally:
            cam.destroy()
            shutil.rmtree(scratch / "live", ignore_errors=True)
        results[f"{side}x{side}"] = {
            "movie_frames_s": {view: float(np.median(r)) for view, r in rates.items()},
            "open_vs_closed": float(np.median(np.divide(rates["open"], rates["closed"]))),
            "page": {key: float(np.median([p[key] for p in pages])) for key in pages[0]},
        }
    return results


# -- statistics: what every frame's statistics cost --------------------------------------------
def statistics_cost(rounds: int, frames: int, events: int, scratch: Path) -> dict[str, Any]:
    """Movie frames/s at 512x512 and 2048x2048, and step-scan (`count`, 256x256) events/s,
    with the statistics on (whole frame and one region) and off, in an order rotated every
    round (the step scan `STEP_ROUNDS` times as many rounds); the step scan also with all nine
    statistics read (the default reads four), and off again: the same setting twice, whose
    ratio shows what the method reads where nothing changed. Then one-event runs, on and off:
    what a short scan pays once.

    Each case is one camera, its settings changed between runs: one writer process and one
    ring for every variant. Two identical cameras without statistics, each with its writer,
    read 0.93-1.20 of each other over six rounds of the same kind (eight runs of it): where the
    scheduler put a camera's processes and threads holds for a run, and on two cores that
    moved a camera's pace more than the statistics cost. One step-scan run against the next
    varies by ~7% on that VM, whether of 200 or 500 events: the rounds are many, and the
    middle half of their ratios is kept beside the median."""
    from bluesky import RunEngine
    from bluesky.plans import count

    from ophyd_scmos import SCMOSCamera
    from ophyd_scmos.pipeline import stats
    from ophyd_scmos.plans import movie

    RE = RunEngine({})
    results: dict[str, Any] = {"rounds": rounds, "frames": frames, "events": events}
    on, off = {"statistics": True, "stats_read": stats.READ}, {"statistics": False}
    cases = [("movie 512x512", 512), ("movie 2048x2048", 2048), ("count 256x256", 256)]
    for label, side in cases:
        step = label.startswith("count")
        variants: dict[str, dict[str, Any]] = {"on": on, "off": off}
        if step:
            variants |= {ALL_READ: {**on, "stats_read": stats.STATS}, OFF_AGAIN: off}
        cam = SCMOSCamera(
            name="cam",
            driver=SimulatedSCMOS(shape=(side, side), seed=3, camera_buffer_frames=100_000),
            write_dir=scratch / "stats",
            rois={"spot": (side // 4, side // 4, side // 2, side // 2)},
        )
        cam.exposure_time.set(1e-5 if step else EXPOSURE)
        rates: dict[str, list[float]] = {variant: [] for variant in variants}
        one_event: dict[str, list[float]] = {"on": [], "off": []}
        try:
            RE(count([cam], num=1))  # the writer starts here, once
            n = events if step else frames
            for r in range(rounds * STEP_ROUNDS if step else rounds):
                for variant in rotated(list(variants), r):
                    plan = count([cam], num=n) if step else movie(cam, frames=n)
                    rates[variant].append(n / _seconds(RE, plan, cam, variants[variant], scratch))
            for r in range(ONE_EVENT_RUNS if step else 0):
                for variant in rotated(list(one_event), r):
                    plan = count([cam], num=1)
                    one_event[variant].append(_seconds(RE, plan, cam, variants[variant], scratch))
        finally:
            cam.destroy()
            shutil.rmtree(scratch / "stats", ignore_errors=True)
        ratios = {v: np.divide(rates[v], rates["off"]) for v in variants if v != "off"}
        results[label] = {
            "rounds": len(rates["off"]),
            "per_s": {k: float(np.median(v)) for k, v in rates.items()},
            **{f"{variant}_vs_off": float(np.median(r)) for variant, r in ratios.items()},
            #: the middle half of the rounds' ratios: how far one round is from the next
            **{
                f"{variant}_vs_off_quartiles": [float(q) for q in np.percentile(r, [25, 75])]
                for variant, r in ratios.items()
            },
        }
        if step:
            results[label]["one_event_run_ms"] = {
                variant: 1e3 * float(np.median(s)) for variant, s in one_event.items()
            }
    return results


def _seconds(RE: Any, plan: Any, cam: Any, settings: dict[str, Any], scratch: Path) -> float:
    """Wall seconds of the plan, run with the camera's `settings`; its file removed after."""
    for setting, value in settings.items():
        setattr(cam, setting, value)
    t0 = time.perf_counter()
    RE(plan)
    elapsed = time.perf_counter() - t0
    shutil.rmtree(scratch / "stats", ignore_errors=True)
    return elapsed


#: the statistics section's step scan runs this many rounds for each round of its movies
STEP_ROUNDS = 4
#: one-event runs with the statistics on, and as many off, after the step scan's rounds
ONE_EVENT_RUNS = 30
#: the statistics section's step scan with every statistic read
ALL_READ = "all nine read"
#: and without statistics a second time in each round: the method's reading where nothing
#: changed
OFF_AGAIN = "off again"
