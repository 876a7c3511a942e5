"""A catalog opened on a thread (the IPython profile's): it stands in for the catalog, waits for
it at first use, writes runs, and gives its place to the catalog itself once open."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import count
from ophyd.sim import det

from ophyd_scmos.catalog import open_catalog
from ophyd_scmos.session import BackgroundCatalog


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
