"""Statistics of every frame, for the whole frame and for named regions, as areaDetector's.

They are computed by the writer process on the ring slot a frame is stored from (no copy of
the frame; in one compiled pass, or by BLAS products for a type it does not take), so they
describe exactly the frames in the file. The
definitions are those of areaDetector's NDPluginStats, for the pixels I(x, y) of a
region (x the column, y the row):

- ``total`` = sum I; ``mean`` = total / N (N pixels); ``min``, ``max``;
- ``sigma`` = sqrt(sum (I - mean)^2 / N), the pixels' population standard deviation;
- ``centroid_x`` = sum x I / total, ``centroid_y`` likewise (the intensity-weighted mean
  position), and ``sigma_x`` = sqrt(sum (x - centroid_x)^2 I / total), ``sigma_y`` likewise.

Unlike areaDetector, whose ROI plugin hands the Stats plugin an array starting at 0, the
centroids are in frame pixels: a region's offset is added, so every region's centroid is
comparable. A region whose total is 0 has centroids and their sigmas NaN.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: the statistics of a region, in the order of `compute`'s columns
STATS = ("total", "mean", "min", "max", "sigma", "centroid_x", "centroid_y", "sigma_x", "sigma_y")
#: those a camera reads by default: what an alignment plots and checks (the peak, saturation,
#: where the spot is). Each reading costs every event ~10 us of the RunEngine's thread (it
#: validates, bundles and hands on each value: 16 more readings took 4-6% of an event of
#: ophyd.sim devices, paired runs); all nine are measured and stored whatever is read.
READ = ("total", "max", "centroid_x", "centroid_y")
#: the whole frame, always first among the regions a writer computes
FRAME = "frame"
#: region names: they name data keys (``cam_<name>_total``) and HDF5 groups
REGION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
RESERVED = (FRAME, "stats")

Region = tuple[int, int, int, int]  #: (x, y, width, height) in frame pixels
#: a lone frame smaller than this (a step scan's point) is measured on the writer's thread
#: that has it, a larger one on a thread of its own beside the writing: at 256x256 (128 kB) a
#: hand-over cost more than it overlapped, at 2048x2048 the two take milliseconds each
SMALL_FRAME_BYTES = 1 << 20
#: pixels converted to float at once: 512 kB, in the CPU's cache
BLOCK_PIXELS = 1 << 16


def check_names(setting: str, names: Any) -> tuple[str, ...]:
    """`names` as a tuple of statistics (of `STATS`), or ValueError naming the `setting`."""
    if isinstance(names, str) or any(name not in STATS for name in names):
        raise ValueError(f"{setting}={names!r} must be a sequence of names from {STATS}")
    return tuple(names)


def check_hinted(hinted: Sequence[str], read: Sequence[str]) -> None:
    """ValueError unless every statistic `hinted` is among those `read`."""
    if not set(hinted) <= set(read):
        raise ValueError(
            f"stats_hinted={hinted!r} must be among stats_read {tuple(read)}: a hint plots a "
            "reading"
        )


def check_region(name: Any, value: Any, frame_shape: tuple[int, int] | None = None) -> Region:
    """`value` as a region, or ValueError naming it: (x, y, width, height), integers, inside
    the frame of `frame_shape` (rows, columns) when given."""
    if not isinstance(name, str) or not REGION_NAME.fullmatch(name) or name.lower() in RESERVED:
        raise ValueError(
            f"region name {name!r} must be letters, digits and _, start with a letter, and "
            f"not be one of {RESERVED} in any case"
        )
    if (
        isinstance(value, (str, bytes))
        or not hasattr(value, "__len__")
        or len(value) != 4
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"region {name}={value!r} must be (x, y, width, height), integers")
    x, y, w, h = (int(v) for v in value)
    if x < 0 or y < 0 or w < 1 or h < 1:
        raise ValueError(f"region {name}={value!r} needs x, y >= 0 and width, height >= 1")
    if frame_shape is not None:
        rows, cols = frame_shape
        if x + w > cols or y + h > rows:
            raise ValueError(
                f"region {name}={value!r} is outside the {cols}x{rows} frame (width x height)"
            )
    return (x, y, w, h)


def check_regions(
    regions: Mapping[str, Any], frame_shape: tuple[int, int] | None = None
) -> dict[str, Region]:
    checked = {name: check_region(name, value, frame_shape) for name, value in regions.items()}
    check_apart(checked)
    return checked


def check_apart(names: Iterable[str]) -> None:
    """ValueError unless the region names differ in more than case: their statistics' data
    keys name columns of a catalog's tables, which tell no case apart (Tiled's SQL tables
    refused the run's events at its end)."""
    seen: dict[str, str] = {}
    for name in names:
        if (first := seen.setdefault(name.lower(), name)) != name:
            raise ValueError(
                f"regions {first!r} and {name!r} differ only in case: a catalog's tables, "
                "which tell no case apart, would take their statistics for one"
            )


def compute(
    frame: np.ndarray,
    regions: Mapping[str, Region],
    *,
    compiled: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The statistics of `frame` over the whole frame and each region: one row per region
    (the whole frame first), one column per `STATS` entry, float64, into `out` if given.
    `compiled`: all of them in one compiled call (`prepare` first), else by BLAS products."""
    rows, columns = frame.shape
    boxes = [(0, 0, columns, rows), *regions.values()]
    if out is None:
        out = np.empty((len(boxes), len(STATS)))
    if compiled:
        _measure()(frame, _box_array(tuple(map(tuple, boxes))), out)
        return out
    for i, (x, y, w, h) in enumerate(boxes):
        out[i] = _region_stats(frame[y : y + h, x : x + w], x, y)
    return out


@functools.lru_cache(maxsize=64)
def _box_array(boxes: tuple[Region, ...]) -> np.ndarray:
    array = np.array(boxes, np.int64)
    array.flags.writeable = False
    return array


def prepare(dtype: np.dtype) -> bool:
    """Load (or compile, the first time on a machine) the compiled pass for frames of
    `dtype`, if it takes them (unsigned, up to 16 bits), and say whether it does. The writer
    measures with it, frames of any size: 3-4x faster than the BLAS products at 512x512, 4-8x
    at 2048x2048, where the products held a full-frame movie near 100 frames/s. Loading costs
    ~1 s a process (compiling it ~2 s, once a machine), which the writer pays when it opens
    the first file it measures, before the run's first frame (which would otherwise wait for
    it while the ring fills); the acquiring process never loads the compiler (~1 s and ~150 MB
    a process)."""
    if dtype.kind != "u" or dtype.itemsize > 2:
        return False
    compute(np.zeros((1, 1), dtype), {}, compiled=True)
    return True


@functools.cache
def _measure() -> Any:
    """The compiled measure of regions (x, y, w, h) of a frame into `out`, a row of `STATS`
    each, compiled once per machine (numba keeps it on disk, or where it has nowhere to, once
    per process) and loaded once per process: imported here, so that processes measuring
    only with the BLAS products never import numba. A region's pixels are summed, squared
    and compared in one pass that holds no lock, as integers (exact: int64), into its row
    and column sums; the moments of those give the centroids and their sigmas. One call for
    all the regions: at a step scan's 256x256 frame, the numpy calls that turned each
    region's sums into statistics cost as much as the pass over its pixels."""
    import numba

    def measure(frame, boxes, out):
        for i in range(boxes.shape[0]):
            x, y, w, h = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
            column_sums = np.zeros(w, np.int64)
            total = squares = 0
            first_y = second_y = 0.0
            low = high = frame[y, x]
            for r in range(h):
                row = frame[y + r, x : x + w]
                row_total = 0
                for c in range(w):
                    pixel = row[c]
                    value = np.int64(pixel)
                    row_total += value
                    column_sums[c] += value
                    squares += value * value
                    low = min(low, pixel)
                    high = max(high, pixel)
                total += row_total
                first_y += r * float(row_total)
                second_y += r * r * float(row_total)
            first_x = second_x = 0.0
            for c in range(w):
                first_x += c * float(column_sums[c])
                second_x += c * c * float(column_sums[c])
            n = w * h
            mean = total / n
            out[i, 0] = total
            out[i, 1] = mean
            out[i, 2] = low
            out[i, 3] = high
            out[i, 4] = np.sqrt(max(squares / n - mean * mean, 0.0))
            if total == 0:  # no centroid
                out[i, 5:] = np.nan
                continue
            # moments about the region's first pixel (better conditioned than frame
            # coordinates), the centroids then shifted by its corner
            centre_x, centre_y = first_x / total, first_y / total
            out[i, 5] = centre_x + x
            out[i, 6] = centre_y + y
            out[i, 7] = np.sqrt(max(second_x / total - centre_x * centre_x, 0.0))
            out[i, 8] = np.sqrt(max(second_y / total - centre_y * centre_y, 0.0))

    try:
        return numba.njit(cache=True, nogil=True)(measure)
    except RuntimeError:  # no directory this process may write to keep it in
        return numba.njit(nogil=True)(measure)


def _region_stats(pixels: np.ndarray, x0: int, y0: int) -> list[float]:
    """One pass over the region, a block of rows at a time converted to float (no
    frame-sized temporary; the block stays in the CPU's cache): BLAS products give its
    row sums, column sums and sum of squares, three times faster than numpy's reductions
    (the writer process runs BLAS on one thread: see `process.WRITER_ENV`)."""
    h, w = pixels.shape
    rows_per_block = max(1, BLOCK_PIXELS // w)
    ones = _ones(max(w, rows_per_block))
    column_sums = np.zeros(w)
    row_sums = np.empty(h)
    squares = 0.0
    for start in range(0, h, rows_per_block):
        block = pixels[start : start + rows_per_block].astype(np.float64)
        row_sums[start : start + len(block)] = block @ ones[:w]
        column_sums += ones[: len(block)] @ block
        flat = block.ravel()
        squares += float(flat @ flat)
    return _from_sums(row_sums, column_sums, squares, pixels.min(), pixels.max(), x0, y0)


def _from_sums(
    row_sums: np.ndarray,
    column_sums: np.ndarray,
    squares: float,
    low: float,
    high: float,
    x0: int,
    y0: int,
) -> list[float]:
    """A region's statistics (`STATS`) from its row and column sums, sum of squares, minimum
    and maximum; (x0, y0): its corner in the frame."""
    total, centroid_x, sigma_x = _moments(column_sums, x0)
    _, centroid_y, sigma_y = _moments(row_sums, y0)
    n = len(row_sums) * len(column_sums)
    mean = total / n
    sigma = np.sqrt(max(squares / n - mean * mean, 0.0))
    return [
        total,
        mean,
        float(low),
        float(high),
        float(sigma),
        centroid_x,
        centroid_y,
        sigma_x,
        sigma_y,
    ]


@functools.cache
def _ones(n: int) -> np.ndarray:
    ones = np.ones(n)
    ones.flags.writeable = False
    return ones


@functools.cache
def _powers(n: int) -> np.ndarray:
    """(3, n): 1, x and x^2 for the positions 0..n-1 of a projection, so one product gives
    its moments."""
    position = np.arange(n, dtype=np.float64)
    powers = np.stack([np.ones(n), position, position * position])
    powers.flags.writeable = False
    return powers


def _moments(profile: np.ndarray, offset: int) -> tuple[float, float, float]:
    """Total, centroid and sigma of a projection: positions measured from its first pixel
    (better conditioned than frame coordinates), the centroid then shifted by `offset`."""
    total, first, second = (float(m) for m in _powers(len(profile)) @ profile)
    if total == 0:
        return total, float("nan"), float("nan")
    centre = first / total
    return total, centre + offset, float(np.sqrt(max(second / total - centre * centre, 0.0)))


def joined(batches: Sequence[np.ndarray]) -> np.ndarray:
    """Batches of frames' statistics as one array: the batch itself where there is one (a
    step scan's point), no copy."""
    return batches[0] if len(batches) == 1 else np.concatenate(batches)


def combine(per_frame: np.ndarray) -> np.ndarray:
    """One point's statistics from its frames' (k, regions, STATS): those of the frames
    summed into one image for total, mean, centroids and their sigmas (exact, from the
    moments); min, max and sigma over all the k frames' pixels (the summed image's would need
    the frames again): every frame has the same pixels, so pooling needs no weights."""
    if len(per_frame) == 1:
        return per_frame[0]
    col = {name: i for i, name in enumerate(STATS)}
    values = {name: per_frame[:, :, i] for name, i in col.items()}
    total = values["total"].sum(axis=0)
    out = np.empty(per_frame.shape[1:])
    out[:, col["total"]] = total
    out[:, col["mean"]] = values["mean"].sum(axis=0)
    out[:, col["min"]] = values["min"].min(axis=0)
    out[:, col["max"]] = values["max"].max(axis=0)
    second = values["sigma"] ** 2 + values["mean"] ** 2  # each frame's mean of squares
    pooled_mean = values["mean"].mean(axis=0)
    out[:, col["sigma"]] = np.sqrt(np.maximum(second.mean(axis=0) - pooled_mean**2, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        for axis in ("x", "y"):
            centre, spread = values[f"centroid_{axis}"], values[f"sigma_{axis}"]
            weights = values["total"]
            weighted = weights != 0  # a dark frame's centroid is NaN and weighs nothing
            c = np.where(weighted, centre * weights, 0).sum(axis=0) / total
            m2 = np.where(weighted, (spread**2 + centre**2) * weights, 0).sum(axis=0) / total
            out[:, col[f"centroid_{axis}"]] = c
            out[:, col[f"sigma_{axis}"]] = np.sqrt(np.maximum(m2 - c**2, 0))
    return out
