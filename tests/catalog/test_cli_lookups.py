"""`ophyd-scmos runs` and `show` name the run they mean or say in one line why they cannot:
ambiguous uid prefixes, scan ids that are also the start of another run's uid, indices past
the end, mistyped catalog paths. Runs of crafted uids and scan ids, written by TiledWriter."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from bluesky_tiled_plugins import TiledWriter
from event_model import compose_run

from ophyd_scmos.catalog import open_catalog
from ophyd_scmos.cli import main

#: uid -> scan id: 12345aaa... starts like the scan id 12345 of another run
RUNS = {
    "12345aaa-0000-4000-8000-000000000001": 7,
    "abcde111-0000-4000-8000-000000000002": 12345,
    "abcde222-0000-4000-8000-000000000003": 8,
}


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("lookups") / "catalog"
    catalog = open_catalog(directory)
    writer = TiledWriter(catalog)
    for uid, scan_id in RUNS.items():
        run = compose_run(uid=uid, metadata={"scan_id": scan_id})
        writer("start", run.start_doc)
        writer("stop", run.compose_stop())
    yield directory
    catalog.context.close()


def show(catalog_dir: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["show", text, "--catalog", str(catalog_dir), "--no-png"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return code, err.strip()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("abcde111", "run abcde111-0000-4000-8000-000000000002 has no images"),
        ("-1", "run abcde222-0000-4000-8000-000000000003 has no images"),
        ("-3", "run 12345aaa-0000-4000-8000-000000000001 has no images"),
        ("8", "run abcde222-0000-4000-8000-000000000003 has no images"),
        ("123456", "no run has the scan id or uid 123456"),
        ("-4", "no run -4: the catalog holds 3 runs"),
        ("abcde", "several runs' uids start with abcde: give more of it"),
        ("12345", "12345 is scan 12345 (run abcde111-0000-4000-8000-000000000002) and the "),
        ("0", "scan ids start at 1"),
        ("abcd", "abcd is too short for a uid"),
        ("%%%%%", "'%%%%%' is not a uid"),
        ("fffff", "no run has the uid fffff"),
    ],
)
def test_show_names_the_run_or_says_why_not(catalog_dir, capsys, text, says):
    code, err = show(catalog_dir, text, capsys)
    assert code == 1 and says in err


def test_runs_refuses_a_count_below_one_and_lists_what_it_is_asked(catalog_dir, capsys):
    for number in ("0", "-2", "two"):
        with pytest.raises(SystemExit) as exit_:
            main(["runs", "-n", number, "--catalog", str(catalog_dir)])
        assert exit_.value.code == 2
        assert f"must be a whole number, 1 or more, not {number}" in capsys.readouterr().err
    assert main(["runs", "-n", "2", "--catalog", str(catalog_dir)]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert [row.split()[0] for row in rows] == ["abcde222", "abcde111"]
    assert main(["runs", "-n", "1000", "--catalog", str(catalog_dir)]) == 0  # > a page
    header, *rows = capsys.readouterr().out.splitlines()
    assert [row.split()[0] for row in rows][:2] == ["abcde222", "abcde111"]


def test_show_refuses_a_negative_number_of_frames_to_average(catalog_dir, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["show", "-1", "--mean-frames", "-1", "--catalog", str(catalog_dir)])
    assert exit_.value.code == 2
    assert "must be a whole number, 0 or more, not -1" in capsys.readouterr().err


def test_a_damaged_catalog_is_refused_in_one_line(tmp_path, capsys):
    """A catalog database that is not one (a disk error, a bad copy) is refused in one line
    before a server starts on it (which added its tables beside it); one whose start fails
    (a database cut short) is refused in one line with the server's words."""
    damaged = tmp_path / "catalog"
    damaged.mkdir()
    (damaged / "catalog.db").write_text("not sqlite")
    assert main(["runs", "--catalog", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert "cannot open the catalog" in err and "is not an SQLite database" in err, err
    assert len(err.splitlines()) == 1, err
    assert [p.name for p in damaged.iterdir()] == ["catalog.db"]

    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "catalog.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 84)
    assert main(["runs", "--catalog", str(cut)]) == 2
    err = capsys.readouterr().err
    assert "cannot open the catalog" in err and "did not start" in err, err
    assert len(err.splitlines()) == 1, err


@pytest.mark.parametrize("command", ["runs", "show"])
def test_a_catalog_path_that_holds_no_catalog_is_refused_and_left_alone(command, tmp_path, capsys):
    """A mistyped directory is not made into a new, empty catalog; a file is not a catalog."""
    typo = tmp_path / "catlog"
    data = tmp_path / "data"
    data.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("")
    for location, says in ((typo, "no catalog in"), (data, "no catalog in"), (afile, "is a file")):
        argv = [command, *(["-1"] if command == "show" else []), "--catalog", str(location)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.splitlines()) == 1, err
    assert not typo.exists() and list(data.iterdir()) == []


def test_sync_to_what_is_no_url_nor_catalog_is_refused_and_makes_nothing(
    tmp_path, monkeypatch, capsys
):
    """`--to catalog.example.org:8000` (no http://) made a new local catalog of that name and
    reported every run copied into it."""
    monkeypatch.chdir(tmp_path)
    for target in ("notaurl", "catalog.example.org:8000"):
        assert main(["sync", "--to", target]) == 2
        err = capsys.readouterr().err
        assert "no catalog in" in err and target in err and len(err.splitlines()) == 1, err
        assert ("(http://catalog.example.org:8000?)" in err) == (":" in target), err
    assert list(tmp_path.iterdir()) == []


def test_a_scan_id_several_runs_share_shows_the_latest_saying_so(tmp_path, capsys):
    """Scripts with `RunEngine({})` number every run scan 1: `show 1` shows the latest and
    says how many runs the number names."""
    catalog = open_catalog(tmp_path / "catalog")
    writer = TiledWriter(catalog)
    uids = [f"77777{k}aa-0000-4000-8000-00000000000{k}" for k in range(3)]
    for uid in uids:
        run = compose_run(uid=uid, metadata={"scan_id": 1})
        writer("start", run.start_doc)
        writer("stop", run.compose_stop())
    assert main(["show", "1", "--catalog", str(tmp_path / "catalog"), "--no-png"]) == 1
    first, second = capsys.readouterr().err.splitlines()
    assert "scan 1 names 3 runs; this is the latest" in first
    assert uids[-1] in second  # it has no images


def test_the_catalog_package_and_the_command_load_no_tiled_h5py_or_numpy():
    """Each function imports what it needs when called: `ophyd-scmos --help` starts fast."""
    check = (
        "import sys, ophyd_scmos.catalog, ophyd_scmos.cli\n"
        "print(sorted(m for m in ('tiled', 'h5py', 'numpy') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert loaded.stdout.strip() == "[]", loaded.stderr
