"""A software sCMOS camera: realistic, deterministic frames at well over 100 fps, no hardware.

Noise is expensive (a Poisson draw over 4 Mpx takes ~0.2 s), so at `start` the camera draws a
small bank of noisy frames for the current settings and composes each delivered frame from
horizontal strips of bank frames. The scene stays put (every bank frame shares the same mean),
every pixel is a true shot + read noise sample, consecutive frames differ in every strip, and
frame k is a pure function of (seed, settings, bank_size, k): tests can check every pixel with
`expected_frame`.

A `Spot` (a sample to align) adds a bright Gaussian whose place and brightness follow motors or
signals: each frame reads them when it is taken and draws the spot's light over a small patch
of the composed frame, so the pace stays the bank's. The spot each frame was taken with is
recorded (`frame_spot`), and `expected_frame(k)` still gives frame k exactly.

Timing mimics a real camera: frames are due on the camera's clock at a fixed interval, a slow
reader loses the oldest frames once the on-camera buffer is full, and a reader blocked in
`read_into` is woken by `stop` (it raises `CameraError`).
"""

from __future__ import annotations

import bisect
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ._common import DriverBase, _is_number
from .base import ROI, CameraError, CameraLimits, CameraSettings, FrameInfo, TriggerMode

__all__ = ["BEAM_EDGE", "SimulatedSCMOS", "Spot", "SpotSource", "sample_on_stage"]

# Like an sCMOS in a lab: exposures from 1 us (the fastest sCMOS's few us) up to 10 s, a frame
# at least once an hour in free run.
LIMITS = CameraLimits(
    exposure_range=(1e-6, 10.0), period_range=(0.0, 3600.0), binnings=(1, 2, 4), bit_depths=(12, 16)
)
_N_STRIPS = 16
_CHUNK_ROWS = 256  # rows drawn at once while building the bank; a multiple of every binning
# Tags that keep the scene, strip schedule and noise streams of one seed independent.
_TAG_SCENE, _TAG_STRIPS, _TAG_NOISE, _TAG_SPOT = 0, 1, 2, 3
# A spot lights the sensor pixels within this many of its sigmas of its centre; beyond, its
# Gaussian is below 4e-6 of its peak.
_SPOT_REACH = 5.0
#: `sample_on_stage`: the beam is cut (an aperture) this many beam widths from its axis.
BEAM_EDGE = 4.0


class _Positioner(Protocol):
    @property
    def position(self) -> Any: ...


class _Signal(Protocol):
    def get(self) -> Any: ...


#: A number, or where one is read each time a frame is taken: a positioner's `position` (an
#: ophyd motor, `ophyd.sim.SynAxis`), a signal's `get()`, or a function of no arguments.
SpotSource = float | _Positioner | _Signal | Callable[[], float]


def _check_source(name: str, source: object) -> None:
    if _is_number(source):
        _checked(name, float(source))  # type: ignore[arg-type]
    elif not (hasattr(source, "position") or hasattr(source, "get") or callable(source)):
        raise ValueError(
            f"spot {name} must be a number, a positioner, a signal or a function; got {source!r}"
        )


def _checked(name: str, value: float, source: object = None) -> float:
    """`value` if a spot can take it as its `name`; ValueError naming it otherwise."""
    if not math.isfinite(value) or (name == "brightness" and value < 0):
        allowed = "a number >= 0" if name == "brightness" else "a finite number"
        origin = "" if source is None else f" from {getattr(source, 'name', source)!r}"
        raise ValueError(f"spot {name}{origin} is {value!r}; it must be {allowed}")
    return value


def _value(name: str, source: SpotSource) -> float:
    """The number a source holds now."""
    if _is_number(source):
        value = source
    elif hasattr(source, "position"):
        value = source.position
    elif hasattr(source, "get"):
        value = source.get()
    else:
        value = source()  # type: ignore[operator]
    return _checked(name, float(value), source)  # type: ignore[arg-type]


#: the narrowest spot (sensor pixels): sampled at pixel centres, it lights a pixel wherever it is
MIN_SPOT_SIGMA = 0.5


@dataclass(frozen=True)
class Spot:
    """A bright 2-D Gaussian over the scene: a sample to align.

    `x`, `y`: its centre in sensor pixels, column and row, a pixel's centre at its index (as
    the statistics count centroids). `brightness`: photons per second on the centre pixel
    (3e6: 60 000 ADU in 10 ms, just within 16 bits, and a total that stands out of the
    noise of a whole 2048x2048 frame). Each is a number or a `SpotSource`, read when a frame
    is taken, so the spot follows the motors or signals that drive it. `sigma`: its width,
    sensor pixels, at least half a pixel (the spot is sampled at pixel centres: a narrower
    one between two pixels would light neither); it lights the pixels within 5 sigma of its
    centre.
    """

    x: SpotSource
    y: SpotSource
    brightness: SpotSource = 3e6
    sigma: float = 3.0

    def __post_init__(self) -> None:
        sigma = self.sigma
        if not (_is_number(sigma) and math.isfinite(sigma) and sigma >= MIN_SPOT_SIGMA):
            raise ValueError(
                f"spot sigma must be a number of sensor pixels >= {MIN_SPOT_SIGMA} (the spot "
                f"is sampled at pixel centres: a narrower one between pixels lights none); "
                f"got {sigma!r}"
            )
        for name in ("x", "y", "brightness"):
            _check_source(name, getattr(self, name))

    def now(self) -> Spot:
        """This spot with its sources read: numbers only, as a frame records it."""
        return Spot(
            _value("x", self.x),
            _value("y", self.y),
            _value("brightness", self.brightness),
            self.sigma,
        )


def sample_on_stage(
    motor_x: SpotSource,
    motor_y: SpotSource,
    *,
    axis: tuple[float, float],
    aligned_at: tuple[float, float] = (0.0, 0.0),
    pixels_per_unit: float = 10.0,
    beam_width: float = 0.25,
    brightness: float = 3e6,
    sigma: float = 3.0,
) -> Spot:
    """The spot of a small sample on a stage that two motors move, lit by a beam fixed on
    the camera's axis: what aligning a sample looks like, a peak in a scan of either motor.

    When the motors read `aligned_at` the sample sits in the beam and is imaged at `axis`
    (sensor pixels x, y); one motor unit moves its image `pixels_per_unit` sensor pixels.
    It shines `brightness` photons/s on its centre pixel in the middle of the beam, less as
    it leaves it (a Gaussian of sigma `beam_width` motor units), and not at all beyond
    `BEAM_EDGE` widths: a sample that far adds nothing to the frames.
    """
    ax, ay = (float(v) for v in axis)
    x0, y0 = (float(v) for v in aligned_at)
    if not (_is_number(pixels_per_unit) and math.isfinite(pixels_per_unit) and pixels_per_unit):
        raise ValueError(f"pixels_per_unit must be a non-zero number; got {pixels_per_unit!r}")
    if not (_is_number(beam_width) and math.isfinite(beam_width) and beam_width > 0):
        raise ValueError(f"beam_width must be a number of motor units > 0; got {beam_width!r}")
    if not (_is_number(brightness) and math.isfinite(brightness) and brightness >= 0):
        raise ValueError(f"brightness must be a number of photons/s >= 0; got {brightness!r}")
    _check_source("motor_x", motor_x)
    _check_source("motor_y", motor_y)

    def off_axis() -> tuple[float, float]:
        """How far the motors are from aligned, motor units."""
        return _value("x", motor_x) - x0, _value("y", motor_y) - y0

    def lit() -> float:
        dx, dy = off_axis()
        r2 = (dx * dx + dy * dy) / (beam_width * beam_width)
        return brightness * math.exp(-0.5 * r2) if r2 < BEAM_EDGE * BEAM_EDGE else 0.0

    return Spot(
        x=lambda: ax + pixels_per_unit * off_axis()[0],
        y=lambda: ay + pixels_per_unit * off_axis()[1],
        brightness=lit,
        sigma=sigma,
    )


@dataclass(frozen=True)
class _BankKey:
    """The settings that change pixel values (not timing), so a period change keeps the bank."""

    exposure_time: float
    roi: ROI
    binning: int
    bit_depth: int


class _FrameBank:
    """K noisy frames plus the strip schedule that composes frame k from them."""

    def __init__(self, frames: np.ndarray, seed: int, key: _BankKey) -> None:
        self.frames = frames
        self.frames.flags.writeable = False  # shared by cameras of the same settings
        self.key = key
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
        """Write frame k into `out` (C-contiguous): one copy per strip, no full-frame
        temporaries. The copies are memoryviews', which keep the interpreter's lock: numpy's
        let it go for each strip, and a camera thread sharing a RunEngine's process then
        waited to take it back, up to 16 times a frame (a 256x256 frame took ~0.5 ms, not
        25 us, and its step scan ran 3-5% slower)."""
        n = len(self.frames)
        cycle = k // n
        row = out.strides[0]
        into = out.data.cast("B")
        for lo, hi, start, step in self._strips:
            frame = self.frames[(k + start + cycle * step) % n].data.cast("B")
            into[lo * row : hi * row] = frame[lo * row : hi * row]


#: the bank built last, after whose it is (see `SimulatedSCMOS._shared_bank`)
_last_bank: tuple[tuple, _FrameBank] | None = None
_last_bank_lock = threading.Lock()


class SimulatedSCMOS(DriverBase):
    """A simulated sCMOS camera with the `CameraDriver` interface.

    Model: gain `GAIN` e-/ADU, read noise `READ_NOISE` e- rms, offset `OFFSET` ADU per sensor
    pixel (binned pixels are sums, so their offset is `OFFSET * binning**2`). `missed_frames`
    counts frames lost to a full camera buffer. What it can do: `LIMITS`. `spot`: a sample
    over the scene (see `Spot`), none by default.

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
        self._spot: Spot | None = None
        # The spot's numbers each time they changed since `start`, from the frame that first
        # had them on, and the last frame taken with a spot on record: see `frame_spot`.
        self._spot_log: list[tuple[int, Spot | None]] = []
        self._spot_last_frame = -1
        self._spot_lock = threading.Lock()

    # -- the sample ---------------------------------------------------------------------------

    @property
    def spot(self) -> Spot | None:
        """A bright spot over the scene, or None: then every pixel is the scene's alone. It may
        change at any time, also while acquiring: each frame reads it as it is taken."""
        return self._spot

    @spot.setter
    def spot(self, spot: Spot | None) -> None:
        if spot is not None and not isinstance(spot, Spot):
            raise ValueError(f"spot must be a Spot or None; got {spot!r}")
        self._spot = spot

    def frame_spot(self, k: int) -> Spot | None:
        """The spot frame k was taken with, its numbers as they were read (None: no spot), for
        the frames taken since `start`; for a frame not taken yet, the spot as it is now."""
        with self._spot_lock:
            if k <= self._spot_last_frame:
                i = bisect.bisect_right(self._spot_log, k, key=lambda record: record[0])
                return self._spot_log[i - 1][1] if i else None
        spot = self._spot
        return None if spot is None else spot.now()

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
        with self._spot_lock:
            self._spot_log.clear()
            self._spot_last_frame = -1
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
        spot = self._take_spot(info.frame_number)
        bank.compose(info.frame_number, out)
        if spot is not None:
            self._add_spot(out, info.frame_number, spot, bank.key)
        return info

    def expected_frame(self, k: int) -> np.ndarray:
        """Frame number k for the current settings, exactly as `read_into` delivers it, with
        the spot it was taken with (`frame_spot`)."""
        if k < 0:
            raise ValueError(f"frame number must be >= 0; got {k}")
        bank = self._ensure_bank()
        out = np.empty(self.frame_shape, np.uint16)
        bank.compose(k, out)
        spot = self.frame_spot(k)
        if spot is not None:
            self._add_spot(out, k, spot, bank.key)
        return out

    def mean_frame(self) -> np.ndarray:
        """Noise-free mean in ADU (float, unclipped) of the scene, without the spot, for the
        current settings: truth for tests."""
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

    def _take_spot(self, k: int) -> Spot | None:
        """Read the spot for frame k, and record it if it changed, for `frame_spot`. A source
        that fails to read fails the frame (CameraError), as a camera that lost its light."""
        spot = self._spot
        if spot is None and not self._spot_log:
            return None  # no spot since start: nothing to record
        try:
            taken = None if spot is None else spot.now()
        except Exception as exc:
            raise CameraError(f"frame {k}: cannot read the spot: {exc}") from exc
        with self._spot_lock:
            if not self._spot_log or self._spot_log[-1][1] != taken:
                self._spot_log.append((k, taken))
            self._spot_last_frame = k
        return taken

    def _add_spot(self, out: np.ndarray, k: int, spot: Spot, key: _BankKey) -> None:
        """Add the spot's light to frame k: its photons, shot noise and all, drawn over the
        frame pixels within reach of its centre, binned, in ADU, clipped to the bit depth.

        The bank frame already holds the read noise and the scene's shot noise; photons add
        as Poisson counts do, so frame + spot is a true sample of scene + spot. The draw is
        seeded by (seed, k): frame k is the same whoever composes it.
        """
        x, y = _value("x", spot.x), _value("y", spot.y)
        brightness = _value("brightness", spot.brightness)
        if brightness == 0:
            return
        roi, b = key.roi, key.binning
        reach = _SPOT_REACH * spot.sigma
        rows, cols = out.shape

        def span(centre: float, origin: int, size: int) -> tuple[int, int]:
            """The frame pixels holding sensor pixels within reach of `centre`."""
            lo = (math.ceil(centre - reach) - origin) // b
            hi = (math.floor(centre + reach) - origin) // b + 1
            return max(lo, 0), min(hi, size)

        c0, c1 = span(x, roi.x, cols)
        r0, r1 = span(y, roi.y, rows)
        if c0 >= c1 or r0 >= r1:
            return
        xs = roi.x + np.arange(c0 * b, c1 * b)  # sensor pixels, centres at their indices
        ys = roi.y + np.arange(r0 * b, r1 * b)
        gx = np.exp(-0.5 * ((xs - x) / spot.sigma) ** 2)
        gy = np.exp(-0.5 * ((ys - y) / spot.sigma) ** 2)
        mean = (brightness * key.exposure_time) * gy[:, None] * gx[None, :]
        electrons = np.random.default_rng([self._seed, _TAG_SPOT, k]).poisson(mean)
        binned = electrons.reshape(r1 - r0, b, c1 - c0, b).sum(axis=(1, 3))
        patch = out[r0:r1, c0:c1]
        lit = np.minimum(patch + np.rint(binned / self.GAIN), 2**key.bit_depth - 1)
        np.copyto(patch, lit, casting="unsafe")  # whole numbers within the bit depth

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
                self._bank = self._shared_bank(key)
                self._bank_key = key
            return self._bank

    def _shared_bank(self, key: _BankKey) -> _FrameBank:
        """The bank the last camera built, if it was for the same sensor, seed, model and
        settings (its frames are only ever read); else a new one. A camera made again with
        the same settings (a notebook cell run twice, a test suite, the bench) then starts
        at once instead of drawing the noise again, about a second at 2048x2048; what is
        kept meanwhile is one bank."""
        global _last_bank
        model = (self.GAIN, self.READ_NOISE, self.OFFSET)
        whose = (type(self), self._sensor, self._seed, self._bank_size, key, model)
        with _last_bank_lock:
            if _last_bank is not None and _last_bank[0] == whose:
                return _last_bank[1]
        bank = self._build_bank(key)
        with _last_bank_lock:
            _last_bank = (whose, bank)
        return bank

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
        return _FrameBank(frames, self._seed, key)
