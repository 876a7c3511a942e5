"""The catalog: runs written through `TiledWriter` read back exactly, from another process too.

Self-contained: `H5Detector` below writes real HDF5 files the way the camera's writer does
(SWMR, frames on axis 0 of ``/entry/data/data``) and documents them as areaDetector does
(Resource ``AD_HDF5`` with ``frame_per_point``, one Datum per event with ``point_number``).
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import platformdirs
import pytest
from bluesky import RunEngine
from bluesky.plans import count
from bluesky_tiled_plugins import TiledWriter
from event_model import compose_resource
from ophyd import Device
from ophyd.status import Status

from ophyd_scmos.catalog import default_catalog_dir, open_catalog

FRAME_SHAPE = (6, 10)  # small, non-square: catches swapped axes


# ---------------------------------------------------------------------------------------------
# A tiny area-detector-like device


def frame(index: int, shape: tuple[int, int] = FRAME_SHAPE) -> np.ndarray:
    """Frame number `index` of a run: distinct per frame and per pixel, uses the high byte."""
    pixels = np.arange(shape[0] * shape[1], dtype=np.uint32).reshape(shape)
    return ((pixels * 257 + index * 1009) % 65536).astype(np.uint16)


def expected_frames(
    num_points: int, frames_per_point: int = 1, shape: tuple[int, int] = FRAME_SHAPE
) -> np.ndarray:
    """What the catalog should return for a run of `H5Detector`: (N, k, H, W)."""
    frames = [frame(i, shape) for i in range(num_points * frames_per_point)]
    return np.stack(frames).reshape(num_points, frames_per_point, *shape)


class H5Detector(Device):
    """Writes `frames_per_point` frames per trigger to one SWMR HDF5 file per run.

    `keep_open=True` leaves the file open (in SWMR write mode) after unstage, as a writer
    that has not finished yet would; call `close()` later.
    """

    def __init__(
        self,
        *,
        name: str,
        write_dir: Path,
        frames_per_point: int = 1,
        shape: tuple[int, int] = FRAME_SHAPE,
        keep_open: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.write_dir = Path(write_dir)
        self.frames_per_point = frames_per_point
        self.shape = shape
        self.keep_open = keep_open
        self.file: h5py.File | None = None
        self._dataset: h5py.Dataset | None = None
        self._asset_docs: deque[tuple[str, dict]] = deque()
        self._compose_datum: Any = None
        self._points = 0
        self._last_datum_id = ""

    @property
    def image_key(self) -> str:
        return f"{self.name}_image"

    def stage(self) -> list[Any]:
        self.write_dir.mkdir(parents=True, exist_ok=True)
        file_name = f"{self.name}_{uuid.uuid4().hex[:8]}.h5"
        self.file = h5py.File(self.write_dir / file_name, "w", libver="latest")
        self._dataset = self.file.create_dataset(
            "/entry/data/data",
            shape=(0, *self.shape),
            maxshape=(None, *self.shape),
            chunks=(1, *self.shape),
            dtype="<u2",
        )
        self.file.swmr_mode = True
        bundle = compose_resource(
            spec="AD_HDF5",
            root=str(self.write_dir),
            resource_path=file_name,
            resource_kwargs={"frame_per_point": self.frames_per_point},
        )
        self._compose_datum = bundle.compose_datum
        self._asset_docs.append(("resource", dict(bundle.resource_doc)))
        self._points = 0
        return super().stage()

    def trigger(self) -> Status:
        assert self._dataset is not None, "trigger before stage"
        k = self.frames_per_point
        first = self._points * k
        self._dataset.resize(first + k, axis=0)
        self._dataset[first:] = np.stack([frame(first + j, self.shape) for j in range(k)])
        self._dataset.flush()
        datum = self._compose_datum(datum_kwargs={"point_number": self._points})
        self._asset_docs.append(("datum", dict(datum)))
        self._last_datum_id = datum["datum_id"]
        self._points += 1
        status = Status(self)
        status.set_finished()
        return status

    def read(self) -> dict[str, dict[str, Any]]:
        return {self.image_key: {"value": self._last_datum_id, "timestamp": time.time()}}

    def describe(self) -> dict[str, dict[str, Any]]:
        return {
            self.image_key: {
                "source": f"h5:{self.write_dir}",
                "dtype": "array",
                "dtype_numpy": "<u2",
                "shape": [self.frames_per_point, *self.shape],
                "external": "FILESTORE:",
            }
        }

    def collect_asset_docs(self) -> Iterator[tuple[str, dict]]:
        items = list(self._asset_docs)
        self._asset_docs.clear()
        yield from items

    def unstage(self) -> list[Any]:
        if not self.keep_open:
            self.close()
        return super().unstage()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.file = self._dataset = None


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module", autouse=True)
def user_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Per-user directories (data, cache, Tiled's cache) inside a temporary one, so no test
    writes to the real ones; environment variables reach subprocesses too."""
    home = tmp_path_factory.mktemp("user")

    def user_data_dir(appname: str | None = None, *args: Any, **kwargs: Any) -> str:
        return str(home / "data" / (appname or ""))

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_DATA_HOME", str(home / "data"))
        mp.setenv("XDG_CACHE_HOME", str(home / "cache"))
        mp.setenv("TILED_CACHE_DIR", str(home / "cache" / "tiled"))
        mp.setattr(platformdirs, "user_data_dir", user_data_dir)  # also where XDG is ignored
        yield home


@pytest.fixture(scope="module")
def default_catalog(user_dirs: Path) -> Iterator[tuple[Path, str]]:
    """The default catalog, created once for the module (creating one takes ~3 s), and what
    creating it printed on stderr. A client held meanwhile keeps its local server running."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        held = open_catalog()
    yield default_catalog_dir(), stderr.getvalue()
    held.context.close()


@pytest.fixture
def catalog_dir(default_catalog: tuple[Path, str]) -> Path:
    """An initialised embedded catalog directory (shared by this module's tests)."""
    return default_catalog[0]


@pytest.fixture
def catalog(catalog_dir: Path) -> Any:
    """A client of the embedded catalog."""
    return open_catalog(catalog_dir)


@pytest.fixture
def tiled_RE(catalog: Any) -> RunEngine:
    """A RunEngine writing every run into `catalog`."""
    engine = RunEngine({}, call_returns_result=False)
    engine.subscribe(TiledWriter(catalog))
    return engine


def run_count(RE: RunEngine, det: H5Detector, num: int) -> str:
    (uid,) = RE(count([det], num=num))
    return uid


# ---------------------------------------------------------------------------------------------
# Reading back from another process, while this one writes

READER = """
import json, sys, time
from pathlib import Path
import numpy as np
from ophyd_scmos.catalog import open_catalog

catalog_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
while not (out_dir / "go").exists():  # the parent creates the catalog meanwhile
    time.sleep(0.02)
catalog = open_catalog(catalog_dir)
(out_dir / "ready").touch()
# Poll while the parent writes: concurrent reads must not trip over SQLite locks.
deadline = time.monotonic() + 60
polls = 0
while not (out_dir / "uids.json").exists():
    if time.monotonic() > deadline:
        sys.exit("timed out waiting for the parent's runs")
    # Finished runs only: a table still growing can change shape under a read (Tiled answers
    # 500, "shape expected from the structure does not match"), a race of its own.
    for run in catalog.values().tail(3):
        if run.metadata.get("stop") and "primary" in run:
            run["primary"]["time"].read()  # an event table, in the file the parent appends to
    polls += 1
    time.sleep(0.05)
for uid, key in json.loads((out_dir / "uids.json").read_text()):
    np.save(out_dir / f"{uid}.npy", open_catalog(catalog_dir)[uid]["primary"][key].read())
print(polls)
"""


def test_runs_read_back_exactly_in_a_new_process(
    tmp_path: Path, user_dirs: Path, request: pytest.FixtureRequest
) -> None:
    # Frames written outside the catalog directory: readable without configuration.
    write_dir = tmp_path / "frames"
    single = H5Detector(name="det", write_dir=write_dir)
    triple = H5Detector(name="det", write_dir=write_dir, frames_per_point=3)
    still_open = H5Detector(name="det", write_dir=write_dir, frames_per_point=2, keep_open=True)

    # The reader's start-up (~3 s of imports) overlaps the creation of the catalog (~3 s).
    out = tmp_path / "reader"
    out.mkdir()
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(default_catalog_dir()), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        catalog = open_catalog(request.getfixturevalue("catalog_dir"))
        (out / "go").touch()
        # batch_size=1: every event is appended as it comes, the most contention for the reader.
        tiled_RE = RunEngine({}, call_returns_result=False)
        tiled_RE.subscribe(TiledWriter(catalog, batch_size=1))
        deadline = time.monotonic() + 120
        while not (out / "ready").exists() and reader.poll() is None:
            assert time.monotonic() < deadline, "reader did not start"
            time.sleep(0.02)

        runs = {
            run_count(tiled_RE, single, 20): (20, 1),
            run_count(tiled_RE, triple, 4): (4, 3),
            run_count(tiled_RE, still_open, 3): (3, 2),  # its writer has not closed the file
        }
        (out / "uids.json").write_text(json.dumps([[uid, "det_image"] for uid in runs]))
        stdout, stderr = reader.communicate(timeout=60)
    finally:
        reader.kill()
        still_open.close()
    assert reader.returncode == 0, stderr

    for uid, (num, k) in runs.items():
        frames = np.load(out / f"{uid}.npy")
        expected = expected_frames(num, k)
        assert frames.shape == expected.shape == (num, k, *FRAME_SHAPE)
        assert frames.dtype == np.uint16
        np.testing.assert_array_equal(frames, expected)


def test_run_reads_back_in_the_writing_process(
    catalog_dir: Path, tiled_RE: RunEngine, tmp_path: Path
) -> None:
    det = H5Detector(name="cam", write_dir=tmp_path, frames_per_point=3)
    run = open_catalog(catalog_dir)[run_count(tiled_RE, det, 5)]
    np.testing.assert_array_equal(run["primary"]["cam_image"].read(), expected_frames(5, 3))
    assert run.metadata["stop"]["exit_status"] == "success"
    assert run["primary"]["cam_image"].metadata["frame_per_point"] == 3


# ---------------------------------------------------------------------------------------------
# Opening


def test_default_catalog_is_in_user_data_dir_and_announced_once(
    user_dirs: Path, default_catalog: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, announced = default_catalog
    assert directory == user_dirs / "data" / "ophyd-scmos" / "catalog"
    assert (directory / "catalog.db").is_file()
    assert str(directory) in announced
    open_catalog()
    assert capsys.readouterr().err == ""


def test_opening_twice_shares_one_server(catalog_dir: Path) -> None:
    first, second = open_catalog(catalog_dir), open_catalog(str(catalog_dir))
    assert first.context is second.context
    assert type(first).__name__ == "CatalogOfBlueskyRuns"


def test_a_closed_catalog_reopens(catalog_dir: Path) -> None:
    closed = open_catalog(catalog_dir)
    closed.context.close()
    reopened = open_catalog(catalog_dir)
    assert reopened.context is not closed.context
    list(reopened)


def test_readable_restricts_what_is_served(
    catalog_dir: Path, tiled_RE: RunEngine, tmp_path: Path
) -> None:
    uid = run_count(tiled_RE, H5Detector(name="det", write_dir=tmp_path / "frames"), 2)
    strict = open_catalog(catalog_dir, readable=[tmp_path / "elsewhere"])
    assert strict.context is not open_catalog(catalog_dir).context  # a second server, same db
    assert strict[uid].metadata["stop"]["exit_status"] == "success"
    with pytest.raises(RuntimeError, match="Refusing to serve"):
        strict[uid]["primary"]["det_image"].read()


def test_a_file_is_not_a_catalog_directory(tmp_path: Path) -> None:
    (tmp_path / "not_a_dir").touch()
    with pytest.raises(NotADirectoryError):
        open_catalog(tmp_path / "not_a_dir")


# ---------------------------------------------------------------------------------------------
# Processes forked after opening (multiprocessing's default start method on Linux < 3.14)


def _child_reads(catalog_dir: str, in_process: bool) -> None:
    list(open_catalog(catalog_dir, in_process=in_process))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
@pytest.mark.parametrize("in_process", [False, True], ids=["local-server", "in-process"])
@pytest.mark.parametrize("target", [None, _child_reads], ids=["idle-child", "reading-child"])
def test_forked_children_exit(catalog_dir: Path, target: Any, in_process: bool) -> None:
    """The parent's connection is not the child's to use, and an in-process app's thread does
    not exist in a forked child: neither exiting nor opening the catalog there may wait for
    them."""
    list(open_catalog(catalog_dir, in_process=in_process))
    child = multiprocessing.get_context("fork").Process(
        target=target, args=(str(catalog_dir), in_process) if target else ()
    )
    child.start()
    child.join(timeout=30)
    if child.exitcode is None:
        child.kill()
        pytest.fail("forked child hung")
    assert child.exitcode == 0
