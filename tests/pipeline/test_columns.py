"""The writer's per-frame columns (frame numbers, timestamps, statistics): appended a chunk
at a time, stored with each flush, cut back when a run's last points are not recorded."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from ophyd_scmos.pipeline.writer import Column


@pytest.fixture
def column(tmp_path):
    with h5py.File(tmp_path / "columns.h5", "w", libver="latest") as f:
        dataset = f.create_dataset("c", shape=(0,), maxshape=(None,), chunks=(8,), dtype="<f8")
        f.swmr_mode = True
        yield Column(dataset)


def test_appends_and_cuts_keep_exactly_the_values_appended(column):
    rng = np.random.default_rng(7)
    expected = np.empty(0)
    # one at a time (a step scan), runs across chunk edges (a movie), cuts within the last
    # chunk and back into earlier ones (points never recorded), then appends again
    for action, n in [("append", 1)] * 11 + [
        ("append", 21),
        ("cut", 30),
        ("append", 3),
        ("cut", 13),
        ("append", 1),
        ("cut", 8),
        ("append", 17),
        ("cut", 0),
        ("append", 9),
        ("append", 0),
    ]:
        if action == "append":
            values = rng.normal(size=n)
            column.append(values)
            expected = np.concatenate([expected, values])
        else:
            column.cut(n)
            expected = expected[:n]
        assert column.length == len(expected)
        held = column.dataset[()]  # until a store: the values of the chunks filled, no more
        assert len(held) == column.stored <= len(expected)
        np.testing.assert_array_equal(held, expected[: len(held)])
        column.store()
        np.testing.assert_array_equal(column.dataset[()], expected)
        if len(expected):  # the chunk where it ends, as stored: its values, then zeros
            last = (len(expected) - 1) // 8 * 8
            _, stored = column.dataset.id.read_direct_chunk((last,))
            tail = np.zeros(8)
            tail[: len(expected) - last] = expected[last:]
            np.testing.assert_array_equal(np.frombuffer(stored, "<f8"), tail)
        column.dataset.file.flush()
        with h5py.File(column.dataset.file.filename, "r", swmr=True) as reader:
            np.testing.assert_array_equal(reader["c"][()], expected)


def test_a_column_starts_empty_and_unfiltered(tmp_path):
    with h5py.File(tmp_path / "columns.h5", "w", libver="latest") as f:
        grown = f.create_dataset("a", data=np.arange(3.0), maxshape=(None,), chunks=(8,))
        squeezed = f.create_dataset(
            "b", shape=(0,), maxshape=(None,), chunks=(8,), dtype="<f8", compression="gzip"
        )
        for dataset in (grown, squeezed):
            with pytest.raises(ValueError, match="starts empty and unfiltered"):
                Column(dataset)


#: Appends whole chunks to a column under a file-size limit (ulimit -f, a process's own) until
#: a store fails, then says what the column and the file hold.
_UNTIL_THE_LIMIT = """
import json, os, resource, signal, sys
import h5py, numpy as np
from ophyd_scmos.pipeline.writer import Column
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
with h5py.File(sys.argv[1], "w", libver="latest") as f:
    dataset = f.create_dataset("c", shape=(0,), maxshape=(None,), chunks=(4096,), dtype="<f8")
    f.swmr_mode = True
    f.flush()
    room = os.path.getsize(sys.argv[1]) + 3 * 32768 + 16384  # three chunks and a half
    resource.setrlimit(resource.RLIMIT_FSIZE, (room, resource.RLIM_INFINITY))
    column, error = Column(dataset), None
    try:
        for i in range(100):
            column.append(np.arange(i * 4096, (i + 1) * 4096, dtype=float))
            column.store()
            f.flush()
    except OSError as exc:
        error = str(exc)
    said = {"error": error, "length": column.length, "stored": column.stored,
            "extent": dataset.shape[0]}
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
print(json.dumps(said))
"""


def test_a_store_that_fails_leaves_the_file_claiming_only_what_it_holds(tmp_path):
    path = tmp_path / "limited.h5"
    done = subprocess.run(
        [sys.executable, "-c", _UNTIL_THE_LIMIT, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    said = json.loads(done.stdout)
    assert "File too large" in said["error"]
    assert said["stored"] == said["extent"] < said["length"]
    assert said["stored"] > 0 and said["stored"] % 4096 == 0
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["c"][()], np.arange(said["stored"], dtype=float))
