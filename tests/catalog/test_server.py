"""The facility catalog: a real PostgreSQL and a real Tiled server (``ophyd-scmos serve``) on
127.0.0.1, one of each for the whole session; runs written over HTTP, read from elsewhere.
The database asks for a password, as a facility's does; the server gets it from PGPASSWORD."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import count
from bluesky_tiled_plugins import TiledWriter
from tiled.client.utils import ClientError

from ophyd_scmos import CatalogWriter, SCMOSCamera, SimulatedSCMOS
from ophyd_scmos.catalog import open_catalog, server_config, sync, write_server_config
from ophyd_scmos.cli import main
from ophyd_scmos.drivers import ROI as SensorROI
from ophyd_scmos.drivers import CameraSettings
from tests.conftest import SENSOR
from tests.servers import CatalogServer, PostgreSQL, require_postgres

ROI = (32, 16, 96, 64)  # (x, y, width, height): 64x96 frames


@pytest.fixture(scope="session")
def facility(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """PostgreSQL and the catalog server on it; the server reads images from `frames` (where
    cameras write) and `shared` (where `sync --copy-data` puts files), nowhere else."""
    postgres = PostgreSQL(require_postgres())
    postgres.start()
    try:
        password = secrets.token_hex(12)
        database = database_with_password(postgres, "catalog", "tiled", password)
        root = tmp_path_factory.mktemp("facility")
        readable = [root / "frames", root / "shared"]
        server = CatalogServer(database, root / "server", readable)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PGPASSWORD", password)  # the server's environment: in no file or log
            server.start()
        assert server.process is not None
        try:
            yield {
                "url": server.url,
                "api_key": server.api_key,
                "root": root,
                "password": password,
                "log": server.log,
                "pid": server.process.pid,
            }
        finally:
            server.stop()
    finally:
        postgres.stop()


def database_with_password(postgres: PostgreSQL, name: str, user: str, password: str) -> str:
    """A database owned by `user`, who must give `password` over TCP (scram-sha-256, as a
    facility's server asks); its URI, without the password."""
    psql = [str(postgres.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(postgres.port)]
    psql += ["-U", postgres.user, "-d", "postgres", "-v", "ON_ERROR_STOP=1"]
    for sql in (
        f"CREATE ROLE {user} LOGIN PASSWORD '{password}'",
        f"CREATE DATABASE {name} OWNER {user}",
    ):
        subprocess.run([*psql, "-c", sql], check=True, capture_output=True)
    hba = postgres.dir / "data" / "pg_hba.conf"
    hba.write_text(f"host all {user} 127.0.0.1/32 scram-sha-256\n{hba.read_text()}")
    assert postgres.process is not None
    os.kill(postgres.process.pid, signal.SIGHUP)  # PostgreSQL reads pg_hba.conf again
    uri = f"postgresql://{user}@127.0.0.1:{postgres.port}/{name}"
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    deadline = time.monotonic() + 10
    while (
        subprocess.run([psql[0], uri, "-c", "SELECT 1"], env=env, capture_output=True).returncode
        == 0
    ):
        assert time.monotonic() < deadline, "PostgreSQL still lets the user in without a password"
        time.sleep(0.1)
    return uri


@pytest.fixture(scope="session")
def server_catalog(facility: dict[str, Any]) -> Iterator[Any]:
    catalog = open_catalog(facility["url"], api_key=facility["api_key"])
    yield catalog
    catalog.context.close()


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lab's embedded catalog, the source of `sync` (shared: creating one takes ~3 s)."""
    return tmp_path_factory.mktemp("lab") / "catalog"


def camera(write_dir: Path, seed: int) -> SCMOSCamera:
    """A simulated camera at `ROI`, writing into `write_dir`."""
    cam = SCMOSCamera(
        name="cam", driver=SimulatedSCMOS(shape=SENSOR, seed=seed), write_dir=write_dir, ring_mb=4
    )
    cam.roi.set(ROI)
    cam.exposure_time.set(0.001)
    return cam


def take_run(catalog: Any, write_dir: Path, num: int, seed: int) -> tuple[str, SimulatedSCMOS]:
    """RE(count([cam], num)) into `catalog`, the camera writing into `write_dir`."""
    cam = camera(write_dir, seed)
    driver = cam.driver
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(TiledWriter(catalog))
    (uid,) = RE(count([cam], num=num))
    cam.destroy()
    return uid, driver


def expected(driver: SimulatedSCMOS, num: int) -> np.ndarray:
    return np.stack([driver.expected_frame(k) for k in range(num)])[:, None]


REPLAY = """
import sys
import numpy as np
from ophyd_scmos import open_catalog

uid, out = sys.argv[1:]
catalog = open_catalog()  # which catalog, and its key, come from the environment
np.save(out, catalog[uid]["primary"]["cam_image"].read())
print(type(catalog).__name__, catalog[-1].metadata["start"]["uid"])
"""


def test_count_over_http_replays_every_pixel_in_another_process(
    facility: dict[str, Any], server_catalog: Any, tmp_path: Path
) -> None:
    uid, driver = take_run(server_catalog, facility["root"] / "frames", 200, seed=11)
    out = tmp_path / "frames.npy"
    env = {
        **os.environ,
        "OPHYD_SCMOS_CATALOG": facility["url"],
        "TILED_API_KEY": facility["api_key"],
    }
    reader = subprocess.run(
        [sys.executable, "-c", REPLAY, uid, str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert reader.returncode == 0, reader.stderr
    # The same client class as the embedded catalog's: catalog[-1] is the latest run.
    assert reader.stdout.split() == ["CatalogOfBlueskyRuns", uid]
    frames = np.load(out)
    assert frames.shape == (200, 1, 64, 96) and frames.dtype == np.uint16
    np.testing.assert_array_equal(frames, expected(driver, 200))


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The path of every HTTP request this process sends from now on."""
    import httpx

    paths: list[str] = []
    real = httpx.HTTPTransport.handle_request

    def handle_request(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return real(self, request)

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", handle_request)
    return paths


def test_a_catalog_writer_tells_the_server_when_a_runs_streams_end(
    facility: dict[str, Any], server_catalog: Any, sent: list[str]
) -> None:
    """A Tiled server may keep a run's streams for followers (Tiled's streaming cache), who
    wait to be told each has ended: `CatalogWriter` tells it, node by node, as TiledWriter
    does, the camera's image among them (the embedded catalog keeps none and is not told)."""
    from ophyd.sim import det

    cam = camera(facility["root"] / "frames", seed=3)
    driver = cam.driver
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(CatalogWriter(server_catalog))
    try:
        (uid,) = RE(count([cam, det], num=2))
    finally:
        cam.destroy()
    closed = [path for path in sent if "/stream/close/" in path]
    assert closed and all(uid in path for path in closed)
    assert any(path.endswith("/primary/cam_image") for path in closed)
    assert closed[-1].endswith(uid)  # the run's own node last, after its streams
    assert server_catalog[uid].metadata["stop"]["exit_status"] == "success"
    np.testing.assert_array_equal(
        server_catalog[uid]["primary"]["cam_image"].read(), expected(driver, 2)
    )


def test_recovery_tells_the_server_that_a_closed_runs_streams_ended(
    server_catalog: Any, sent: list[str]
) -> None:
    """A run left without a stop (its process killed), closed from its journal: the server
    gets the stop and is told that the run's streams ended, the run's node last."""
    from event_model import compose_run

    from ophyd_scmos.catalog.recover import close_journaled_run

    writer = TiledWriter(server_catalog)
    run = compose_run()
    writer("start", run.start_doc)
    stream = run.compose_descriptor(
        name="primary", data_keys={"x": {"source": "sim", "dtype": "number", "shape": []}}
    )
    writer("descriptor", stream.descriptor_doc)  # and no stop: the process was killed
    uid = run.start_doc["uid"]
    assert server_catalog[uid].metadata.get("stop") is None

    close_journaled_run(server_catalog[uid], end_time=time.time())
    closed = [path for path in sent if "/stream/close/" in path]
    assert any(path.endswith("/primary") for path in closed) and closed[-1].endswith(uid)
    assert server_catalog[uid].metadata["stop"]["exit_status"] == "fail"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_run_only_a_journal_holds_is_made_in_the_server_it_was_written_for(
    facility: dict[str, Any], server_catalog: Any, tmp_path: Path, capsys: Any, host: str
) -> None:
    """A journal names the server by its URL: `recover --catalog URL` (a new client) makes
    there the run that never reached it, with its events, and closes it with its own stop;
    also where the journal was written through another name of this machine."""
    from ophyd.sim import det

    from ophyd_scmos.catalog.embedded import catalog_location
    from ophyd_scmos.catalog.journal import Journal

    location = catalog_location(server_catalog)
    assert "//127.0.0.1:" in location
    journal = Journal(tmp_path, catalog=location.replace("127.0.0.1", host))
    (uid,) = RunEngine({})(count([det], num=2), journal.write)
    journal.close()  # the process ended
    args = ["recover", "--journal", str(tmp_path), "--api-key", facility["api_key"]]
    assert main([*args, "--catalog", facility["url"]]) == 0
    out = capsys.readouterr().out
    assert f"run {uid} had not reached the catalog; made from its journal" in out
    assert f"2 events the catalog lacked written into run {uid}" in out
    assert server_catalog[uid]["primary"]["det"].read().shape == (2,)
    assert server_catalog[uid].metadata["stop"]["exit_status"] == "success"


def test_databroker_v1_reads_the_server_catalog(
    facility: dict[str, Any], server_catalog: Any
) -> None:
    uid, driver = take_run(server_catalog, facility["root"] / "frames", 5, seed=12)
    table = server_catalog.v1[uid].table(fill=True)
    np.testing.assert_array_equal(np.stack(list(table["cam_image"])), expected(driver, 5))


def test_sync_copies_runs_to_the_server_pointing_at_the_same_files(
    facility: dict[str, Any], server_catalog: Any, lab_dir: Path
) -> None:
    lab = open_catalog(lab_dir)
    uid, driver = take_run(lab, facility["root"] / "frames", 30, seed=13)
    file = lab[uid]["primary"]["cam_image"].data_sources()[0].assets[0].data_uri

    (result,) = sync(lab, server_catalog, [uid])
    assert (result.uid, result.status, result.error) == (uid, "copied", None)
    assert result.files == [file.removeprefix("file://localhost")]
    run = server_catalog[uid]
    np.testing.assert_array_equal(run["primary"]["cam_image"].read(), expected(driver, 30))
    assert run.metadata["start"] == lab[uid].metadata["start"]
    assert run.metadata["stop"]["num_events"] == {"primary": 30}
    assert run["primary"].read()["cam_frames_dropped"].values.tolist() == [0] * 30

    (again,) = sync(lab, server_catalog, [uid])
    assert (again.status, again.error) == ("present", None)


def test_sync_says_when_the_server_cannot_read_a_file(
    server_catalog: Any, lab_dir: Path, tmp_path: Path
) -> None:
    lab = open_catalog(lab_dir)
    uid, _ = take_run(lab, tmp_path / "lab-disk", 3, seed=14)  # not readable by the server
    (result,) = sync(lab, server_catalog, [uid])
    assert result.status == "copied"
    assert result.error is not None
    assert "primary/cam_image" in result.error and str(tmp_path / "lab-disk") in result.error


def test_sync_command_copies_data_where_the_server_reads(
    facility: dict[str, Any], server_catalog: Any, lab_dir: Path, tmp_path: Path
) -> None:
    uid, driver = take_run(open_catalog(lab_dir), tmp_path / "lab-disk", 10, seed=15)
    shared = facility["root"] / "shared"
    command = [
        *(str(Path(sys.executable).parent / "ophyd-scmos"), "sync", "--json"),
        *("--from", str(lab_dir), "--to", facility["url"], "--api-key", facility["api_key"]),
        *("--copy-data", str(shared), uid),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)
    (copy,) = result["files"]
    assert (result["uid"], result["status"], result["error"]) == (uid, "copied", None)
    assert Path(copy).parent == shared and Path(copy).is_file()
    frames = server_catalog[uid]["primary"]["cam_image"].read()
    np.testing.assert_array_equal(frames, expected(driver, 10))


def test_server_config_takes_postgresql_only_and_never_echoes_the_uri() -> None:
    with pytest.raises(ValueError, match="postgresql://") as refused:
        server_config("mysql://user:hunter2@db/catalog", "/srv/tiled", ["/data"])
    assert "hunter2" not in str(refused.value)
    with pytest.raises(ValueError, match="readable"):
        server_config("postgresql://user:hunter2@db/catalog", "/srv/tiled", [])


def test_server_config_serves_runs_like_the_embedded_catalog(tmp_path: Path) -> None:
    config = server_config("postgres://u@db:5433/runs", tmp_path / "data", [tmp_path / "frames"])
    (tree,) = config["trees"]
    assert tree["args"]["uri"] == "postgresql+asyncpg://u@db:5433/runs"
    assert tree["args"]["writable_storage"] == [
        str(tmp_path / "data"),
        # Event tables in the same database, through ADBC (libpq); the user as a parameter,
        # since Tiled turns "u@db" without a password into "u:None@db".
        "postgresql://db:5433/runs?user=u",
    ]
    assert tree["args"]["readable_storage"] == [str(tmp_path / "frames")]
    assert tree["args"]["specs"] == [{"name": "CatalogOfBlueskyRuns", "version": "3.0"}]
    # Files are read through the adapter that refuses a damaged one at once.
    hdf5 = tree["args"]["adapters_by_mimetype"]["application/x-hdf5"]
    assert hdf5 == "ophyd_scmos.catalog.hdf5:CheckedHDF5Adapter"
    assert "application/json-seq" in config["media_types"]["BlueskyRun"]
    path = write_server_config(tmp_path / "tiled.yml", config)
    assert path.stat().st_mode & 0o777 == 0o600  # the URI may hold a password


PROFILE_COUNT = """
(uid,) = RE(count([cam], num=20))
print("RESULT", uid, type(catalog).__name__)
"""


def test_the_ipython_profile_records_into_the_facility_server(
    facility: dict[str, Any], server_catalog: Any, tmp_path: Path
) -> None:
    """A lab whose configuration names the server: the profile's RunEngine writes there, the
    key coming from the environment variable the file names, never from the file."""
    from tests.lab_env import BIN, result_line, run

    config = tmp_path / "lab.toml"
    config.write_text(
        f'[data]\ndir = "{facility["root"] / "frames" / "profile"}"\n'
        f'[catalog]\nurl = "{facility["url"]}"\napi_key_env = "FACILITY_KEY"\n'
        f"[cameras.cam]\nroi = [{', '.join(map(str, ROI))}]\nexposure_time = 0.001\n"
    )
    session = run(
        [str(BIN / "ophyd-scmos"), "ipython", "--config", str(config), "--", "-c", PROFILE_COUNT],
        tmp_path,
        FACILITY_KEY=facility["api_key"],
    )
    assert session.returncode == 0, session.stderr[-3000:]
    uid, client = result_line(session.stdout).split()
    assert client == "CatalogOfBlueskyRuns"
    frames = server_catalog[uid]["primary"]["cam_image"].read()
    driver = SimulatedSCMOS()  # what the configuration's default `simulated` camera opens
    driver.open()
    driver.configure(CameraSettings(exposure_time=0.001, roi=SensorROI(*ROI)))
    np.testing.assert_array_equal(frames, expected(driver, 20))


def test_the_database_password_is_in_no_log_and_no_command_line(
    facility: dict[str, Any], server_catalog: Any
) -> None:
    """Tiled prints its database URI when it starts; the password is not in it, nor on the
    server's command line (which every user of the host sees), nor is the API key echoed."""
    list(server_catalog)  # the server works: it reached the database with the password
    log = Path(facility["log"]).read_text(errors="replace")
    assert "shared DB pool: postgresql+asyncpg://tiled@127.0.0.1" in log  # the URI, printed
    assert facility["password"] not in log
    assert facility["api_key"] not in log
    command = Path(f"/proc/{facility['pid']}/cmdline").read_bytes().split(b"\0")
    assert b"ophyd_scmos.catalog" in command  # the server process itself
    assert not any(facility["password"].encode() in part for part in command)


def test_serve_refuses_a_password_on_its_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serve = ["serve", "--read", str(tmp_path / "frames"), "--data", str(tmp_path / "srv")]
    assert main([*serve, "--postgres", "postgresql://tiled:hunter2@db:5432/catalog"]) == 2
    err = capsys.readouterr().err
    assert "PGPASSWORD" in err and "hunter2" not in err
    assert not (tmp_path / "srv").exists()  # nothing written, nothing started
    with pytest.raises(ValueError, match="PGPASSWORD") as refused:
        server_config("postgresql://u@db/c", tmp_path, [tmp_path], tables="postgresql://u:s3cr@t/c")
    assert "s3cr" not in str(refused.value)


def _log_size(facility: dict[str, Any]) -> int:
    return Path(facility["log"]).stat().st_size


def _log_since(facility: dict[str, Any], size: int) -> str:
    with open(facility["log"], "rb") as log:
        log.seek(size)
        return log.read().decode(errors="replace")


def test_a_file_outside_the_readable_directories_is_refused_at_once_with_the_reason(
    facility: dict[str, Any], server_catalog: Any, tmp_path: Path
) -> None:
    uid, _ = take_run(server_catalog, tmp_path / "elsewhere", 3, seed=16)
    images = server_catalog[uid]["primary"]["cam_image"]
    logged = _log_size(facility)
    started = time.monotonic()
    with pytest.raises(ClientError) as refused:
        images.read()
    assert time.monotonic() - started < 15  # not ~25 s of retries
    message = str(refused.value)
    assert message.startswith("403: Refusing to serve")
    assert str(tmp_path / "elsewhere") in message and "--read" in message
    assert "Traceback" not in _log_since(facility, logged)


def test_a_truncated_or_moved_file_is_refused_at_once_naming_it(
    facility: dict[str, Any],
    server_catalog: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    uid, _ = take_run(server_catalog, facility["root"] / "frames", 5, seed=17)
    images = server_catalog[uid]["primary"]["cam_image"]
    (path,) = {asset.data_uri for source in images.data_sources() for asset in source.assets}
    path = Path(path.removeprefix("file://localhost"))
    os.truncate(path, 8192)
    logged = _log_size(facility)
    started = time.monotonic()
    with pytest.raises(ClientError, match="409: .* is truncated: 8192 bytes") as refused:
        images.read()
    assert time.monotonic() - started < 15 and str(path) in str(refused.value)
    assert "Traceback" not in _log_since(facility, logged)
    show = ["show", uid, "--catalog", facility["url"], "--api-key", facility["api_key"]]
    assert main([*show, "--no-png"]) == 1
    assert "truncated" in capsys.readouterr().err

    path.rename(tmp_path / path.name)
    with pytest.raises(ClientError, match="409: .*no such file") as refused:
        images.read()
    assert str(path) in str(refused.value)
