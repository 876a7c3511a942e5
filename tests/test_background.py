"""A catalog opened on a thread (the IPython profile's): it stands in for the catalog, waits for
it at first use, writes runs, and gives its place to the catalog itself once open. Two things
loaded on threads (the catalog, the BestEffortCallback) never import at the same time."""

from __future__ import annotations

import importlib
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import count
from ophyd.sim import det

from ophyd_scmos.catalog import open_catalog
from ophyd_scmos.session import Background, BackgroundCatalog


def test_it_stands_in_for_the_catalog_until_open_then_gives_it_its_place(
    tmp_path: Path,
) -> None:
    gate = threading.Event()

    def opener() -> Any:
        gate.wait(timeout=60)
        return open_catalog(tmp_path / "catalog")

    stand_in = BackgroundCatalog(opener)
    session: dict[str, Any] = {"catalog": stand_in}
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(stand_in.tiled_writer)
    stand_in.start(session, "catalog")
    assert session["catalog"] is stand_in  # still opening: the gate is shut

    threading.Timer(0.2, gate.set).start()
    (uid,) = RE(count([det], num=3))  # the start document waits for the catalog
    catalog = session["catalog"]
    assert type(catalog).__name__ == "CatalogOfBlueskyRuns"
    assert len(stand_in) == len(catalog) == 1 and uid in stand_in
    assert repr(stand_in) == repr(catalog) and stand_in.context is catalog.context
    assert list(stand_in) == [uid]
    reading = det.read()["det"]["value"]  # ophyd.sim's motor, which sets it, stood still
    np.testing.assert_array_equal(stand_in[uid]["primary"]["det"].read(), [reading] * 3)


def test_a_catalog_that_did_not_open_is_opened_again_at_first_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    attempts: list[int] = []

    def opener() -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("no catalog server at http://catalog.example.org")
        return open_catalog(tmp_path / "catalog")

    stand_in = BackgroundCatalog(opener)
    session: dict[str, Any] = {"catalog": stand_in}
    stand_in.start(session, "catalog")
    assert len(stand_in) == 0  # opened here, on the second attempt
    assert len(attempts) == 2
    assert type(session["catalog"]).__name__ == "CatalogOfBlueskyRuns"  # in its place
    err = capsys.readouterr().err
    assert "no run starts until the catalog opens: no catalog server at http://catalog" in err


def test_a_catalog_used_before_it_was_started_opens_at_that_use(tmp_path: Path) -> None:
    """The profile starts it at the first prompt: code that runs before any prompt (a
    session's startup, `ipython -c`) opens it itself instead of waiting for ever."""
    stand_in = BackgroundCatalog(lambda: open_catalog(tmp_path / "catalog"))
    assert len(stand_in) == 0
    stand_in.start({}, "catalog")  # the prompt's start, later, finds it open
    assert type(stand_in.wait()).__name__ == "CatalogOfBlueskyRuns"


def test_a_catalog_that_cannot_open_stops_a_plan_before_its_devices_stage(
    cam: Any, tmp_path: Path, recorder: Any, RE: RunEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """The profile's preprocessor: a run with nowhere to go is not started (no camera file,
    no scan id spent, no "Run aborted" traceback); a plan that only moves a motor does not
    wait for the catalog; once the catalog opens, the next run is recorded."""
    from bluesky.plan_stubs import mv
    from ophyd.sim import motor

    from ophyd_scmos.catalog import CatalogUnavailable

    attempts: list[int] = []

    def opener() -> Any:
        attempts.append(1)
        if len(attempts) <= 2:
            raise CatalogUnavailable("cannot reach the catalog at http://catalog.example.org")
        return open_catalog(tmp_path / "catalog")

    stand_in = BackgroundCatalog(opener)
    RE.subscribe(stand_in.tiled_writer)
    RE.preprocessors.append(stand_in.before_runs)
    RE(mv(motor, 1.5))  # no catalog needed, none tried
    assert motor.position == 1.5 and not attempts
    with pytest.raises(CatalogUnavailable, match="catalog.example.org"):
        RE(count([cam], num=2))
    assert len(attempts) == 1
    assert not recorder.docs and RE.md.get("scan_id") is None
    assert not (tmp_path / "data").exists() or not list((tmp_path / "data").iterdir())
    assert cam._staged.name == "no"
    assert "Run aborted" not in caplog.text

    with pytest.raises(CatalogUnavailable):  # tried again at each plan's start
        RE(count([cam], num=2))
    (uid,) = RE(count([cam], num=2))
    assert len(attempts) == 3
    images = stand_in[uid]["primary"]["cam_image"].read()
    assert images.shape == (2, 1, 64, 96)
    plan = iter(())
    assert stand_in.before_runs(plan) is plan  # open: plans go through untouched


# A package whose import waits until another thread has begun importing the other package,
# which imports a part of this one: two threads importing them at once would deadlock on
# Python's module locks, and Python breaks that by handing one a half-made module.
PACKAGE = """
import {gates}
{gates}.{name}_started.set()
{gates}.{other}_started.wait(timeout=1)
from {other_package} import {other_value}
{value} = {other_value} + 1
"""
PART_USER = """
import {gates}
{gates}.{name}_started.set()
{gates}.{other}_started.wait(timeout=1)
from {other_package} import part
{value} = part.VALUE
"""


def test_two_loads_on_threads_import_one_after_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two imports on two threads, each needing a module the other is making, fail one of them
    when they run at once (the BestEffortCallback's matplotlib and the catalog's pandas share
    such modules); the session's loads wait for each other, and both load."""
    gates, first, second = (f"{word}_{tmp_path.name}".replace("-", "_") for word in "gab")
    (tmp_path / f"{gates}.py").write_text(
        "import threading\nfirst_started = threading.Event()\nsecond_started = threading.Event()\n"
    )
    (tmp_path / first).mkdir()
    (tmp_path / first / "__init__.py").write_text(
        PACKAGE.format(
            gates=gates,
            name="first",
            other="second",
            other_package=second,
            other_value="SECOND",
            value="FIRST",
        )
    )
    (tmp_path / first / "part.py").write_text("VALUE = 1\n")
    (tmp_path / second).mkdir()
    (tmp_path / second / "__init__.py").write_text(
        PART_USER.format(
            gates=gates, name="second", other="first", other_package=first, value="SECOND"
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in (gates, first, f"{first}.part", second):  # gone again after the test
        monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.delitem(sys.modules, name)

    loads = [
        Background(lambda name=name: importlib.import_module(name), "failed")
        for name in (first, second)
    ]
    loads[0].start()
    started = importlib.import_module(gates)
    assert started.first_started.wait(timeout=10)  # the first holds its package
    loads[1].start()
    assert loads[1].wait().SECOND == 1
    assert loads[0].wait().FIRST == 2
