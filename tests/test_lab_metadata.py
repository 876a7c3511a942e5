"""The lab's RE.md, shared at once by every session of the lab (IPython, `acquire`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ophyd_scmos.session import LabMetadata

SESSION = """
import os
import sys
import time
from pathlib import Path
from bluesky.plans import count
from ophyd.sim import det
from ophyd_scmos.config import load_config
from ophyd_scmos.session import make_run_engine

RE = make_run_engine(load_config(sys.argv[1]), progress=False, sigint=False)
ready = Path(sys.argv[3])  # both sessions are up before either runs
(ready / str(os.getpid())).touch()
while len(list(ready.iterdir())) < 2:
    time.sleep(0.01)
def told(name, doc):
    if name == "start":
        print(doc["scan_id"], flush=True)

for _ in range(int(sys.argv[2])):
    RE(count([det]), told)
"""


def test_two_sessions_side_by_side_never_take_the_same_scan_id(tmp_path: Path):
    """Each session counted on from the scan id it started with, and the first to exit
    failed on a metadata file the other had rewritten."""
    config = tmp_path / "lab.toml"
    config.write_text(f'[session]\nmetadata_dir = "{tmp_path / "md"}"\n')
    LabMetadata(tmp_path / "md").update(scan_id=100, sample="beads")
    runs = 25
    ready = tmp_path / "ready"
    ready.mkdir()
    sessions = [
        subprocess.Popen(
            [sys.executable, "-c", SESSION, str(config), str(runs), str(ready)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [session.communicate(timeout=300) for session in sessions]
    for session, (_, err) in zip(sessions, outputs, strict=True):
        assert session.returncode == 0 and "Traceback" not in err, err
    taken = [int(line) for out, _ in outputs for line in out.split()]
    assert sorted(taken) == list(range(101, 101 + 2 * runs))
    assert LabMetadata(tmp_path / "md") == {"scan_id": 100 + 2 * runs, "sample": "beads"}


def test_a_change_in_one_session_is_seen_in_the_other_at_once(tmp_path: Path):
    one, other = LabMetadata(tmp_path), LabMetadata(tmp_path)
    one["sample"] = "beads"
    assert other["sample"] == "beads"
    other["operator"] = "me"
    del one["sample"]
    assert dict(other) == dict(one) == {"operator": "me"}


def test_a_scan_id_written_back_never_undoes_a_later_one(tmp_path: Path):
    """The RunEngine writes back the scan id it was handed: meanwhile another session may
    have taken the next one."""
    one, other = LabMetadata(tmp_path), LabMetadata(tmp_path)
    assert one.next_scan_id() == 1 and other.next_scan_id() == 2
    one["scan_id"] = 1  # what the RunEngine does after asking `one`
    # ... and then reads it into the run's start document: its own, not the other's since
    assert one["scan_id"] == 1 and dict(one)["scan_id"] == 1
    assert LabMetadata(tmp_path).next_scan_id() == 3
    one["scan_id"] = 0  # a user starting the count again is heard
    assert LabMetadata(tmp_path)["scan_id"] == 0 and other.next_scan_id() == 1


def test_what_a_persistent_dict_kept_is_taken_over(tmp_path: Path):
    from bluesky.utils import PersistentDict

    kept = PersistentDict(str(tmp_path))
    kept.update(scan_id=41, sample="beads")
    kept.flush()
    md = LabMetadata(tmp_path)
    assert md["sample"] == "beads" and md.next_scan_id() == 42


def test_only_what_a_start_document_holds_is_kept(tmp_path: Path):
    md = LabMetadata(tmp_path)
    md["exposures"] = np.array([0.1, 0.2])
    md["count"] = np.int64(3)
    with pytest.raises(TypeError, match="JSON"):
        md["path"] = Path("/data")
    assert dict(md) == {"exposures": [0.1, 0.2], "count": 3}
    assert json.loads((tmp_path / LabMetadata.FILE).read_text()) == dict(md)
