"""The throughput harness runs end to end: each section, at the smallest sizes `ophyd-scmos
bench` accepts, prints its table and writes its JSON; no timing is asserted."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ophyd_scmos._bench.cameras import EightBitSCMOS
from ophyd_scmos._bench.floor import FloorDetector, stored_frame
from ophyd_scmos._bench.probes import ENDED, FLOOR, OTHER, PEER, PROCESS, THREAD_ROWS, WRITER
from ophyd_scmos.cli import main
from ophyd_scmos.pipeline.compression import CODECS

#: Every section off; each test turns on the ones it checks (a later option wins).
NO_SECTION = [
    "--shapes", "--sustain-seconds", "0", "--memory-frames", "--count", "0", "--pace", "0",
    "--live", "0", "--stats", "0",
]  # fmt: skip
OURS = {"ours, uncompressed"} | {f"ours, {c}" for c in CODECS}
BURST_VARIANTS = {"plain file write", "plain, write-behind", "naive mp.Queue + h5py"} | OURS


def bench(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *options: str
) -> tuple[str, dict[str, Any]]:
    """`ophyd-scmos bench` with only the sections `options` turn on: its table and its JSON."""
    out = tmp_path / "bench.json"
    argv = ["bench", *NO_SECTION, *options, "--dir", str(tmp_path), "--json", str(out)]
    assert main(argv) == 0
    assert list(tmp_path.iterdir()) == [out]  # the scratch files are gone
    return capsys.readouterr().out, json.loads(out.read_text())


def assert_bursts(results: dict[str, Any], shape: str) -> None:
    (burst,) = results["bursts"]
    assert burst["shape"] == shape and burst["kind"] == "burst"
    assert {t["variant"] for t in burst["timings"]} == BURST_VARIANTS
    for t in burst["timings"]:
        assert t["closed_fps"] > 0 and t["disk_fps"] > 0
        assert t["ratio"] >= 1 or t["variant"] == "ours, uncompressed"


@pytest.mark.timeout(600)  # four sections of 2048x2048 frames: minutes on a busy machine
def test_bench_reports_2048_bursts_a_capped_disk_engines_and_free_runs(tmp_path, capsys):
    """The sections of the 2048x2048 format, which the capped disk and the engines need, and
    whose bursts set the free runs' sustainable rate."""
    table, results = bench(
        tmp_path, capsys,
        "--shapes", "orca", "--burst-gb", "0.01", "--repeat", "1", "--long-gb", "0",
        "--capped-gb", "0.01", "--disk-cap-mb-s", "200", "--long-repeat", "1",
        "--engines", "1",
        "--sustain-seconds", "0.5", "--sustain-rate", "20", "--sustain-probe-gb", "0.01",
    )  # fmt: skip
    for heading in ("2048x2048 uint16", "capped at 200 MB/s", "compression engines", "sustained"):
        assert heading in table
    assert_bursts(results, "2048x2048 uint16")
    capped = results["capped"]["timings"]
    assert {t["variant"] for t in capped} == OURS
    assert all(t["ratio"] > 1.5 for t in capped if t["variant"] != "ours, uncompressed")
    assert len(results["engines"]) == 3 * len(CODECS)
    assert all(row["fps"] > 0 for row in results["engines"])
    runs = results["sustained"]["runs"]
    assert {row["variant"] for row in runs} == {"ours, uncompressed", "ours, bitshuffle-lz4"}
    assert all(row["dropped"] + row["missed"] + row["written"] == row["taken"] for row in runs)


def test_bench_reports_3200_uint8_bursts(tmp_path, capsys):
    table, results = bench(
        tmp_path, capsys,
        "--shapes", "kinetix8", "--burst-gb", "0.01", "--repeat", "1", "--long-gb", "0",
    )  # fmt: skip
    assert "3200x3200 uint8" in table
    assert "capped" not in results and "engines" not in results  # 2048x2048 only
    assert_bursts(results, "3200x3200 uint8")


def test_bench_reports_peak_memory(tmp_path, capsys):
    table, results = bench(tmp_path, capsys, "--memory-frames", "20", "40")
    assert "memory" in table
    assert [row["frames"] for row in results["memory"]] == [20, 40, 20, 40]
    assert [row["compression"] for row in results["memory"]] == ["none"] * 2 + [
        "bitshuffle-lz4"
    ] * 2


def test_bench_reports_count_events_per_second(tmp_path, capsys):
    table, results = bench(tmp_path, capsys, "--count", "1")
    assert "RE(count" in table
    rates = results["count"]
    assert rates.pop("events") == 1
    assert set(rates) == {"ophyd.sim det"} | {
        f"SCMOSCamera 2048x2048, {c}" for c in ("uncompressed", "bitshuffle-lz4")
    }
    assert all(rate > 0 for rate in rates.values())


def test_bench_reports_the_interactive_pace(tmp_path, capsys):
    table, results = bench(tmp_path, capsys, "--pace", "1", "--pace-events", "1")
    assert "pace:" in table
    pace = results["pace"]
    assert pace["one_event_run_ms"]["SCMOSCamera"] > 0 and pace["open_catalog_s"] > 0
    assert set(pace["one_event_run_into_catalog_ms"]) == {"SCMOSCamera", "ophyd.sim det"}
    # ophyd-async comes with the tests: the nearest peer is measured beside ours
    assert set(pace["count_256_tiled_events_s"]) == {"SCMOSCamera", "ophyd.sim det", FLOOR, PEER}
    assert set(pace["count_256_tiled_ratio"]) == {"SCMOSCamera", FLOOR, PEER}
    assert pace["count_256_ours_vs_floor"] > 0 and "ours/floor" in table
    assert f"{PEER} " in table
    assert (
        0
        < pace["count_256_trigger_wait_ms"]
        < 1e3 / pace["count_256_tiled_events_s"]["SCMOSCamera"]
    )
    assert pace["full_frame_per_s"]["movie"] > 0 and pace["ipython_prompt_s"] > 0
    # Where a step's CPU went: the acquiring process's threads by role add up to its whole,
    # which is never more than its threads could have had; a writer process where there is one
    cpu = pace["count_256_cpu_ms"]
    for name, rows in cpu.items():
        wall_ms = 1e3 / pace["count_256_tiled_events_s"][name]
        assert 0 < rows[PROCESS] < os.cpu_count() * wall_ms
        threads = [rows[row] for row in (*THREAD_ROWS.values(), ENDED, OTHER)]
        assert min(threads) >= -1e-3 and sum(threads) == pytest.approx(rows[PROCESS])
        assert rows["the RunEngine's thread"] > 0 and rows["the catalog writer's thread"] > 0
        assert (WRITER in rows) == (name in ("SCMOSCamera", FLOOR))
    status = "the writer's status thread"
    assert cpu["SCMOSCamera"][ENDED] > 0  # the camera's acquisition thread, one per run
    assert cpu["SCMOSCamera"][WRITER] > 0 and cpu[FLOOR][WRITER] > 0
    assert cpu["SCMOSCamera"][status] > cpu["ophyd.sim det"][status]
    assert cpu[FLOOR][status] > cpu["ophyd.sim det"][status]
    assert "the RunEngine's thread" in table and "one event, wall time" in table


def test_bench_reports_what_the_live_view_costs(tmp_path, capsys):
    # 150 frames: a 512x512 movie lasts long enough for the page to see several.
    table, results = bench(tmp_path, capsys, "--live", "1", "--live-frames", "150")
    assert "live view:" in table
    live = results["live"]["512x512"]
    assert live["movie_frames_s"]["open"] > 0 and live["page"]["updates_s"] > 0
    assert results["live"]["2048x2048"]["movie_frames_s"]["closed"] > 0


def test_bench_reports_what_statistics_cost(tmp_path, capsys):
    table, results = bench(
        tmp_path, capsys, "--stats", "1", "--stats-frames", "10", "--stats-events", "5"
    )
    assert "statistics:" in table
    stats = results["statistics"]
    step = stats["count 256x256"]
    assert step["per_s"]["on"] > 0
    assert step["per_s"]["all nine read"] > 0
    assert "all nine read (18 readings an event)" in table
    assert stats["movie 2048x2048"]["per_s"]["off"] > 0
    # the step scan's many rounds, how far one round's ratio is from the next, and the ratio
    # of the same setting twice beside them
    assert step["rounds"] == 4 and stats["movie 512x512"]["rounds"] == 1
    for variant in ("on", "all nine read", "off again"):
        low, high = step[f"{variant}_vs_off_quartiles"]
        assert low <= step[f"{variant}_vs_off"] <= high
    assert "off again (nothing changed: the method's own reading)" in table
    assert min(step["one_event_run_ms"].values()) > 0


def test_the_floor_writes_and_flushes_each_steps_frame_before_its_trigger_completes(tmp_path):
    """The pace section's floor keeps the guarantee it stands for: when a trigger is done, a
    SWMR reader finds that step's frame in the file; one writer serves run after run, a new
    file each, and the runs' documents read their frames back (the AD_HDF5 handler)."""
    import h5py
    from area_detector_handlers.handlers import AreaDetectorHDF5Handler
    from bluesky import RunEngine
    from bluesky.plans import count

    from ophyd_scmos.pipeline import layout
    from tests.conftest import Recorder

    floor = FloorDetector(name="floor", shape=(24, 40), write_dir=tmp_path)
    RE = RunEngine({})
    RE.subscribe(docs := Recorder())
    try:
        floor.stage()
        for n in range(1, 4):
            floor.trigger().wait(10)
            (path,) = tmp_path.iterdir()
            with h5py.File(path, "r", libver="latest", swmr=True) as f:
                assert f[layout.DATA].shape == (n, 24, 40)
        floor.unstage()
        RE(count([floor], num=4))
        RE(count([floor], num=2))
        writer = floor._writer
    finally:
        floor.destroy()
    assert writer is not None and writer.returncode == 0
    assert len(list(tmp_path.iterdir())) == 3
    image = docs.of("descriptor")[0]["data_keys"]["floor_image"]
    assert image["shape"] == [1, 24, 40] and image["external"] == "FILESTORE:"
    resources, datums = docs.of("resource"), docs.of("datum")
    assert len(resources) == 2 and len(datums) == 6
    for resource in resources:
        handler = AreaDetectorHDF5Handler(
            f"{resource['root']}/{resource['resource_path']}", **resource["resource_kwargs"]
        )
        mine = [d for d in datums if d["resource"] == resource["uid"]]
        frames = np.stack([np.asarray(handler(**d["datum_kwargs"])) for d in mine])
        handler.close()
        assert frames.shape == (len(mine), 1, 24, 40)
        assert (frames == stored_frame((24, 40))).all()


def test_eight_bit_camera_delivers_clipped_simulator_frames():
    cam = EightBitSCMOS((32, 48))
    frame = cam.expected_frame(3)
    assert frame.dtype.name == "uint8" and frame.shape == (32, 48)
    assert frame.std() > 0 and frame.max() <= 255


def test_bench_refuses_what_it_could_not_use_before_it_measures(tmp_path, capsys):
    """A scratch parent that is no directory, or a JSON file that cannot be written (found
    after the whole bench, the results were lost), is one line and exit 2 at once."""
    afile = tmp_path / "afile"
    afile.write_text("")
    for argv, says in (
        (["--dir", str(tmp_path / "nope")], "no such directory"),
        (["--dir", str(afile)], "no such directory"),
        (["--json", str(tmp_path / "nope" / "out.json")], "cannot write a file in"),
    ):
        assert main(["bench", *argv]) == 2, argv
        out, err = capsys.readouterr()
        assert out == "" and says in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--repeat", "0"])
    assert exit_.value.code == 2 and "must be > 0" in capsys.readouterr().err
