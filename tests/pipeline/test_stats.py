"""Per-frame statistics: computed by the writer (a lone small frame on its writing thread,
others on a thread beside it), stored beside the frames, reported."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from ophyd_scmos.drivers import CameraSettings, SimulatedSCMOS
from ophyd_scmos.pipeline import FrameStream, layout, stats
from ophyd_scmos.pipeline.options import PipelineOptions
from ophyd_scmos.pipeline.protocol import Op, WriterConfig, encode, encode_open, encode_run
from ophyd_scmos.pipeline.ring import FrameRing
from ophyd_scmos.pipeline.stream import STATS_KEPT, KeptStats
from ophyd_scmos.pipeline.writer import WriterLoop

ODD_REGIONS = {"spot": (5, 3, 7, 9), "corner": (0, 0, 1, 1), "strip": (11, 2, 13, 1)}


def numpy_stats(frame: np.ndarray, region: tuple[int, int, int, int]) -> dict[str, float]:
    """areaDetector's definitions, spelled out on a float copy of the region."""
    x, y, w, h = region
    pixels = frame[y : y + h, x : x + w].astype(np.float64)
    total = pixels.sum()
    cols, rows = np.arange(x, x + w), np.arange(y, y + h)
    cx = (pixels.sum(axis=0) @ cols) / total
    cy = (pixels.sum(axis=1) @ rows) / total
    return {
        "total": total,
        "mean": pixels.mean(),
        "min": pixels.min(),
        "max": pixels.max(),
        "sigma": pixels.std(),
        "centroid_x": cx,
        "centroid_y": cy,
        "sigma_x": np.sqrt((pixels.sum(axis=0) @ (cols - cx) ** 2) / total),
        "sigma_y": np.sqrt((pixels.sum(axis=1) @ (rows - cy) ** 2) / total),
    }


def assert_stats_match(values: np.ndarray, frame: np.ndarray, region) -> None:
    expected = numpy_stats(frame, region)
    for name, value in zip(stats.STATS, values, strict=True):
        assert value == pytest.approx(expected[name], rel=1e-9, abs=1e-9), name


#: a frame larger than a BLAS block (odd sides: no pass may assume even ones)
LARGE = (725, 731)


@pytest.mark.parametrize("compiled", [False, True], ids=["products", "compiled"])
@pytest.mark.parametrize("shape", [(31, 45), LARGE], ids=["small", "large"])
def test_compute_follows_area_detectors_definitions(shape, compiled):
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 2**16, shape).astype(np.uint16)
    assert stats.prepare(frame.dtype)
    computed = stats.compute(frame, ODD_REGIONS, compiled=compiled)
    assert computed.shape == (4, len(stats.STATS))
    assert_stats_match(computed[0], frame, (0, 0, shape[1], shape[0]))
    for row, region in zip(computed[1:], ODD_REGIONS.values(), strict=True):
        assert_stats_match(row, frame, region)


def test_the_compiled_pass_takes_unsigned_frames_up_to_16_bits():
    """Its integer sums cannot overflow there; other frames keep the BLAS products."""
    assert stats.prepare(np.dtype(np.uint8)) and stats.prepare(np.dtype(np.uint16))
    for other in (np.uint32, np.int16, np.float32):
        assert not stats.prepare(np.dtype(other)), other


def test_the_compiled_pass_works_where_it_has_nowhere_to_keep_its_code(tmp_path):
    """A read-only installation and home: numba finds no directory to cache in."""
    script = (
        "import numpy as np; from ophyd_scmos.pipeline import stats; "
        f"frame = np.arange({LARGE[0] * LARGE[1]}, dtype=np.uint16).reshape({LARGE}); "
        "assert stats.prepare(frame.dtype); "
        "print(stats.compute(frame, {'spot': (1, 2, 3, 4)}, compiled=True)[:, 0].tolist())"
    )
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "_ZipCacheLocator"}  # none applies
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    frame = np.arange(LARGE[0] * LARGE[1], dtype=np.uint16).reshape(LARGE)
    expected = [frame.sum(dtype=np.int64), frame[2:6, 1:4].sum(dtype=np.int64)]
    assert json.loads(done.stdout) == expected


def test_a_dark_region_has_no_centroid():
    (row,) = stats.compute(np.zeros((4, 4), np.uint16), {})
    values = dict(zip(stats.STATS, row, strict=True))
    assert values["total"] == 0 and values["sigma"] == 0
    assert np.isnan(values["centroid_x"]) and np.isnan(values["sigma_y"])


def test_combined_frames_give_the_summed_images_total_and_centroid():
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 1000, (3, 20, 30)).astype(np.uint16)
    region = (3, 4, 9, 7)
    per_frame = np.array([stats.compute(f, {"r": region}) for f in frames])
    combined = dict(zip(stats.STATS, stats.combine(per_frame)[1], strict=True))
    summed = numpy_stats(frames.sum(axis=0, dtype=np.int64), region)
    for name in ("total", "mean", "centroid_x", "centroid_y", "sigma_x", "sigma_y"):
        assert combined[name] == pytest.approx(summed[name], rel=1e-9), name
    x, y, w, h = region
    pixels = frames[:, y : y + h, x : x + w].astype(np.float64)
    assert combined["min"] == pixels.min() and combined["max"] == pixels.max()
    assert combined["sigma"] == pytest.approx(pixels.std(), rel=1e-9)


@pytest.mark.parametrize(
    "name, value, says",
    [
        ("spot", (40, 0, 5, 5), "outside the 44x30 frame"),
        ("spot", (0, 28, 5, 3), "outside the 44x30 frame"),
        ("spot", (0, 0, 0, 5), "width, height >= 1"),
        ("spot", (-1, 0, 5, 5), "x, y >= 0"),
        ("spot", (0, 0, 5.0, 5), "integers"),
        ("spot", (0, 0, 5), "integers"),
        ("frame", (0, 0, 5, 5), "not be one of"),
        ("Stats", (0, 0, 5, 5), "not be one of"),  # cam_Stats_total and cam_stats_total
        ("2nd", (0, 0, 5, 5), "start with a letter"),
    ],
)
def test_bad_regions_are_refused_naming_them(name, value, says):
    with pytest.raises(ValueError, match=says):
        stats.check_region(name, value, (30, 44))


#: frames taken in one burst (the writer measures them beside the writing), or one at a time
#: as a step scan's points (a small one is measured on the writing thread)
MEASURED_BY = pytest.mark.parametrize("one_by_one", [False, True], ids=["burst", "points"])


def take(
    camera: SimulatedSCMOS, stream: FrameStream, n: int, one_by_one: bool, after: int = 0
) -> None:
    """`n` more frames after the file's first `after`, in one burst or one at a time (each
    waited for)."""
    for size in [1] * n if one_by_one else [n]:
        camera.software_trigger(size)
        after += size
        stream.wait(after, timeout=30)


@MEASURED_BY
@pytest.mark.parametrize(
    "sensor, binning, bit_depth",
    [((62, 90), 1, 16), ((62, 90), 2, 12), ((2 * LARGE[0], 2 * LARGE[1]), 2, 16)],
    ids=["16-bit", "binned-12-bit", "large"],
)
def test_stored_statistics_are_numpys_on_the_stored_frames(
    tmp_path, sensor, binning, bit_depth, one_by_one
):
    camera = SimulatedSCMOS(shape=sensor, seed=5, camera_buffer_frames=1000)
    camera.open()
    camera.configure(CameraSettings(exposure_time=0.0005, binning=binning, bit_depth=bit_depth))
    path = tmp_path / "run.h5"
    options = PipelineOptions(ring_frames=4)
    stream = FrameStream(camera, path, options, regions=ODD_REGIONS)
    stream.open()
    take(camera, stream, 25, one_by_one)
    reported = stream.frame_stats(0, 25)
    stream.close()
    with h5py.File(path, "r") as f:
        frames = f[layout.DATA][()]
        assert f[layout.stats_path("spot", "total")].shape == (25,)
        assert list(f[f"{layout.STATS_GROUP}/spot"].attrs["region"]) == [5, 3, 7, 9]
        stored = np.stack(
            [
                np.stack([f[layout.stats_path(region, s)][()] for s in stats.STATS], axis=1)
                for region in (stats.FRAME, *ODD_REGIONS)
            ],
            axis=1,
        )
    assert frames.shape == (25, sensor[0] // binning, sensor[1] // binning)
    assert frames.max() < 2**bit_depth
    np.testing.assert_array_equal(reported, stored)
    rows, cols = frames.shape[1:]
    for frame, values in zip(frames, stored, strict=True):
        assert_stats_match(values[0], frame, (0, 0, cols, rows))
        for row, region in zip(values[1:], ODD_REGIONS.values(), strict=True):
            assert_stats_match(row, frame, region)


def test_no_regions_no_statistics(tmp_path):
    camera = SimulatedSCMOS(shape=(16, 16), seed=1)
    camera.open()
    stream = FrameStream(camera, tmp_path / "run.h5", PipelineOptions(ring_frames=4))
    stream.open()
    camera.software_trigger(3)
    stream.wait(3, timeout=30)
    stream.close()
    with h5py.File(tmp_path / "run.h5", "r") as f:
        assert layout.STATS_GROUP not in f
    with pytest.raises(IndexError, match="not known"):
        stream.frame_stats(0, 1)


@MEASURED_BY
@pytest.mark.parametrize("stored", [False, True], ids=["in-memory", "in-the-file"])
def test_truncated_frames_statistics_are_replaced(tmp_path, stored, one_by_one):
    """Whether the cut frames' statistics were still waiting in the writer or already in
    the file, those of the frames that follow replace them, and no one is told the cut
    frames' in between."""
    camera = SimulatedSCMOS(shape=(16, 24), seed=2, camera_buffer_frames=100)
    camera.open()
    options = PipelineOptions(ring_frames=4, flush_interval=0.2 if stored else 30)
    path = tmp_path / "run.h5"
    stream = FrameStream(camera, path, options, regions={})
    stream.open()
    take(camera, stream, 6, one_by_one)
    if stored:
        wait_for_stored_stats(path, 6)
    stream.truncate(4)
    # Forgotten at the cut: a wait for the frames taken again is never answered with them.
    with pytest.raises(IndexError, match="not known"):
        stream.frame_stats(4, 6)
    take(camera, stream, 2, one_by_one, after=4)  # file frames: they follow the 4 kept
    reported = stream.frame_stats(0, 6)
    stream.close()
    with h5py.File(path, "r") as f:
        frames = f[layout.DATA][()]
        totals = f[layout.stats_path(stats.FRAME, "total")][()]
    assert len(frames) == len(totals) == 6
    np.testing.assert_array_equal(totals, frames.sum(axis=(1, 2)))
    np.testing.assert_array_equal(reported[:, 0, 0], totals)


def wait_for_stored_stats(path, frames: int, timeout: float = 10) -> None:
    """Until a SWMR reader sees `frames` frames' statistics in the file."""
    deadline = time.monotonic() + timeout
    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        total = f[layout.stats_path(stats.FRAME, "total")]
        while total.shape[0] < frames:
            assert time.monotonic() < deadline, f"{total.shape[0]} of {frames} in the file"
            time.sleep(0.05)
            total.refresh()


def test_statistics_reach_the_file_within_a_flush_interval_of_their_frames(tmp_path):
    camera = SimulatedSCMOS(shape=(16, 24), seed=4, camera_buffer_frames=100)
    camera.open()
    path = tmp_path / "run.h5"
    stream = FrameStream(camera, path, PipelineOptions(flush_interval=0.2), regions={})
    stream.open()
    for n in range(1, 6):  # one frame a flush, as a step scan takes them
        camera.software_trigger(1)
        stream.wait(n, timeout=30)
    started = time.monotonic()
    wait_for_stored_stats(path, 5)
    assert time.monotonic() - started < 2
    stream.close()


def test_the_writer_serves_commands_and_payloads_however_the_pipe_splits_them(tmp_path):
    """A file's configuration and its run's uid follow their commands as payloads; cut
    anywhere by the pipe's reads, the writer waits for the rest and serves them whole: the
    frames, their statistics (measured by the writer) and the run are in the file."""
    regions = {"spot": (1, 2, 3, 4)}
    frames = np.random.default_rng(7).integers(0, 4096, (3, 8, 10)).astype("<u2")
    ring = FrameRing.create((8, 10), "<u2", 4)
    status = io.StringIO()
    path = tmp_path / "run.h5"
    path.touch()
    uid = "8f0c2d4e-run"
    try:
        for slot, frame in enumerate(frames):
            ring.slot(slot)[...] = frame
        commands = encode_open(WriterConfig(str(path), ring.spec, regions=regions))
        for index in range(3):
            commands += encode(Op.FRAME, index)
        commands += encode_run(uid) + encode(Op.FINISH, -1)
        loop, pending = WriterLoop(status), b""
        for start in range(0, len(commands), 7):  # every record and payload cut somewhere
            pending = loop.serve(pending + commands[start : start + 7])
        assert pending == b"" and loop.file is None
    finally:
        ring.close()
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f[layout.DATA][()], frames)
        outcome = layout.Outcome.read(f)
        assert outcome is not None and outcome.run == uid and outcome.frames_written == 3
        for r, region in enumerate((stats.FRAME, "spot")):
            for s, name in enumerate(stats.STATS):
                stored = f[layout.stats_path(region, name)][()]
                expected = [stats.compute(frame, regions)[r, s] for frame in frames]
                np.testing.assert_allclose(stored, expected, rtol=1e-12)


def test_kept_statistics_are_the_blocks_reported_cut_and_replaced_as_the_file_is():
    """The acquiring process keeps reported statistics as the status lines' blocks: a
    point's are a view of its line's, a range across lines is joined, a cut forgets frames
    that a later report then replaces, and the oldest blocks go once the rest hold
    STATS_KEPT frames."""
    kept = KeptStats()

    def block(first: int, n: int) -> np.ndarray:  # frame i's values are all i
        return np.repeat(np.arange(first, first + n, dtype=float), 9).reshape(n, 1, 9)

    kept.keep(0, block(0, 3))
    kept.keep(3, (four := block(3, 1)))
    assert np.shares_memory(kept.get(3, 4, "run.h5"), four)
    np.testing.assert_array_equal(kept.get(1, 4, "run.h5")[:, 0, 0], [1, 2, 3])
    kept.cut(2)
    with pytest.raises(IndexError, match=r"1\.\.2 of run.h5 are not known \(known: 0\.\.1\)"):
        kept.get(1, 3, "run.h5")
    kept.keep(2, block(20, 2))  # frames taken again at the cut's indices
    np.testing.assert_array_equal(kept.get(0, 4, "run.h5")[:, 0, 0], [0, 1, 20, 21])
    kept.keep(4 + STATS_KEPT, block(0, 1))  # after a gap: afresh
    with pytest.raises(IndexError, match=r"known: 16388\.\.16388"):
        kept.get(3, 5, "run.h5")
    start = 5 + STATS_KEPT
    for first in range(start, start + 2 * STATS_KEPT, 1000):
        kept.keep(first, block(first, 1000))
    end = start + 2 * STATS_KEPT // 1000 * 1000 + 1000
    np.testing.assert_array_equal(
        kept.get(end - STATS_KEPT, end, "run.h5")[:, 0, 0], np.arange(end - STATS_KEPT, end)
    )
    with pytest.raises(IndexError, match="not known"):
        kept.get(start, start + 1, "run.h5")  # long gone
