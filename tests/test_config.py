"""The lab configuration: where it is found, the defaults, and what a wrong value says."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from ophyd_scmos.cli import main
from ophyd_scmos.config import (
    CONFIG_ENV,
    ConfigError,
    default_config_path,
    load_config,
    parse_config,
)
from tests.lab_env import EXAMPLE_CONFIG


@pytest.fixture(autouse=True)
def user_dirs(tmp_path, monkeypatch):
    """A user with no configuration file and no ophyd-scmos variables."""
    for name in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    for name in (CONFIG_ENV, "OPHYD_SCMOS_CATALOG"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lab.toml"
    path.write_text(text)
    return path


def test_no_file_means_one_simulated_camera_named_cam_and_the_default_catalog():
    lab = load_config()
    assert lab.path is None and lab.source.startswith(
        "defaults (no configuration file; it would be "
    )
    (cam,) = lab.cameras
    assert (cam.name, cam.driver, dict(cam.options), dict(cam.settings)) == (
        "cam",
        "simulated",
        {},
        {},
    )
    assert (cam.compression, cam.ring_mb, cam.overflow) == (None, 256, "block")
    assert lab.catalog.location is None and lab.catalog.describe().startswith("embedded, ")
    assert lab.plots is None  # "auto"


def test_the_example_file_is_valid_and_says_what_the_docs_say():
    lab = load_config(EXAMPLE_CONFIG)
    (cam,) = lab.cameras
    assert cam.driver == "simulated" and dict(cam.options) == {"shape": [2048, 2048], "seed": 0}
    assert cam.settings["roi"] == (768, 768, 512, 512)
    assert cam.settings["exposure_time"] == 0.005
    assert (cam.compression, cam.overflow) == ("bitshuffle-lz4", "block")
    assert lab.metadata["instrument"] == "sCMOS test bench"
    assert lab.catalog.api_key_env == "TILED_API_KEY"


def test_the_default_path_is_read_and_the_environment_variable_wins(tmp_path, monkeypatch):
    default_config_path().parent.mkdir(parents=True)
    default_config_path().write_text("[cameras.left]\n[cameras.right]\n")
    assert [c.name for c in load_config().cameras] == ["left", "right"]
    named = write(tmp_path, "[cameras.top]\n")
    monkeypatch.setenv(CONFIG_ENV, str(named))
    lab = load_config()
    assert lab.path == named and [c.name for c in lab.cameras] == ["top"]


def test_a_missing_file_named_by_the_environment_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "nowhere.toml"))
    with pytest.raises(ConfigError, match=r"nowhere.toml: file not found \(named by \$OPHYD"):
        load_config()


def test_paths_are_relative_to_the_file_and_expand_home_and_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("SCMOS_DISK", "/mnt/fast")
    path = write(
        tmp_path,
        '[data]\ndir = "frames"\n[catalog]\npath = "~/catalog"\n'
        '[cameras.cam]\nwrite_dir = "$SCMOS_DISK/cam"\n[cameras.other]\n',
    )
    lab = load_config(path)
    assert lab.catalog.path == Path.home() / "catalog"
    assert lab.cameras[0].write_dir == Path("/mnt/fast/cam")
    assert lab.cameras[1].write_dir == tmp_path / "frames"  # [data] dir, from the file's folder


def test_pipeline_defaults_apply_to_every_camera_unless_it_overrides_them(tmp_path):
    lab = load_config(
        write(
            tmp_path,
            '[pipeline]\ncompression = "blosc2-zstd"\noverflow = "drop"\n'
            '[cameras.a]\n[cameras.b]\ncompression = "none"\nring_mb = 32\n'
            "write_limit_mb_s = 400\n",
        )
    )
    a, b = lab.cameras
    assert (a.compression, a.overflow, a.ring_mb) == ("blosc2-zstd", "drop", 256)
    assert (b.compression, b.overflow, b.ring_mb) == (None, "drop", 32)
    assert (a.write_limit_mb_s, b.write_limit_mb_s) == (None, 400)
    cam = lab.cameras[1].build()
    try:
        assert cam.write_limit_mb_s == 400
    finally:
        cam.destroy()


def test_a_camera_sizing_its_ring_in_frames_replaces_the_default_size(tmp_path):
    lab = load_config(
        write(tmp_path, "[pipeline]\nring_mb = 64\n[cameras.a]\n[cameras.b]\nring_frames = 40\n")
    )
    a, b = lab.cameras
    assert (a.ring_mb, a.ring_frames, b.ring_mb, b.ring_frames) == (64, None, None, 40)
    cam = lab.cameras[1].build()
    try:
        assert (cam.ring_mb, cam.ring_frames) == (None, 40)
    finally:
        cam.destroy()


@pytest.mark.parametrize(
    ("toml", "key", "says"),
    [
        ('[cameras.cam]\ntrigger_mode = "hardware"', "cameras.cam.trigger_mode",
         "'hardware' is not allowed; expected one of: software, internal, external"),
        ('[pipeline]\ncompression = "gzip"', "pipeline.compression",
         "expected one of: none, bitshuffle-lz4, blosc2-lz4, blosc2-zstd"),
        ('[cameras.cam]\noverflow = "wait"', "cameras.cam.overflow",
         "expected one of: block, drop"),
        ("[pipeline]\nring_mb = 0", "pipeline.ring_mb", "megabytes of shared memory, > 0"),
        ("[cameras.cam]\nring_frames = 1", "cameras.cam.ring_frames", "an integer >= 2"),
        ("[pipeline]\nring_mb = 8\nring_frames = 8", "pipeline.ring_frames", "not both"),
        ('[pipeline]\nwrite_limit_mb_s = "fast"', "pipeline.write_limit_mb_s",
         "MB/s the writer may use, > 0"),
        ("[cameras.cam]\nexposure_time = -1", "cameras.cam.exposure_time", "seconds, > 0"),
        ('[cameras.cam]\nexposure_time = "5 ms"', "cameras.cam.exposure_time", "seconds, > 0"),
        ("[cameras.cam]\nroi = [0, 0, 512]", "cameras.cam.roi",
         "[x, y, width, height] in sensor pixels"),
        ("[cameras.cam]\nrois = {spot = [0, 0, 1]}", "cameras.cam.rois.spot",
         "[x, y, width, height] in frame pixels (after roi and binning)"),
        ("[cameras.cam]\nrois = {frame = [0, 0, 1, 1]}", "cameras.cam.rois.frame",
         "a region name: letters, digits and _, starting with a letter, not frame or stats"),
        ('[cameras.cam]\nstats_read = ["totl"]', "cameras.cam.stats_read",
         "an array of statistics from: total, mean, min, max, sigma, centroid_x"),
        ('[cameras.cam]\nstats_hinted = "total"', "cameras.cam.stats_hinted",
         "an array of statistics from: total,"),
        ("[metadata]\nwhen = 2024-01-01", "metadata.when",
         "2024-01-01 is not allowed; expected a string, number, boolean, or an array or table "
         "of them: quote a date or time to keep it as text"),
        ("[cameras.motor_x]", "cameras.motor_x", "not one the profile uses"),
        ("[cameras.cam]\nbinning = true", "cameras.cam.binning", "an integer >= 1"),
        ('[cameras.cam]\ndriver = "andor"', "cameras.cam.driver",
         "'simulated', 'micromanager:Library:Device'"),
        ('[cameras.cam]\ndriver = "micromanager"', "cameras.cam.driver", "a camera spec"),
        ("[cameras.cam]\nexposure = 0.01", "cameras.cam.exposure",
         "unknown key; allowed here: driver, options,"),
        ("[cameras.cam]\nexposure = 0.01", "cameras.cam.exposure", "did you mean exposure_time?"),
        ('[catalog]\napi_key = "abc"', "catalog.api_key",
         "secrets are never read from this file"),
        ('[catalog]\npath = "/c"\nurl = "http://h:8000"', "catalog", "not both"),
        ('[catalog]\nurl = "tiled.example.org"', "catalog.url", "an http:// or https:// URL"),
        ("[cameras.RE]", "cameras.RE", "not one the profile uses"),
        ("[cameras.print]", "cameras.print", "nor Python's or IPython's own"),
        ("[cameras.get_ipython]", "cameras.get_ipython", "nor Python's or IPython's own"),
        ("[cameras._roi]", "cameras._roi", "and starts with a letter"),
        ('[cameras."my cam"]', "cameras.my cam", "a Python name"),
        ("[cameras]", "cameras", "at least one camera"),
        ('[data]\nfile_template = "{name}_{run}.h5"', "data.file_template",
         "unknown field(s) ['run']"),
        ('[session]\nplots = "yes"', "session.plots", 'true, false or "auto"'),
        ("[session]\nplots = 1", "session.plots", 'true, false or "auto"'),
        ("[metadata]\nday = 2026-01-01", "metadata.day", "a string, number, boolean"),
        ('[metadata]\nuid = "x"', "metadata.uid", "uid is set by the RunEngine for each run"),
        ("[metadata]\ntime = 1.0", "metadata.time", "time is set by the RunEngine for each run"),
        ("[metadata]\nscan_id = 7", "metadata.scan_id", "scan_id is set by the RunEngine"),
        ("[metadata]\nbig = inf", "metadata.big", "finite (documents carry no inf or nan)"),
        ("[metadata]\nsmall = nan", "metadata.small", "finite (documents carry no inf or nan)"),
        ("[metadata]\nn = 99999999999999999999", "metadata.n", "an integer within 64 bits"),
        ("[camera.cam]", "camera", "did you mean cameras?"),
    ],
)  # fmt: skip
def test_a_wrong_value_names_the_file_the_key_and_what_is_allowed(tmp_path, toml, key, says):
    path = write(tmp_path, toml + "\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert error.value.key == key
    assert str(error.value).startswith(f"lab configuration {path}: {key}: ")
    assert says in str(error.value)


def test_bad_toml_says_where(tmp_path):
    with pytest.raises(ConfigError, match=r"lab.toml: not valid TOML: .*line 2"):
        load_config(write(tmp_path, "[data]\ndir = /data\n"))


def test_a_setting_the_camera_refuses_is_reported_with_its_key_when_the_camera_opens():
    lab = parse_config({"cameras": {"cam": {"binning": 3}}})
    with pytest.raises(ConfigError, match=r"cameras.cam.binning: 3 refused by Simulated sCMOS"):
        lab.cameras[0].build()
    lab = parse_config({"cameras": {"cam": {"options": {"shap": [64, 64]}}}})
    with pytest.raises(ConfigError, match=r"cameras.cam.options: .*'shap'"):
        lab.cameras[0].build()


def test_a_built_camera_has_the_configured_settings_and_options(tmp_path):
    lab = parse_config(
        {
            "data": {"dir": str(tmp_path), "file_template": "{name}_{counter:03d}.h5"},
            "pipeline": {"compression": "bitshuffle-lz4", "ring_mb": 8},
            "cameras": {
                "side": {
                    "options": {"shape": [256, 320], "seed": 1},
                    "roi": [32, 16, 96, 64],
                    "binning": 2,
                    "exposure_time": 0.002,
                    "trigger_mode": "internal",
                    "frames_per_point": 3,
                }
            },
        }
    )
    cam = lab.camera("side").build()
    try:
        assert cam.name == "side" and cam.driver.sensor_shape == (256, 320)
        assert cam.driver.frame_shape == (32, 48)  # the ROI, binned 2x2
        assert cam.exposure_time.get() == 0.002 and cam.trigger_mode.get() == "internal"
        assert cam.frames_per_point.get() == 3
        assert (cam.write_dir, cam.file_template) == (tmp_path, "{name}_{counter:03d}.h5")
        assert (cam.compression, cam.ring_mb) == ("bitshuffle-lz4", 8)
    finally:
        cam.destroy()
    with pytest.raises(ConfigError, match="no camera named 'cam'; configured: side"):
        lab.camera("cam")


def test_the_catalog_key_comes_from_the_variable_the_file_names(tmp_path, monkeypatch):
    lab = load_config(
        write(tmp_path, '[catalog]\nurl = "http://h:8000"\napi_key_env = "LAB_KEY"\n')
    )
    assert lab.catalog.describe() == "http://h:8000"
    monkeypatch.setenv("OPHYD_SCMOS_CATALOG", str(tmp_path / "elsewhere"))
    assert load_config().catalog.describe().endswith("(from $OPHYD_SCMOS_CATALOG)")


def test_config_check_opens_each_camera_and_says_ok(tmp_path, capsys):
    path = write(tmp_path, "[cameras.cam]\noptions = { shape = [64, 64] }\nroi = [0, 0, 32, 32]\n")
    assert main(["config", "check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"config   {path}" in out
    assert "camera   cam: simulated ->" in out and "Simulated sCMOS, 32x32, opened and set" in out
    assert out.rstrip().endswith("ok")


def test_config_check_fails_with_exit_2_on_the_first_wrong_key(tmp_path, capsys):
    path = write(tmp_path, "[cameras.cam]\nroi = [0, 0, 4096, 4096]\n")
    assert main(["config", "check", "--config", str(path), "--no-cameras"]) == 0
    capsys.readouterr()
    assert main(["config", "check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "cameras.cam.roi: (0, 0, 4096, 4096) refused by Simulated sCMOS" in err
    path.write_text('[pipeline]\noverflow = "wait"\n')
    assert main(["config", "check", "--config", str(path), "--no-cameras"]) == 2
    assert "pipeline.overflow: 'wait' is not allowed" in capsys.readouterr().err


def test_config_check_opens_the_catalog_where_there_is_one(tmp_path, capsys):
    """A damaged catalog is found by the check, not by the session's first run; a catalog
    not made yet is not made by it."""
    catalog = tmp_path / "catalog"
    path = write(
        tmp_path,
        f'[catalog]\npath = "{catalog}"\n[cameras.cam]\noptions = {{ shape = [64, 64] }}\n',
    )
    assert main(["config", "check", "--config", str(path)]) == 0
    assert "catalog  opened" not in capsys.readouterr().out and not catalog.exists()
    catalog.mkdir()
    (catalog / "catalog.db").write_text("not sqlite")
    assert main(["config", "check", "--config", str(path), "--no-cameras"]) == 0
    capsys.readouterr()
    assert main(["config", "check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "catalog.db is not an SQLite database" in err, err


def test_config_check_of_a_file_that_is_not_text_is_one_line_naming_it(tmp_path, capsys):
    path = tmp_path / "lab.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    assert main(["config", "check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"lab configuration {path}: not valid TOML: not UTF-8 text" in err


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("{tmp}/a-file", "a-file is a file; expected a directory"),
        ("{tmp}/a-file/data", "a-file is a file; expected a directory"),
        ("/proc/ophyd-scmos-data", "cannot create a directory in /proc"),
        ("$OPHYD_SCMOS_UNSET/data", "the environment variable $OPHYD_SCMOS_UNSET is not set"),
    ],
)
def test_a_data_directory_that_cannot_be_one_is_refused_naming_the_key(
    tmp_path, capsys, monkeypatch, value, says
):
    monkeypatch.delenv("OPHYD_SCMOS_UNSET", raising=False)
    (tmp_path / "a-file").write_text("not a directory")
    path = write(tmp_path, f'[data]\ndir = "{value.format(tmp=tmp_path)}"\n')
    assert main(["config", "check", "--config", str(path), "--no-cameras"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"lab configuration {path}: data.dir: " in err and says in err


@pytest.mark.parametrize(
    ("options", "key", "says"),
    [
        ('{shape = "big"}', "cameras.cam.options.shape", "'big' is not allowed; expected tuple"),
        ("{seed = [1]}", "cameras.cam.options.seed", "[1] is not allowed; expected int"),
        (
            "{buffer_frames = 4}",
            "cameras.cam.options",
            "unknown option 'buffer_frames'; SimulatedSCMOS takes: shape, seed",
        ),
    ],
)
def test_a_wrong_driver_option_is_one_line_naming_the_option(tmp_path, capsys, options, key, says):
    path = write(tmp_path, f"[cameras.cam]\noptions = {options}\n")
    assert main(["config", "check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"lab configuration {path}: {key}: {says}" in err


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("data = 5", "data"),
        ("cameras = 5", "cameras"),
        ("[cameras.cam]\noptions = 5", "cameras.cam.options"),
        ("[cameras.cam]\ndriver = 5", "cameras.cam.driver"),
        ("[cameras.cam]\nroi = [true, 0, 8, 8]", "cameras.cam.roi"),
        ("[cameras.cam]\nframes_per_point = 1e300", "cameras.cam.frames_per_point"),
        ("[cameras.cam]\nacquire_period = nan", "cameras.cam.acquire_period"),
        ("[pipeline]\nring_mb = inf", "pipeline.ring_mb"),
        ('[session]\nmetadata_dir = ""', "session.metadata_dir"),
        ("[metadata]\nrun = {day = 2026-01-01}", "metadata.run.day"),
        ("[catalog]\npath = 7", "catalog.path"),
    ],
)
def test_every_wrong_file_is_one_line_naming_the_key_and_exit_2(tmp_path, capsys, toml, key):
    path = write(tmp_path, toml + "\n")
    assert main(["config", "check", "--config", str(path), "--no-cameras"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"ophyd-scmos config check: lab configuration {path}: {key}: ")


def test_an_api_key_in_the_file_is_sent_to_the_environment_not_to_api_key_env(tmp_path):
    path = write(tmp_path, '[catalog]\napi_key_env = "LAB_KEY"\napi_key = "s3cr3t-abc"\n')
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "did you mean" not in message
    assert "put the key in the environment variable $LAB_KEY" in message
    assert "s3cr3t" not in message  # the refusal never repeats the key


def test_a_camera_gets_its_named_regions_from_the_file(tmp_path):
    path = write(
        tmp_path,
        "[cameras.cam]\noptions = {shape = [64, 96]}\nrois = {spot = [10, 20, 8, 6]}\n",
    )
    cam = load_config(path).camera().build()
    try:
        assert dict(cam.rois) == {"spot": (10, 20, 8, 6)}
        assert "cam_spot_total" in cam.describe()
    finally:
        cam.destroy()


def test_a_camera_reads_and_hints_the_statistics_the_file_names(tmp_path):
    path = write(
        tmp_path,
        "[cameras.cam]\noptions = {shape = [64, 96]}\nrois = {spot = [10, 20, 8, 6]}\n"
        'stats_read = ["total", "centroid_x"]\nstats_hinted = ["centroid_x"]\n',
    )
    cam = load_config(path).camera().build()
    try:
        read = {key for key in cam.describe() if key.startswith(("cam_stats_", "cam_spot_"))}
        assert read == {f"cam_{r}_{s}" for r in ("stats", "spot") for s in ("total", "centroid_x")}
        assert cam.hints["fields"][-2:] == ["cam_stats_centroid_x", "cam_spot_centroid_x"]
    finally:
        cam.destroy()


def test_a_hint_of_a_statistic_not_read_is_refused_before_the_camera_opens(tmp_path):
    """Refused before the driver is asked for: a camera not plugged in says the same."""
    path = write(
        tmp_path,
        '[cameras.cam]\ndriver = "micromanager:NoSuchLibrary:NoSuchCamera"\n'
        'stats_read = ["max"]\nstats_hinted = ["total"]\n',
    )
    refused = (
        r"cameras\.cam\.stats_hinted: stats_hinted=\('total',\) must be among stats_read \('max',\)"
    )
    with pytest.raises(ConfigError, match=refused):
        load_config(path).camera().build()


def test_a_region_outside_the_frame_is_refused_naming_its_key(tmp_path):
    path = write(
        tmp_path, "[cameras.cam]\noptions = {shape = [64, 96]}\nrois = {spot = [90, 0, 8, 8]}\n"
    )
    with pytest.raises(ConfigError, match=r"cameras\.cam\.rois\.spot: "):
        load_config(path).camera().build()


def test_a_run_owned_key_kept_in_the_sessions_metadata_is_dropped(tmp_path):
    """A start document key an older configuration put in the persistent RE.md would fail
    every run ("multiple values for keyword argument 'uid'"): the session drops it."""
    from bluesky.plans import count
    from bluesky.utils import PersistentDict
    from ophyd.sim import det

    from ophyd_scmos.session import make_run_engine

    path = write(
        tmp_path, f'[session]\nmetadata_dir = "{tmp_path / "md"}"\n[metadata]\nbeamline = "x"\n'
    )
    lab = load_config(path)
    kept = PersistentDict(str(lab.metadata_dir))
    kept.update(uid="stale", time=1.0, operator="me")
    kept.flush()
    del kept  # an earlier session's, gone
    gc.collect()
    RE = make_run_engine(lab, progress=False, sigint=False)
    assert "uid" not in RE.md and "time" not in RE.md and RE.md["operator"] == "me"
    (uid,) = RE(count([det]))
    assert uid != "stale"
