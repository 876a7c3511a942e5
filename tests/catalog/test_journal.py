"""A run's journal: every document on disk as it comes, gone once the catalog has the run;
`replay` writes what the catalog lacks, once."""

from __future__ import annotations

import os

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import scan
from bluesky_tiled_plugins import TiledWriter
from ophyd.sim import det, motor

from ophyd_scmos import CatalogWriter, open_catalog
from ophyd_scmos.catalog.journal import Journal, journal_path, read, replay
from tests.conftest import Recorder


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    catalog = open_catalog(tmp_path_factory.mktemp("catalog"))
    yield catalog
    catalog.context.close()


def test_the_journal_holds_each_document_as_it_comes_and_goes_with_the_run(catalog, tmp_path):
    RE = RunEngine({}, call_returns_result=False)
    writer = CatalogWriter(catalog, interval=1e3, journal=tmp_path)
    RE.subscribe(writer)
    seen = []

    def look(name, doc):
        """After CatalogWriter (subscribed first) took the document."""
        if name == "event":
            (path,) = tmp_path.glob("*.jsonl")
            seen.append([name for name, _ in read(path)])

    RE.subscribe(look)
    (uid,) = RE(scan([det], motor, 0, 1, 3))
    assert seen[0] == ["start", "descriptor", "event"]
    assert seen[-1] == ["start", "descriptor", "event", "event", "event"]
    assert list(tmp_path.iterdir()) == []  # the catalog has the run: its journal went
    assert len(catalog[uid]["primary"]["motor"].read()) == 3


def test_a_line_cut_by_a_kill_is_left_out_and_a_damaged_one_refused(tmp_path):
    journal = Journal(tmp_path)
    journal.write("start", {"uid": "r", "time": 0.0, "value": np.float32(1.5)})
    journal.write("descriptor", {"uid": "d", "run_start": "r", "shape": np.arange(2)})
    journal.write("event", {"uid": "e", "descriptor": "d", "data": {"x": np.int64(3)}})
    journal.write("event", {"uid": "other", "descriptor": "unknown"})  # no run of it: left out
    path = journal_path(tmp_path, "r")
    text = path.read_bytes()
    assert [doc["uid"] for _, doc in read(path)] == ["r", "d", "e"]
    assert list(read(path))[2][1]["data"] == {"x": 3}
    path.write_bytes(text + b'["event", {"uid": "cut')
    assert [doc["uid"] for _, doc in read(path)] == ["r", "d", "e"]
    path.write_bytes(b'["start", {"uid": "r"\n' + text)
    with pytest.raises(ValueError, match="damaged line"):
        list(read(path))
    journal.end("r")
    assert not path.exists()


def test_replay_writes_the_events_the_catalog_lacks_once(catalog, tmp_path):
    recorder = Recorder()
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(recorder)
    RE(scan([det], motor, -1, 1, 5))
    docs = recorder.docs
    # The catalog took the run's first two events (the process died then)
    cut = [i for i, (name, _) in enumerate(docs) if name == "event"][1] + 1
    partial = TiledWriter(catalog, batch_size=1)
    for name, doc in docs[:cut]:
        partial(name, doc)
    uid = docs[0][1]["uid"]
    assert len(catalog[uid]["primary"]["motor"].read()) == 2

    journal = Journal(tmp_path)
    for name, doc in docs:
        journal.write(name, doc)
    path = journal_path(tmp_path, uid)
    assert replay(catalog[uid], read(path)) == 3
    assert replay(catalog[uid], read(path)) == 0  # twice: nothing written again
    primary = catalog[uid]["primary"]
    events = recorder.of("event")
    np.testing.assert_array_equal(primary["motor"].read(), [e["data"]["motor"] for e in events])
    np.testing.assert_array_equal(primary["det"].read(), [e["data"]["det"] for e in events])
    assert "stop" not in catalog[uid].metadata  # recover writes it, with the images


def test_a_journal_that_cannot_be_written_is_said_and_the_run_goes_on(catalog, tmp_path, caplog):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(CatalogWriter(catalog, journal=not_a_directory))
    (uid,) = RE(scan([det], motor, 0, 1, 3))
    assert f"run {uid}: its journal in {not_a_directory} could not be written" in caplog.text
    assert catalog[uid].metadata["stop"]["exit_status"] == "success"
    assert len(catalog[uid]["primary"]["motor"].read()) == 3


def test_a_journal_stays_held_until_the_catalog_takes_the_runs_end(tmp_path):
    """A process whose catalog has not taken its run's stop yet (the catalog did not answer,
    the process tries again) still owes it the run: its journal stays open, so `recover`
    in another session sees it held and leaves the run to it; once the catalog took the
    end, the journal goes."""
    from ophyd_scmos.pipeline.recovery import writing_process

    journal = Journal(tmp_path, catalog="test")
    start = {"uid": "r1", "time": 0.0}
    journal.write("start", start)
    journal.write("stop", {"uid": "s1", "run_start": "r1", "time": 1.0, "exit_status": "success"})
    (path,) = tmp_path.glob("*.jsonl")
    assert [name for name, _ in read(path)] == ["start", "stop"]
    assert writing_process(path) == os.getpid()
    journal.end("r1")
    assert not path.exists()


def test_a_journal_given_up_stays_held_while_its_run_goes_on(tmp_path, monkeypatch):
    """Its disk full, the journal was closed as given up: `recover` then took the run for a
    dead process's and wrote a failed stop into it while it was still recording."""
    from ophyd_scmos.pipeline.recovery import writing_process

    journal = Journal(tmp_path)
    journal.write("start", {"uid": "run-1", "time": 0.0})
    path = journal_path(tmp_path, "run-1")
    written = path.stat().st_size

    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(os, "write", disk_full)
        journal.write("stop", {"uid": "stop-1", "run_start": "run-1", "time": 1.0})
    assert writing_process(path) == os.getpid()  # the run's process holds it: recover leaves it
    journal.write("stop", {"uid": "stop-1", "run_start": "run-1", "time": 1.0})
    assert path.stat().st_size == written  # given up: written no more
    journal.close()
    assert writing_process(path) is None


def test_a_process_reading_a_journal_does_not_hold_its_run(tmp_path):
    """A second `recover` reading the journal was taken for the run's process."""
    from ophyd_scmos.pipeline.recovery import writing_process

    path = tmp_path / "run.jsonl"
    path.write_text("")
    with open(path):
        assert writing_process(path) is None
    with open(path, "a"):
        assert writing_process(path) == os.getpid()
