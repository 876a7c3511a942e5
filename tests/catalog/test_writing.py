"""`CatalogWriter`: a run's events and images reach the catalog while it runs, so another
process sees them, and they outlive an acquiring process killed mid-run."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import count
from ophyd.sim import det

from ophyd_scmos import CatalogWriter, SCMOSCamera, SimulatedSCMOS, open_catalog
from ophyd_scmos.catalog.embedded import catalog_location
from ophyd_scmos.catalog.journal import JOURNAL_ENV, Journal
from ophyd_scmos.catalog.summary import IMAGE_RUN
from ophyd_scmos.cli import main
from ophyd_scmos.drivers import ROI, CameraSettings
from ophyd_scmos.pipeline import layout
from ophyd_scmos.plans import movie

ROI_XYWH = (32, 16, 96, 64)

#: five points of a motor scan, then a sixth frame taken (never read: the file holds one more
#: frame than the catalog names) and a step that lasts: no document comes meanwhile
SCAN_THEN_WAIT = """
import sys
import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky import RunEngine
from ophyd.sim import det, motor
from ophyd_scmos import CatalogWriter, SCMOSCamera, SimulatedSCMOS, open_catalog

catalog_dir, write_dir, interval, busy = sys.argv[1:]
cam = SCMOSCamera(name="cam", driver=SimulatedSCMOS(shape=(256, 320), seed=5),
                  write_dir=write_dir, ring_mb=4)
cam.roi.set((32, 16, 96, 64))
cam.exposure_time.set(0.001)
RE = RunEngine({}, call_returns_result=False)
writer = CatalogWriter(open_catalog(catalog_dir), interval=float(interval))
RE.subscribe(writer)

@bpp.stage_decorator([cam])
@bpp.run_decorator()
def plan():
    if busy == "busy":  # the writer busy from the run's start on, as with a slow catalog:
        writer._lock.acquire()  # the documents after the start wait in its queue
    for position in range(5):
        yield from bps.mv(motor, position)
        yield from bps.trigger_and_read([cam, det, motor])
    yield from bps.trigger(cam, wait=True)
    print(cam.file_path.get(), cam._writer.pid, flush=True)
    yield from bps.sleep(600)

if busy == "before":  # the writer busy as the run starts: not even the start is written
    writer._thread.start()
    writer._lock.acquire()
RE(plan())
"""


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory):
    """One catalog for this module's runs: its server starts once (seconds), and the client
    held here keeps it up between them."""
    path = tmp_path_factory.mktemp("catalog")
    catalog = open_catalog(path)
    yield path
    catalog.context.close()


def _expected(n: int) -> np.ndarray:
    driver = SimulatedSCMOS(shape=(256, 320), seed=5)
    driver.open()
    driver.configure(CameraSettings(exposure_time=0.001, roi=ROI(*ROI_XYWH)))
    return np.stack([driver.expected_frame(k) for k in range(n)])


def _camera(write_dir, name: str = "cam") -> SCMOSCamera:
    """A camera whose frames `_expected` gives."""
    cam = SCMOSCamera(
        name=name, driver=SimulatedSCMOS(shape=(256, 320), seed=5), write_dir=write_dir, ring_mb=4
    )
    cam.roi.set(ROI_XYWH)
    cam.exposure_time.set(0.001)
    return cam


def _count_into(catalog, write_dir, num: int) -> str:
    """`RE(count([cam], num))` of `_camera`, written into `catalog` by a `CatalogWriter`: its
    uid."""
    cam = _camera(write_dir)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(CatalogWriter(catalog))
    try:
        (uid,) = RE(count([cam], num=num))
    finally:
        cam.destroy()
    return uid


def _wait_for_rows(catalog_dir, rows: int, timeout: float = 30):
    """The latest run of the catalog once its primary stream holds `rows` events."""
    deadline = time.monotonic() + timeout
    while True:
        run = open_catalog(catalog_dir).values().last()
        stream = run.get("primary", {})
        if "motor" in stream and len(stream["motor"].read()) >= rows:
            return run
        assert time.monotonic() < deadline, f"the catalog did not show {rows} events"
        time.sleep(0.1)


def test_a_running_run_is_in_the_catalog_and_outlives_its_killed_process(
    catalog_dir, tmp_path, capsys
):
    """Another process sees the scan's events and images while the scan is in a long step
    (written by the timer: no document comes), only the frames of those events although the
    file holds more; the acquiring process is then killed, and the events stay. `recover`
    closes the run over the images already there, with every frame of the file."""
    acquiring = _scan_then_wait(catalog_dir, tmp_path / "data", interval=0.2)
    try:
        path, writer = acquiring.stdout.readline().split()
        run = _wait_for_rows(catalog_dir, 5)
        assert "stop" not in run.metadata  # still running
        np.testing.assert_array_equal(run["primary"]["motor"].read(), np.arange(5))
        node = run["primary"]["cam_image"]
        np.testing.assert_array_equal(node.read(), _expected(5)[:, None])
    finally:
        _kill(acquiring)
    _wait_until_gone(writer)

    run = open_catalog(catalog_dir).values().last()
    np.testing.assert_array_equal(run["primary"]["motor"].read(), np.arange(5))
    np.testing.assert_array_equal(run["primary"]["det"].read().shape, (5,))
    assert main(["recover", "--catalog", str(catalog_dir), path]) == 0
    assert "closed run" in capsys.readouterr().out
    run = open_catalog(catalog_dir).values().last()
    assert run.metadata["stop"]["exit_status"] == "fail"
    assert run.metadata["stop"]["num_events"] == {"primary": 5}  # the file's sixth: no event
    with h5py.File(path, "r") as f:
        stored = layout.stored_frames(f)
    assert stored == 6
    np.testing.assert_array_equal(run["primary"]["cam_image"].read(), _expected(stored)[:, None])
    np.testing.assert_array_equal(run["primary"]["motor"].read(), np.arange(5))
    # taken while the run went on, the node reads the rows its shape named then
    np.testing.assert_array_equal(node.read(), _expected(5)[:, None])
    capsys.readouterr()
    assert main(["show", "-1", "--catalog", str(catalog_dir), "--no-png"]) == 0
    assert "events     5 of its 6 points' events are in the catalog" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("busy", "named"),
    [("free", True), ("busy", True), ("before", True), ("free", False)],
    ids=["events_held", "writer_busy", "start_missed", "file_found"],
)
def test_recover_writes_the_events_a_killed_process_held_from_the_runs_journal(
    busy, named, catalog_dir, tmp_path, capsys, monkeypatch
):
    """A scan whose events the catalog was not yet given (they wait an hour, here; or the
    catalog writer was busy from the run's start, so that not even the descriptor, which
    names the camera's file, got there; or busy as the run started, so that the catalog
    never heard of the run) when its process is killed: its journal kept every document as
    it came, and `recover` writes the events into the run (made from the journal's start
    where the catalog lacks it), every device's readings, before it closes the run over the
    camera's file (named, or found by `recover --catalog` alone from the run's
    descriptor). The journal then goes."""
    journals = tmp_path / "journals"
    monkeypatch.setenv(JOURNAL_ENV, str(journals))  # the scan's and recover's
    path = _killed_scan(catalog_dir, tmp_path / "data", interval=3600, busy=busy)
    (journal,) = journals.glob("*.jsonl")
    uid = journal.stem
    if busy == "before":
        assert uid not in open_catalog(catalog_dir)
    else:
        run = open_catalog(catalog_dir)[uid]
        assert "stop" not in run.metadata
        assert "motor" not in run.get("primary", {})  # no event reached the catalog
        if busy == "busy":
            assert "primary" not in run  # nor the descriptor

    assert main(["recover", "--catalog", str(catalog_dir), *([path] if named else [])]) == 0
    out = capsys.readouterr().out
    assert (f"{path}: the file of a camera of run {uid}" in out) == (not named)
    made = f"{journal}: run {uid} had not reached the catalog; made from its journal"
    assert (made in out) == (busy == "before")
    assert f"{journal}: 5 events the catalog lacked written into run {uid}" in out
    assert "closed run" in out
    run = open_catalog(catalog_dir)[uid]
    np.testing.assert_array_equal(run["primary"]["motor"].read(), np.arange(5))
    np.testing.assert_array_equal(run["primary"]["det"].read().shape, (5,))
    np.testing.assert_array_equal(run["primary"]["cam_frame_number"].read(), np.arange(5))
    np.testing.assert_array_equal(run["primary"]["cam_image"].read(), _expected(6)[:, None])
    assert "journal kept" in run.metadata["stop"]["reason"]
    assert run.metadata["stop"]["num_events"] == {"primary": 5}
    assert not journal.exists()


def test_recover_finds_the_run_of_a_file_moved_since_by_the_run_the_file_records(
    catalog_dir, tmp_path, capsys, monkeypatch
):
    """A killed scan's file moved elsewhere before `recover` (the path its descriptor names is
    gone): the file records its run, and `recover --catalog` given its new path closes that
    run over it, every frame back (it said that no unfinished run names the file)."""
    journals = tmp_path / "journals"
    monkeypatch.setenv(JOURNAL_ENV, str(journals))
    path = _killed_scan(catalog_dir, tmp_path / "data", interval=3600)
    (journal,) = journals.glob("*.jsonl")
    uid = journal.stem
    moved = tmp_path / "elsewhere" / Path(path).name
    moved.parent.mkdir()
    Path(path).rename(moved)

    assert main(["recover", "--catalog", str(catalog_dir), str(moved)]) == 0
    assert f"{moved}: was not marked open; 6 frames of run {uid}" in capsys.readouterr().out
    run = open_catalog(catalog_dir)[uid]
    np.testing.assert_array_equal(run["primary"]["cam_image"].read(), _expected(6)[:, None])
    np.testing.assert_array_equal(run["primary"]["motor"].read(), np.arange(5))
    assert run.metadata["stop"]["recovered_from"]["cam"] == str(moved)


#: a motor scan with no camera whose events wait an hour to be written, then a step that lasts
MOTOR_SCAN_THEN_WAIT = """
import sys
import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky import RunEngine
from ophyd.sim import det, motor
from ophyd_scmos import CatalogWriter, open_catalog

RE = RunEngine({}, call_returns_result=False)
RE.subscribe(CatalogWriter(open_catalog(sys.argv[1]), interval=3600))

@bpp.run_decorator()
def plan():
    for position in range(4):
        yield from bps.mv(motor, position)
        yield from bps.trigger_and_read([det, motor])
    print("waiting", flush=True)
    yield from bps.sleep(600)

RE(plan())
"""


def test_recover_closes_a_killed_run_with_no_camera_from_its_journal(
    catalog_dir, tmp_path, capsys, monkeypatch
):
    """`recover --catalog` alone: a run with no camera file to name (a motor scan) is closed
    from its journal once its process is gone, with its events; a running one is left."""
    journals = tmp_path / "journals"
    monkeypatch.setenv(JOURNAL_ENV, str(journals))
    scanning = _motor_scan_then_wait(catalog_dir)
    try:
        assert scanning.stdout.readline() == "waiting\n"
        (journal,) = journals.glob("*.jsonl")
        assert main(["recover", "--catalog", str(catalog_dir)]) == 0
        assert f"is running in process {scanning.pid}; left as it is" in capsys.readouterr().out
        assert journal.exists()
    finally:
        _kill(scanning)
    uid = journal.stem
    assert "motor" not in open_catalog(catalog_dir)[uid].get("primary", {})

    assert main(["recover", "--catalog", str(catalog_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{journal}: 4 events the catalog lacked written into run {uid}" in out
    assert f"{journal}: closed run {uid}" in out
    run = open_catalog(catalog_dir)[uid]
    np.testing.assert_array_equal(run["primary"]["motor"].read(), np.arange(4))
    assert run.metadata["stop"]["exit_status"] == "fail"
    assert run.metadata["stop"]["num_events"] == {"primary": 4}
    assert "from its journal" in run.metadata["stop"]["reason"]
    assert not journal.exists()
    assert main(["recover", "--catalog", str(catalog_dir)]) == 0
    assert "no unfinished run to close from a journal" in capsys.readouterr().out


def test_recoveries_of_one_journal_directory_take_turns(catalog_dir, tmp_path, capsys, monkeypatch):
    """Two `recover --catalog` at once: one replayed a journal the other had just removed
    (a crash), or took the other, reading it, for the run's process."""
    import fcntl
    import threading

    journals = tmp_path / "journals"
    monkeypatch.setenv(JOURNAL_ENV, str(journals))
    scanning = _motor_scan_then_wait(catalog_dir)
    assert scanning.stdout.readline() == "waiting\n"
    _kill(scanning)
    (journal,) = journals.glob("*.jsonl")
    codes: list[int] = []
    with open(journals / ".recover.lock", "a") as other:  # another recovery at work
        fcntl.flock(other, fcntl.LOCK_EX)
        second = threading.Thread(
            target=lambda: codes.append(main(["recover", "--catalog", str(catalog_dir)]))
        )
        second.start()
        second.join(2)
        assert second.is_alive() and journal.exists()  # it waits for the other
    second.join(60)
    assert codes == [0]
    out = capsys.readouterr().out
    assert "another ophyd-scmos recover is closing the runs of" in out
    assert f"{journal}: closed run {journal.stem}" in out and not journal.exists()


def test_a_run_only_a_journal_holds_is_made_in_the_catalog_it_was_written_for_only(
    catalog_dir, tmp_path, capsys
):
    """A run none of whose documents reached its catalog (a process that died with its
    catalog not answering) is in its journal alone. `recover` with another catalog keeps the
    journal and says which catalog it was for; with that catalog, opened anew, it makes the
    run there, with its events, and closes it with the stop the journal kept: it ended."""
    journals = tmp_path / "journals"
    journal = Journal(journals, catalog=catalog_location(open_catalog(catalog_dir)))
    RE = RunEngine({})
    (uid,) = RE(count([det], num=3), journal.write)
    journal.close()  # the process ended
    (path,) = journals.glob("*.jsonl")
    assert path.name == f"{uid}.jsonl"
    assert uid not in open_catalog(catalog_dir)

    other = tmp_path / "other-catalog"
    args = ["recover", "--journal", str(journals), "--catalog"]
    assert main([*args, str(other)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: run {uid} is not in this catalog; its journal is kept (it was written " in out
    assert f"for {catalog_dir}" in out
    assert path.exists() and uid not in open_catalog(other)

    assert main([*args, str(catalog_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: run {uid} had not reached the catalog; made from its journal" in out
    assert f"{path}: 3 events the catalog lacked written into run {uid}" in out
    assert f"{path}: closed run {uid}" in out
    run = open_catalog(catalog_dir)[uid]
    assert run.metadata["start"]["plan_name"] == "count"
    assert run["primary"]["det"].read().shape == (3,)
    stop = run.metadata["stop"]
    assert stop["exit_status"] == "success" and stop["num_events"] == {"primary": 3}
    assert "written by ophyd-scmos recover from the run's journal" in stop["reason"]
    assert not path.exists()


def test_a_run_that_ended_gets_its_own_stop_once_its_cameras_files_are_recovered(
    catalog_dir, tmp_path, capsys
):
    """A camera's run that ended, but whose end the catalog never took (its journal holds
    the stop): closed from its journal alone (its camera's file not there) it is "fail", its
    images maybe partial, and the stop says how the run ended; `recover --catalog` alone
    once the file is back finds it by the run's descriptor, and the run, now whole, gets the
    stop the journal kept."""
    journals = tmp_path / "journals"
    journal = Journal(journals, catalog=catalog_location(open_catalog(catalog_dir)))
    cam = _camera(tmp_path / "data")
    try:
        (uid,) = RunEngine({})(count([cam, det], num=3), journal.write)
        journal.close()  # the process ended
        file = Path(cam.file_path.get())
    finally:
        cam.destroy()
    away = file.rename(tmp_path / "away.h5")
    args = ["recover", "--journal", str(journals), "--catalog", str(catalog_dir)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"closed run {uid} from its journal" in out
    assert "its journal is kept until they are recovered" in out
    stop = open_catalog(catalog_dir)[uid].metadata["stop"]
    assert stop["exit_status"] == "fail"
    assert "the run itself ended with exit_status 'success'" in stop["reason"]

    away.rename(file)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"{file}: the file of a camera of run {uid}" in out
    assert f"{file}: added to run {uid}" in out
    run = open_catalog(catalog_dir)[uid]
    np.testing.assert_array_equal(run["primary"]["cam_image"].read(), _expected(3)[:, None])
    stop = run.metadata["stop"]
    assert stop["exit_status"] == "success" and stop["num_events"] == {"primary": 3}
    assert f"its images from {file}" in stop["reason"] and "ended_as" not in stop
    assert not list(journals.glob("*.jsonl"))  # no journal left (the lock of recoveries is)
    assert main(args) == 0
    assert "no unfinished run to close from a journal" in capsys.readouterr().out


def test_a_run_of_two_cameras_that_ended_keeps_its_journal_until_both_files_are_in_it(
    catalog_dir, tmp_path, capsys
):
    """Recovered with one camera's file named, a run that ended is "fail" and its journal
    kept; `recover --catalog` alone later finds the other camera's file by the journal's
    run and writes the run's own stop."""
    journals = tmp_path / "journals"
    journal = Journal(journals, catalog=catalog_location(open_catalog(catalog_dir)))
    cams = [_camera(tmp_path / "data", name) for name in ("left", "right")]
    try:
        (uid,) = RunEngine({})(count(cams, num=2), journal.write)
        journal.close()  # the process ended
        left, right = (cam.file_path.get() for cam in cams)
    finally:
        for cam in cams:
            cam.destroy()
    args = ["recover", "--journal", str(journals), "--catalog", str(catalog_dir)]
    assert main([*args, left]) == 0
    assert "its journal is kept until they are recovered" in capsys.readouterr().out
    assert open_catalog(catalog_dir)[uid].metadata["stop"]["exit_status"] == "fail"

    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"{right}: the file of a camera of run {uid}" in out and left not in out
    run = open_catalog(catalog_dir)[uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    for name in ("left", "right"):
        np.testing.assert_array_equal(run["primary"][f"{name}_image"].read(), _expected(2)[:, None])
    assert not list(journals.glob("*.jsonl"))  # no journal left (the lock of recoveries is)


def test_recovering_a_file_writes_other_dead_runs_journals_and_leaves_those_runs_open(
    catalog_dir, tmp_path, capsys, monkeypatch
):
    """`recover --catalog FILE` writes the journal of every run whose process is gone into
    its run, also of a run the file is not of (here a killed motor scan), which then stays
    open with its journal until its own recovery."""
    journals = tmp_path / "journals"
    monkeypatch.setenv(JOURNAL_ENV, str(journals))
    _killed_motor_scan(catalog_dir)
    (motor_journal,) = journals.glob("*.jsonl")
    path = _killed_scan(catalog_dir, tmp_path / "data", interval=3600)

    assert main(["recover", "--catalog", str(catalog_dir), path]) == 0
    out = capsys.readouterr().out
    uid = motor_journal.stem
    assert f"{motor_journal}: 4 events the catalog lacked written into run {uid}" in out
    assert f"{motor_journal}: run {uid} stays open" in out
    assert list(journals.glob("*.jsonl")) == [motor_journal]  # the file's run's journal went
    run = open_catalog(catalog_dir)[uid]
    assert "stop" not in run.metadata
    np.testing.assert_array_equal(run["primary"]["motor"].read(), np.arange(4))
    assert main(["recover", "--catalog", str(catalog_dir)]) == 0
    assert f"{motor_journal}: 0 events the catalog lacked written" in capsys.readouterr().out
    assert open_catalog(catalog_dir)[uid].metadata["stop"]["exit_status"] == "fail"
    assert not motor_journal.exists()


def _killed_scan(catalog_dir, write_dir, **kwargs: Any) -> str:
    """`SCAN_THEN_WAIT` (`_scan_then_wait`) killed as it waits, once its writer closed the
    file: the file's path."""
    acquiring = _scan_then_wait(catalog_dir, write_dir, **kwargs)
    try:
        path, writer = acquiring.stdout.readline().split()
    finally:
        _kill(acquiring)
    _wait_until_gone(writer)
    return path


def _killed_motor_scan(catalog_dir) -> None:
    """`MOTOR_SCAN_THEN_WAIT` killed as it waits."""
    scanning = _motor_scan_then_wait(catalog_dir)
    try:
        assert scanning.stdout.readline() == "waiting\n"
    finally:
        _kill(scanning)


def _motor_scan_then_wait(catalog_dir) -> subprocess.Popen:
    """`MOTOR_SCAN_THEN_WAIT` in a process of its own."""
    return subprocess.Popen(
        [sys.executable, "-c", MOTOR_SCAN_THEN_WAIT, str(catalog_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )


def _scan_then_wait(
    catalog_dir, write_dir, interval: float, busy: str = "free"
) -> subprocess.Popen:
    """`SCAN_THEN_WAIT` in a process of its own, writing ahead every `interval` s (`busy`:
    writing nothing after the run's start; "before": nor the start)."""
    args = [str(catalog_dir), str(write_dir), str(interval), busy]
    return subprocess.Popen(
        [sys.executable, "-c", SCAN_THEN_WAIT, *args], stdout=subprocess.PIPE, text=True
    )


def _kill(acquiring: subprocess.Popen) -> None:
    acquiring.send_signal(signal.SIGKILL)
    acquiring.wait()
    acquiring.stdout.close()


def _wait_until_gone(writer: str) -> None:
    """Until the writer process `writer` (a pid) closed the file and ended."""
    deadline = time.monotonic() + 60
    while subprocess.run(["kill", "-0", writer], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the writer did not end"
        time.sleep(0.05)


@pytest.mark.parametrize("interval", [1e-6, 1e3], ids=["every_event", "at_the_end"])
@pytest.mark.parametrize("plan", ["count", "count_stream", "movie"])
def test_a_run_written_in_pieces_reads_as_one(plan, interval, catalog_dir, tmp_path):
    """Written a document at a time, or all at the end (as TiledWriter does), a run reads
    back the same: every event, and every frame of the file under its image (a step scan's
    Datums or StreamDatums, or a movie's pages)."""
    catalog = open_catalog(catalog_dir)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(CatalogWriter(catalog, interval=interval))
    driver = SimulatedSCMOS(shape=(256, 320), seed=5, camera_buffer_frames=60)
    cam = SCMOSCamera(
        name="cam",
        driver=driver,
        write_dir=tmp_path / "data",
        ring_mb=4,
        asset_docs="stream" if plan == "count_stream" else "resource",
    )
    try:
        cam.roi.set(ROI_XYWH)
        cam.exposure_time.set(0.001)
        if plan == "movie":
            (uid,) = RE(movie(cam, frames=60, page_every=0.01))
        else:
            (uid,) = RE(count([cam], num=12))
    finally:
        cam.destroy()
    run = catalog[uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    n = 60 if plan == "movie" else 12
    np.testing.assert_array_equal(run["primary"]["cam_frame_number"].read(), np.arange(n))
    expected = _expected(n) if plan != "count" else _expected(n)[:, None]
    np.testing.assert_array_equal(run["primary"]["cam_image"].read(), expected)


def test_an_interval_must_be_positive(catalog_dir):
    with pytest.raises(ValueError, match="interval must be > 0"):
        CatalogWriter(open_catalog(catalog_dir), interval=0)


def test_the_catalog_checks_every_document_but_the_events_the_runengine_checked(catalog_dir):
    """Events come checked against the schema by the RunEngine that made them: they are not
    checked again (it cost more than the rest of their way to the catalog). A document the
    RunEngine does not check, such as a descriptor, still is."""
    import jsonschema
    from event_model import compose_run

    writer = CatalogWriter(open_catalog(catalog_dir))
    run = compose_run()
    writer("start", run.start_doc)
    descriptor = run.compose_descriptor(name="primary", data_keys={}).descriptor_doc
    with pytest.raises(jsonschema.ValidationError, match="'now' is not of type 'number'"):
        writer("descriptor", {**descriptor, "time": "now"})
        writer("stop", run.compose_stop())  # (raised here if the writer's thread took it)
    assert CatalogWriter(open_catalog(catalog_dir), normalizer=None)._normalizer is None


def test_a_stream_datum_composed_from_a_datum_is_not_checked_one_that_comes_is(monkeypatch):
    """The StreamDatum the normalizer composes from an event's Datum is its own work: it
    is handed on unchecked. One that comes as a document is checked, as every document the
    RunEngine does not check."""
    import jsonschema
    from event_model import DocumentNames, compose_run, schema_validators

    from ophyd_scmos.catalog.writing import EngineNormalizer

    checked: list[dict] = []
    validator = schema_validators[DocumentNames.stream_datum]

    class Counting:
        def validate(self, doc: dict) -> None:
            checked.append(doc)
            validator.validate(doc)

    monkeypatch.setitem(schema_validators, DocumentNames.stream_datum, Counting())
    normalizer = EngineNormalizer()
    handed: list[tuple[str, dict]] = []
    normalizer.subscribe(lambda name, doc: handed.append((name, doc)))
    run = compose_run()
    normalizer("start", run.start_doc)
    image = {"source": "cam", "dtype": "array", "shape": [1, 4, 4], "external": "FILESTORE:"}
    descriptor = run.compose_descriptor(name="primary", data_keys={"img": image})
    normalizer("descriptor", descriptor.descriptor_doc)
    resource = run.compose_resource(
        spec="AD_HDF5", root="/", resource_path="run.h5", resource_kwargs={"frame_per_point": 1}
    )
    normalizer("resource", resource.resource_doc)
    for point in range(3):
        datum = resource.compose_datum(datum_kwargs={"point_number": point})
        normalizer("datum", datum)
        normalizer(
            "event",
            descriptor.compose_event(
                data={"img": datum["datum_id"]}, timestamps={"img": 0.0}, filled={"img": False}
            ),
        )
    rows = [doc["indices"] for name, doc in handed if name == "stream_datum"]
    assert rows == [{"start": p, "stop": p + 1} for p in range(3)]
    assert checked == []
    stream = run.compose_stream_resource(
        mimetype="application/x-hdf5", uri="file:///run.h5", data_key="t", parameters={}
    )
    normalizer("stream_resource", stream.stream_resource_doc)
    came = stream.compose_stream_datum(indices={"start": 0, "stop": 1}, validate=False)
    with pytest.raises(jsonschema.ValidationError, match="'one' is not of type 'integer'"):
        normalizer("stream_datum", {**came, "indices": {"start": "one", "stop": 1}})
    assert len(checked) == 1


def test_a_catalog_that_stops_answering_holds_up_no_scan(catalog_dir):
    """The catalog's server is stopped (SIGSTOP: a hung server, a network that drops
    packets) for 6 s in the middle of a scan, longer than the writer waits between writes:
    the scan goes on meanwhile (its documents wait for the writer), and once the server
    answers again every event is in the catalog, once."""
    import os
    import threading

    from ophyd_scmos.catalog.local_server import find_server

    catalog = open_catalog(catalog_dir)
    server = find_server(catalog_dir)
    assert server is not None
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(CatalogWriter(catalog, interval=0.2))
    stopped: list[float] = []
    during: list[float] = []

    def stop_the_server_for_a_while(name, doc):
        now = time.monotonic()
        if doc["seq_num"] == 100:
            os.kill(server.pid, signal.SIGSTOP)
            stopped.append(now)
            threading.Timer(6, os.kill, (server.pid, signal.SIGCONT)).start()
        elif stopped and 1 < now - stopped[0] < 5.5:
            during.append(now)

    RE.subscribe(stop_the_server_for_a_while, "event")
    try:
        (uid,) = RE(count([det], num=1500, delay=0.005))
    finally:
        os.kill(server.pid, signal.SIGCONT)
    # Events came all along (the scan waited for the catalog: none for 6 s).
    assert len(during) > 20 and max(np.diff(during)) < 2, "the scan waited for the catalog"
    np.testing.assert_array_equal(catalog[uid]["primary"]["seq_num"].read(), np.arange(1, 1501))


@pytest.fixture
def sent(monkeypatch):
    """(thread, method, path) of every request to the embedded catalog's server from now on."""
    import threading

    from ophyd_scmos.catalog import local_server

    requests: list[tuple[str, str, str]] = []
    real = local_server.ServerTransport.handle_request

    def handle_request(self, request):
        requests.append((threading.current_thread().name, request.method, request.url.path))
        return real(self, request)

    monkeypatch.setattr(local_server.ServerTransport, "handle_request", handle_request)
    return requests


def test_the_embedded_catalog_is_not_told_that_a_runs_streams_ended(catalog_dir, sent):
    """Its server keeps no streams that followers subscribe to: a run's stop sends no
    `close_stream` request (one a node, each a request's time for nothing), and the run
    reads back whole and ended."""
    catalog = open_catalog(catalog_dir)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(CatalogWriter(catalog))
    (uid,) = RE(count([det], num=3))
    assert any("/table/" in path for _, _, path in sent)  # the run went through this transport
    assert not [path for _, _, path in sent if "/stream/close/" in path]
    assert catalog[uid].metadata["stop"]["exit_status"] == "success"
    np.testing.assert_array_equal(catalog[uid]["primary"]["seq_num"].read(), [1, 2, 3])


def test_the_runengine_waits_for_the_catalog_only_at_a_runs_start_and_stop(
    catalog_dir, tmp_path, sent
):
    """The request that makes a run's stream is sent from the writer's thread while the
    RunEngine goes on; the run's node is made from the RunEngine's thread (the writer's
    being free), so that a killed run is in the catalog at once; and the RunEngine waits for
    the stop."""
    catalog = open_catalog(catalog_dir)
    uid = _count_into(catalog, tmp_path, 3)
    start = next(t for t, m, path in sent if m == "POST" and path.endswith("/metadata/"))
    stream = next(t for t, m, path in sent if m == "POST" and path.endswith(uid))
    assert start != "scmos-catalog-writer"  # the run's node: made as the run starts
    assert stream == "scmos-catalog-writer"  # its stream's: while the RunEngine went on
    # The stop was waited for (whichever thread wrote it): the run is whole once RE returns.
    assert catalog[uid].metadata["stop"]["exit_status"] == "success"
    np.testing.assert_array_equal(
        catalog[uid]["primary"]["cam_image"].read(), _expected(3)[:, None]
    )


def test_a_short_runs_image_is_made_in_the_catalog_in_one_request(catalog_dir, tmp_path, sent):
    """The image of a run shorter than the write-ahead interval reaches the catalog in one
    request, its node made with its rows and metadata (TiledWriter sends three: the node,
    then its rows, then at the stop its metadata), and reads back as TiledWriter's."""
    catalog = open_catalog(catalog_dir)
    uid = _count_into(catalog, tmp_path, 2)
    image = [(m, path) for _, m, path in sent if "cam_image" in path or "/register/" in path]
    ((method, path),) = image
    assert method == "POST" and path.endswith(f"/{uid}/primary")
    node = catalog[uid]["primary"]["cam_image"]
    np.testing.assert_array_equal(node.read(), _expected(2)[:, None])
    assert node.metadata == {"spec": "AD_HDF5", "frame_per_point": 1, IMAGE_RUN: uid}


def _scan_switching(catalog, write_dir, switch, *, on: int, off: int) -> str:
    """A 25-point scan of `_camera` and det into `catalog`, written ahead every 0.05 s by a
    `CatalogWriter`, `switch` set at point `on` and cleared at point `off`: its uid."""
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp

    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(CatalogWriter(catalog, interval=0.05))
    cam = _camera(write_dir)

    @bpp.stage_decorator([cam])
    @bpp.run_decorator()
    def plan():
        for point in range(25):
            (switch.set if point == on else switch.clear if point == off else int)()
            yield from bps.trigger_and_read([cam, det])
            yield from bps.sleep(0.03)

    try:
        (uid,) = RE(plan())
    finally:
        switch.clear()
        cam.destroy()
    return uid


@pytest.fixture
def flaky_catalog(monkeypatch):
    """The catalog's transport, made for as long as each is set to fail the writes of image
    references (`failing`: a new image's node, made with its first rows, or an image's new
    rows) or the making of a run's stream (`failing_streams`), to lose the answer to each
    write the catalog took the first time it is sent (`lost`), or to each making of a
    run's stream or a node in it (`lost_made`: its table, its image), or to answer the
    writer's thread slowly (`slow`); Tiled's client then retries nothing (else each failure
    takes many seconds)."""
    import threading
    from types import SimpleNamespace

    import httpx
    import stamina

    from ophyd_scmos.catalog import local_server

    flaky = SimpleNamespace(
        failing=threading.Event(),
        failing_streams=threading.Event(),
        lost=threading.Event(),
        lost_made=threading.Event(),
        slow=threading.Event(),
    )
    real = local_server.ServerTransport.handle_request
    answered: set[tuple[str, str, bytes]] = set()  #: writes whose answer was let through

    def making(request) -> int:
        """How deep in a run a POST makes a node: 1 for a stream (.../metadata/RUN), 2 for
        a node in a stream (.../metadata/RUN/STREAM, .../register/RUN/STREAM); else 0."""
        _, found, node = request.url.path.partition("/metadata/")
        if not found:
            _, found, node = request.url.path.partition("/register/")
        node = node.strip("/")
        return node.count("/") + 1 if request.method == "POST" and found and node else 0

    def handle_request(self, request):
        path = request.url.path
        if (
            flaky.failing.is_set()
            and ("/data_source/" in path or path.startswith("/api/v1/register/"))
        ) or (flaky.failing_streams.is_set() and making(request) == 1):
            raise httpx.ReadTimeout("the catalog does not answer", request=request)
        if flaky.slow.is_set() and threading.current_thread().name == "scmos-catalog-writer":
            time.sleep(1)
        response = real(self, request)
        write = (request.method, str(request.url), request.content)
        losing = (flaky.lost.is_set() and request.method != "GET") or (
            flaky.lost_made.is_set() and making(request) in (1, 2)
        )
        if losing and write not in answered:
            answered.add(write)
            raise httpx.ReadTimeout("the catalog's answer was lost", request=request)
        return response

    monkeypatch.setattr(local_server.ServerTransport, "handle_request", handle_request)
    stamina.set_active(False)
    yield flaky
    stamina.set_active(True)


@contextlib.contextmanager
def _retried_as_by_default():
    """Tiled's client retrying as it does by default (`flaky_catalog` turns that off),
    without its waits."""
    import stamina

    stamina.set_active(True)
    with stamina.set_testing(True, attempts=3):
        yield


@contextlib.contextmanager
def _answers_lost(lost):
    """`flaky_catalog`'s `lost` meanwhile, Tiled's client retrying (`_retried_as_by_default`)."""
    lost.set()
    try:
        with _retried_as_by_default():
            yield
    finally:
        lost.clear()


def test_a_slow_catalog_still_gets_a_run_every_two_intervals(catalog_dir, flaky_catalog):
    """Each write ahead taking a second: what it held waits two intervals more at most
    (20 s, as 5% of the run's time, before: a killed process lost that much)."""
    import bluesky.plan_stubs as bps
    from ophyd.sim import det

    slow = flaky_catalog.slow
    catalog = open_catalog(catalog_dir)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(CatalogWriter(catalog))
    seen = []

    def scan_then_look():
        uid = yield from bps.open_run()
        for _ in range(30):
            yield from bps.trigger_and_read([det])
            yield from bps.sleep(0.2)
        # The last events: written within two intervals and a write (~3 s), not 20 s.
        yield from bps.sleep(10)
        seen.append(len(catalog[uid]["primary"]["seq_num"].read()))
        yield from bps.close_run()

    slow.set()
    RE(scan_then_look())
    slow.clear()
    assert seen == [30]


def test_a_run_end_the_catalog_did_not_take_is_written_once_it_answers(
    catalog_dir, tmp_path, flaky_catalog
):
    """The catalog fails the run's stop (its images' writes): the error is raised, and the
    events and images held are not dropped with the run (they were): written, with the stop,
    once the catalog answers again, while the process lives."""
    failing = flaky_catalog.failing
    catalog = open_catalog(catalog_dir)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(CatalogWriter(catalog, interval=0.05))
    RE.subscribe(lambda name, doc: started.append(doc["uid"]), "start")
    started: list[str] = []
    cam = _camera(tmp_path)
    failing.set()
    try:
        with pytest.raises(Exception, match="the catalog does not answer"):
            RE(count([cam], num=12))
    finally:
        cam.destroy()
    (uid,) = started
    assert "stop" not in catalog[uid].metadata
    failing.clear()
    deadline = time.monotonic() + 30
    while "stop" not in catalog[uid].metadata:
        assert time.monotonic() < deadline, "the run's end was not written"
        time.sleep(0.1)
    run = catalog[uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    np.testing.assert_array_equal(run["primary"]["cam_image"].read(), _expected(12)[:, None])
    np.testing.assert_array_equal(run["primary"]["seq_num"].read(), np.arange(1, 13))


def test_an_image_the_catalog_did_not_take_is_sent_again_not_counted_again(
    catalog_dir, tmp_path, flaky_catalog
):
    """Image references written ahead while the catalog failed to take them: each frame is
    registered once (a retry counted them again: 35 rows for 25 events, unreadable)."""
    failing = flaky_catalog.failing
    catalog = open_catalog(catalog_dir)
    uid = _scan_switching(catalog, tmp_path, failing, on=5, off=15)
    images = catalog[uid]["primary"]["cam_image"]
    assert images.shape == (25, 1, 64, 96)
    np.testing.assert_array_equal(images.read(), _expected(25)[:, None])


@pytest.mark.parametrize("from_point", [0, 5])
def test_writes_whose_answers_were_lost_are_in_the_catalog_once(
    catalog_dir, tmp_path, flaky_catalog, from_point
):
    """The catalog takes each write of a scan's events and images but its answer is lost
    (a proxy's timeout) the first time it is sent, for ten points, from the first (the
    stream, its table and its image made then) or later: every event and image row is there
    once (TiledWriter appends again what was taken: the same seq_num twice). Tiled's client
    retries as it does by default, without its waits."""
    lost = flaky_catalog.lost
    catalog = open_catalog(catalog_dir)
    with _retried_as_by_default():
        uid = _scan_switching(catalog, tmp_path, lost, on=from_point, off=from_point + 10)
    run = catalog[uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    np.testing.assert_array_equal(run["primary"]["seq_num"].read(), np.arange(1, 26))
    np.testing.assert_array_equal(run["primary"]["cam_image"].read(), _expected(25)[:, None])


@pytest.mark.parametrize(
    ("fault", "until"),
    [
        pytest.param("lost_made", 25, id="made-unanswered"),
        pytest.param("failing_streams", 5, id="stream-not-made"),
    ],
)
def test_nodes_the_catalog_did_not_answer_for_are_made_once_and_the_scan_goes_on(
    catalog_dir, tmp_path, flaky_catalog, fault, until
):
    """The catalog makes a scan's stream, its table of events and its image, but each answer
    is lost and Tiled's client does not try again (its tries spent), all scan long; or it
    does not make the stream for the first five points. Each is made with the next write ahead, or
    written into as the catalog holds it (made again, the catalog refused it, 409 Conflict,
    at every try, and the run's stop failed; a stream not made failed the scan at once).
    Every event once, every pixel."""
    catalog = open_catalog(catalog_dir)
    uid = _scan_switching(catalog, tmp_path, getattr(flaky_catalog, fault), on=0, off=until)
    run = catalog[uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    assert sorted(run["primary"].base) == ["cam_image", "internal"]
    np.testing.assert_array_equal(run["primary"]["seq_num"].read(), np.arange(1, 26))
    np.testing.assert_array_equal(run["primary"]["cam_image"].read(), _expected(25)[:, None])


def test_a_stream_the_catalog_never_makes_fails_the_run_at_a_batch(catalog_dir, flaky_catalog):
    """A stream the catalog does not make holds its documents only up to TiledWriter's batch
    (its memory is bounded, as for a made stream's events): then the run fails saying why,
    long before its end."""
    import bluesky.plan_stubs as bps

    catalog = open_catalog(catalog_dir)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(CatalogWriter(catalog, batch_size=5))
    saved: list[int] = []
    RE.subscribe(lambda name, doc: saved.append(doc["seq_num"]), "event")

    def scan():
        yield from bps.open_run()
        for _ in range(200):
            yield from bps.trigger_and_read([det])
            yield from bps.sleep(0.01)
        yield from bps.close_run()

    flaky_catalog.failing_streams.set()
    with pytest.raises(Exception, match="the catalog does not answer"):
        RE(scan())
    assert 5 <= len(saved) < 100


def test_sync_copies_each_event_once_where_answers_were_lost(catalog_dir, tmp_path, flaky_catalog):
    """`sync` into a catalog whose answers are lost the first time (a proxy's timeout): the
    copy holds each event and image row once (TiledWriter, which copied runs, appended the
    events again: 10 events, 20 rows)."""
    from ophyd_scmos.catalog.transfer import sync

    lost = flaky_catalog.lost
    source = open_catalog(catalog_dir)
    uid = _count_into(source, tmp_path, 10)
    target = open_catalog(tmp_path / "target")
    with _answers_lost(lost):
        (result,) = sync(source, target, [uid])
    assert (result.status, result.error) == ("copied", None)
    run = target[uid]
    np.testing.assert_array_equal(run["primary"]["seq_num"].read(), np.arange(1, 11))
    np.testing.assert_array_equal(run["primary"]["cam_image"].read(), _expected(10)[:, None])


def test_recover_writes_each_event_once_where_answers_were_lost(
    catalog_dir, tmp_path, capsys, monkeypatch, flaky_catalog
):
    """`recover` writing a killed motor scan's events from its journal into a catalog whose
    answers are lost the first time: each event is there once (4, not 8)."""
    journals = tmp_path / "journals"
    monkeypatch.setenv(JOURNAL_ENV, str(journals))
    _killed_motor_scan(catalog_dir)
    (journal,) = journals.glob("*.jsonl")
    lost = flaky_catalog.lost
    with _answers_lost(lost):
        assert main(["recover", "--catalog", str(catalog_dir)]) == 0
    assert f"4 events the catalog lacked written into run {journal.stem}" in capsys.readouterr().out
    run = open_catalog(catalog_dir)[journal.stem]
    np.testing.assert_array_equal(run["primary"]["motor"].read(), np.arange(4))
    assert run.metadata["stop"]["exit_status"] == "fail"


def test_a_document_the_catalog_refuses_on_the_writers_thread_fails_that_run_only(
    catalog_dir, flaky_catalog
):
    """A stream TiledWriter refuses (data keys `seq_num` and `seq_num_`) whose descriptor
    comes while the writer's thread writes: the run fails, its record in the catalog says so
    (it said "success"), and the next run is not failed by that error."""
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp
    from ophyd.sim import SynSignal, det

    slow = flaky_catalog.slow
    catalog = open_catalog(catalog_dir)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(CatalogWriter(catalog, interval=0.05))
    refused = [SynSignal(name="seq_num"), SynSignal(name="seq_num_")]
    uids = []
    RE.subscribe(lambda name, doc: uids.append(doc["uid"]), "start")

    @bpp.run_decorator()
    def plan():
        for _ in range(5):
            yield from bps.trigger_and_read([det])
        slow.set()  # the writer's next write takes a second: what comes meanwhile waits
        yield from bps.sleep(0.3)
        yield from bps.trigger_and_read(refused, name="refused")
        for _ in range(20):
            yield from bps.trigger_and_read([det])
            yield from bps.sleep(0.1)

    with pytest.raises(ValueError, match="Cannot rename seq_num"):
        RE(plan())
    slow.clear()
    stop = catalog[uids[-1]].metadata["stop"]
    assert stop["exit_status"] == "fail"
    (healthy,) = RE(count([det], num=3))
    assert catalog[healthy].metadata["stop"]["exit_status"] == "success"
