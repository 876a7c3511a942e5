"""The throughput harness runs end to end and reports every section; no timing is asserted."""

from __future__ import annotations

import json

import pytest

from ophyd_scmos._bench.cameras import EightBitSCMOS
from ophyd_scmos.cli import main
from ophyd_scmos.pipeline.compression import CODECS


@pytest.mark.timeout(900)  # every section of the bench, small: minutes on a busy machine
def test_bench_command_reports_every_section_as_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = [
        "bench", "--burst-gb", "0.01", "--repeat", "1", "--long-gb", "0", "--engines", "2",
        "--sustain-seconds", "1", "--sustain-rate", "20", "--memory-frames", "20", "40",
        "--sustain-probe-gb", "0.05", "--count", "3", "--dir", str(tmp_path), "--json", str(out),
        "--capped-gb", "0.2", "--disk-cap-mb-s", "200", "--pace", "1", "--pace-events", "20",
        "--live", "1", "--live-frames", "150", "--stats", "1", "--stats-frames", "30",
    ]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    for heading in ("2048x2048 uint16", "3200x3200 uint8", "compression engines", "sustained",
                    "memory", "RE(count", "capped at 200 MB/s", "pace:", "live view:",
                    "statistics:"):  # fmt: skip
        assert heading in table
    results = json.loads(out.read_text())
    variants = {t["variant"] for t in results["bursts"][0]["timings"]}
    assert variants == {
        "plain file write",
        "plain, write-behind",
        "naive mp.Queue + h5py",
        "ours, uncompressed",
    } | {f"ours, {c}" for c in CODECS}
    for burst in results["bursts"]:
        for t in burst["timings"]:
            assert t["closed_fps"] > 0 and t["disk_fps"] > 0
            assert t["ratio"] >= 1 or t["variant"] == "ours, uncompressed"
    assert all(row["dropped"] + row["missed"] + row["written"] == row["taken"]
               for row in results["sustained"]["runs"])  # fmt: skip
    assert [row["frames"] for row in results["memory"]] == [20, 40, 20, 40]
    assert len(results["engines"]) == 3 * len(CODECS)
    capped = results["capped"]["timings"]
    assert {t["variant"] for t in capped} == {"ours, uncompressed"} | {f"ours, {c}" for c in CODECS}
    assert all(t["ratio"] > 1.5 for t in capped if t["variant"] != "ours, uncompressed")
    assert results["statistics"]["count 256x256"]["per_s"]["on"] > 0
    live = results["live"]["512x512"]
    assert live["movie_frames_s"]["open"] > 0 and live["page"]["updates_s"] > 0
    pace = results["pace"]
    assert pace["one_event_run_ms"]["SCMOSCamera"] > 0 and pace["open_catalog_s"] > 0
    assert set(pace["count_256_tiled_events_s"]) == {"SCMOSCamera", "ophyd.sim det"}
    assert list(tmp_path.iterdir()) == [out]  # the scratch files are gone


def test_eight_bit_camera_delivers_clipped_simulator_frames():
    cam = EightBitSCMOS((32, 48))
    frame = cam.expected_frame(3)
    assert frame.dtype.name == "uint8" and frame.shape == (32, 48)
    assert frame.std() > 0 and frame.max() <= 255
