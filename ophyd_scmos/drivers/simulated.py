"""A software sCMOS camera: realistic, deterministic frames at well over 100 fps, no hardware.

Noise is expensive (a Poisson draw over 4 Mpx takes ~0.2 s), so at `start` the camera draws a
small bank of noisy frames for the current settings and composes each delivered frame from
horizontal strips of bank frames. The scene stays put (every bank frame shares the same mean),
every pixel is a true shot + read noise sample, consecutive frames differ in every strip, and
frame k is a pure function of (seed, settings, bank_size, k): tests can check every pixel with
`expected_frame`.

Timing mimics a real camera: frames are due on the camera's clock at a fixed interval, a slow
reader loses the oldest frames once the on-camera buffer is full, and a reader blocked in
`read_into` is woken by `stop` (it raises `CameraError`).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ._common import DriverBase
from .base import ROI, CameraError, CameraLimits, CameraSettings, FrameInfo, TriggerMode

__all__ = ["SimulatedSCMOS"]

# Like an sCMOS in a lab: exposures up to 10 s, a frame at least once an hour in free run.
LIMITS = CameraLimits(
    exposure_range=(0.0, 10.0), period_range=(0.0, 3600.0), binnings=(1, 2, 4), bit_depths=(12, 16)
)
_N_STRIPS = 16
_CHUNK_ROWS = 256  # rows drawn at once while building the bank; a multiple of every binning
# Tags that keep the scene, strip schedule and noise streams of one seed independent.
_TAG_SCENE, _TAG_STRIPS, _TAG_NOISE = 0, 1, 2


@dataclass(frozen=True)
class _BankKey:
    """The settings that change pixel values (not timing), so a period change keeps the bank."""

    exposure_time: float
    roi: ROI
    binning: int
    bit_depth: int


class _FrameBank:
    """K noisy frames plus the strip schedule that composes frame k from them."""

    def __init__(self, frames: np.ndarray, seed: int) -> None:
        self.frames = frames
        k, rows, _ = frames.shape
        bounds = np.unique(np.linspace(0, rows, min(_N_STRIPS, rows) + 1).astype(int))
        rng = np.random.default_rng([seed, _TAG_STRIPS])
        starts = rng.integers(0, k, len(bounds) - 1)
        # Each bank cycle shifts a strip's source by a step in 1..K-2, so frame k + K differs
        # from frame k while frames k and k + 1 still never share a strip (needs K >= 3).
        steps = rng.integers(1, k - 1, len(bounds) - 1) if k >= 3 else np.zeros(len(bounds) - 1)
        self._strips = [
            (int(lo), int(hi), int(start), int(step))
            for lo, hi, start, step in zip(bounds[:-1], bounds[1:], starts, steps, strict=True)
        ]

    def compose(self, k: int, out: np.ndarray) -> None:
        """Write frame k into `out`: one slice copy per strip, no full-frame temporaries."""
        n = len(self.frames)
        cycle = k // n
        for lo, hi, start, step in self._strips:
            np.copyto(out[lo:hi], self.frames[(k + start + cycle * step) % n, lo:hi])


class SimulatedSCMOS(DriverBase):
    """A simulated sCMOS camera with the `CameraDriver` interface.

    Model: gain `GAIN` e-/ADU, read noise `READ_NOISE` e- rms, offset `OFFSET` ADU per sensor
    pixel (binned pixels are sums, so their offset is `OFFSET * binning**2`). `missed_frames`
    counts frames lost to a full camera buffer. What it can do: `LIMITS`.

    Errors: invalid settings -> ValueError; configure/start/software_trigger used in the wrong
    state -> RuntimeError; a closed camera, or `read_into` on a stopped camera (also when `stop`
    wakes a blocked reader) -> CameraError; no frame within the timeout -> TimeoutError.
    """

    GAIN = 0.5  #: electrons per ADU
    READ_NOISE = 1.6  #: electrons rms per sensor pixel
    OFFSET = 100.0  #: ADU per sensor pixel

    def __init__(
        self,
        shape: tuple[int, int] = (2048, 2048),
        seed: int = 0,
        *,
        bank_size: int = 8,
        model: str = "Simulated sCMOS",
        camera_buffer_frames: int = 32,
    ) -> None:
        rows, cols = (int(v) for v in shape)
        if rows < 1 or cols < 1:
            raise ValueError(f"shape must be two positive ints; got {shape!r}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0; got {seed!r}")
        if bank_size < 1:
            raise ValueError(f"bank_size must be >= 1; got {bank_size!r}")
        if camera_buffer_frames < 1:
            raise ValueError(f"camera_buffer_frames must be >= 1; got {camera_buffer_frames!r}")
        super().__init__(model, (rows, cols), LIMITS)
        self._seed = int(seed)
        self._bank_size = int(bank_size)
        self._buffer_frames = int(camera_buffer_frames)
        self._bank: _FrameBank | None = None
        self._bank_key: _BankKey | None = None
        self._bank_lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # wakes readers of the driver's lock
        self._open = False
        self._t0 = 0.0
        # Frames queued on the camera's clock: [base, j, end] means frames due at
        # base + j*interval for j in [j, end); end None = free run.
        self._queue: deque[list] = deque()
        self._last_due = 0.0
        self._next_number = 0
        self._pending_missed = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        with self._cond:
            self._open = True

    def _close(self) -> None:
        self._open = False

    def _apply(self, settings: CameraSettings, roi: ROI) -> CameraSettings:
        """Nothing to touch: the noise bank is rebuilt lazily at the next `start`."""
        return settings

    def _start(self) -> None:
        """Frames start coming in INTERNAL mode, once the noise bank is ready."""
        self._ensure_bank()  # slow for big frames, so built before the clock starts
        self._t0 = time.monotonic()
        self._queue.clear()
        self._last_due = self._t0
        self._next_number = 0
        self._pending_missed = 0
        if self._settings.trigger_mode is TriggerMode.INTERNAL:
            self._queue.append([self._t0, 1, None])

    def _stop(self) -> None:
        self._queue.clear()
        self._cond.notify_all()

    # -- acquisition -------------------------------------------------------------------------

    def software_trigger(self, frames: int = 1) -> None:
        """Queue `frames` exposures, each due one interval after the previous (or from now)."""
        self._queue_frames(frames, TriggerMode.SOFTWARE, "software_trigger")

    def fire(self, pulses: int = 1) -> None:
        """Pulse the simulated trigger input (EXTERNAL mode): one frame per pulse.

        Stands in for the hardware line a delay generator or a motion controller drives;
        another device, a timer or a test calls it.
        """
        self._queue_frames(pulses, TriggerMode.EXTERNAL, "fire")

    def _queue_frames(self, frames: int, mode: TriggerMode, caller: str) -> None:
        with self._cond:
            self._check_trigger(frames, mode, caller)
            if frames == 0:
                return
            now = time.monotonic()
            if self._queue and self._last_due >= now:
                self._queue[-1][2] += frames  # back to back with the frames still exposing
            else:
                self._queue.append([max(now, self._last_due), 1, frames + 1])
            base, _, end = self._queue[-1]
            self._last_due = base + (end - 1) * self._settings.frame_interval
            self._cond.notify_all()

    def _read(self, out: np.ndarray, timeout: float) -> FrameInfo:
        """Wait for the next frame and write it into `out` (shape `frame_shape`, uint16)."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while True:
                self._require_open()
                if not self._running:
                    raise CameraError("camera stopped")
                now = time.monotonic()
                self._drop_overflow(now)
                due = self._next_due()
                if due is not None and due <= now:
                    break
                if now >= deadline:
                    raise TimeoutError(f"no frame within {timeout} s")
                self._cond.wait((deadline if due is None else min(due, deadline)) - now)
            info = FrameInfo(self._next_number, due - self._t0, self._pending_missed)
            self._pop(1)
            self._pending_missed = 0
            bank = self._bank
        assert bank is not None  # built by start()
        bank.compose(info.frame_number, out)
        return info

    def expected_frame(self, k: int) -> np.ndarray:
        """Frame number k for the current settings, exactly as `read_into` delivers it."""
        if k < 0:
            raise ValueError(f"frame number must be >= 0; got {k}")
        bank = self._ensure_bank()
        out = np.empty(self.frame_shape, np.uint16)
        bank.compose(k, out)
        return out

    def mean_frame(self) -> np.ndarray:
        """Noise-free mean in ADU (float, unclipped) for the current settings: truth for tests."""
        s = self._settings
        b = s.binning
        electrons = self._photon_flux(self._roi_of(s)) * s.exposure_time
        rows, cols = electrons.shape
        binned = electrons.reshape(rows // b, b, cols // b, b).sum(axis=(1, 3))
        return binned / self.GAIN + self.OFFSET * b * b

    # -- internals ---------------------------------------------------------------------------

    def _require_open(self) -> None:
        if not self._open:
            raise CameraError("camera is closed; call open() first")

    def _next_due(self) -> float | None:
        if not self._queue:
            return None
        base, j, _ = self._queue[0]
        return base + j * self._settings.frame_interval

    def _pop(self, n: int) -> None:
        """Take the n oldest queued frames off the camera (delivered or lost)."""
        self._next_number += n
        while n:
            seg = self._queue[0]
            take = n if seg[2] is None else min(n, seg[2] - seg[1])
            seg[1] += take
            n -= take
            if seg[2] is not None and seg[1] >= seg[2]:
                self._queue.popleft()

    def _drop_overflow(self, now: float) -> None:
        """Lose the oldest finished frames beyond the camera buffer, as a real camera does."""
        interval = self._settings.frame_interval
        done = 0
        for base, j, end in self._queue:
            if base + j * interval > now:
                break
            n = int((now - base) / interval) - j + 1
            if end is not None and n >= end - j:
                done += end - j
                continue
            done += n
            break
        excess = done - self._buffer_frames
        if excess > 0:
            self._pop(excess)
            self._pending_missed += excess
            self._missed_total += excess

    def _photon_flux(self, roi: ROI) -> np.ndarray:
        """Photons per second per sensor pixel over `roi`: gradient background + Gaussian spots.

        Only the ROI is computed; the scene is defined on the whole sensor from the seed alone.
        """
        rows, cols = self._sensor
        rng = np.random.default_rng([self._seed, _TAG_SCENE])
        r = (np.arange(roi.y, roi.y + roi.height) + 0.5) / rows
        c = (np.arange(roi.x, roi.x + roi.width) + 0.5) / cols
        # A dim background from 20 to ~400 photons/s, so short exposures sit near the offset.
        gr, gc = rng.uniform(50.0, 200.0, 2)
        flux = 20.0 + gr * r[:, None] + gc * c[None, :]
        n_spots = int(rng.integers(4, 8))
        for _ in range(n_spots):
            cy, cx = rng.uniform(0.1, 0.9, 2)
            sigma = rng.uniform(0.02, 0.08)
            peak = rng.uniform(0.3, 1.0) * 2e5  # 10 ms -> up to 2000 e-, ~4000 ADU
            gy = np.exp(-0.5 * ((r - cy) * rows / (sigma * min(rows, cols))) ** 2)
            gx = np.exp(-0.5 * ((c - cx) * cols / (sigma * min(rows, cols))) ** 2)
            flux += peak * gy[:, None] * gx[None, :]
        return flux

    def _ensure_bank(self) -> _FrameBank:
        """Build (or reuse) the noise bank for the current settings."""
        s = self._settings
        key = _BankKey(s.exposure_time, self._roi_of(s), s.binning, s.bit_depth)
        with self._bank_lock:
            if self._bank is None or self._bank_key != key:
                self._bank = self._build_bank(key)
                self._bank_key = key
            return self._bank

    def _build_bank(self, key: _BankKey) -> _FrameBank:
        roi, b = key.roi, key.binning
        electrons_mean = self._photon_flux(roi) * key.exposure_time
        frames = np.empty((self._bank_size, roi.height // b, roi.width // b), np.uint16)
        top = float(2**key.bit_depth - 1)
        offset = self.OFFSET * b * b

        def draw(j: int) -> None:
            # One generator per bank frame: the result does not depend on thread scheduling.
            rng = np.random.default_rng([self._seed, _TAG_NOISE, j])
            for lo in range(0, roi.height, _CHUNK_ROWS):
                lam = electrons_mean[lo : lo + _CHUNK_ROWS]
                e = rng.poisson(lam).astype(np.float32)
                e += rng.standard_normal(lam.shape, dtype=np.float32) * np.float32(self.READ_NOISE)
                h, w = e.shape
                adu = e.reshape(h // b, b, w // b, b).sum(axis=(1, 3)) / np.float32(self.GAIN)
                adu += np.float32(offset)
                np.clip(np.rint(adu, out=adu), 0.0, top, out=adu)
                frames[j, lo // b : (lo + h) // b] = adu

        workers = min(self._bank_size, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(draw, range(self._bank_size)))
        return _FrameBank(frames, self._seed)
