"""`ophyd-scmos acquire`, run as a command: what it prints, its exit code, and the file."""

from __future__ import annotations

import io
import json
import re
import shlex
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest

from ophyd_scmos import SimulatedSCMOS
from ophyd_scmos.cli import main
from ophyd_scmos.drivers import ROI, CameraSettings
from ophyd_scmos.pipeline import layout
from ophyd_scmos.session import FrameProgress
from tests.conftest import expected_frames
from tests.lab_env import (
    BIN,
    EXAMPLE_CONFIG,
    REPO,
    catalog_dir,
    data_dir,
    frames_recorded,
    run,
    shared_home,
    user_env,
)

ACQUIRE = str(BIN / "ophyd-scmos"), "acquire"

FAST_CAMERA = """
[pipeline]
compression = "none"
ring_mb = 16
[cameras.fast]
# a deep camera buffer: a loaded machine that stalls the reader makes it wait, not miss
options = { shape = [256, 320], seed = 3, camera_buffer_frames = 100000 }
exposure_time = 0.001
acquire_period = 0.002
roi = [32, 16, 96, 64]
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return shared_home(tmp_path_factory)


def test_acquire_count_prints_uid_and_file_and_the_file_holds_every_frame(home):
    done = run([*ACQUIRE, "--config", str(EXAMPLE_CONFIG), "--num", "20"], home)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(maxsplit=1) for line in done.stdout.splitlines())
    assert set(lines) == {"uid", "file", "frames", "catalog"}
    assert len(lines["uid"]) == 36
    assert lines["frames"] == "20 written, 0 dropped, 0 missed"
    path = lines["file"]
    assert path.startswith(str(data_dir(home))) and path.endswith(".h5")
    with h5py.File(path, "r") as f:
        frames = f[layout.DATA][()]
        assert bool(f["/entry"].attrs["complete"])
    camera = SimulatedSCMOS(shape=(2048, 2048), seed=0)
    camera.open()
    camera.configure(CameraSettings(exposure_time=0.005, roi=ROI(768, 768, 512, 512)))
    np.testing.assert_array_equal(frames, expected_frames(camera, 20))


def test_acquire_movie_records_frames_at_full_rate_and_reports_json(home):
    config = home / "fast.toml"
    config.write_text(FAST_CAMERA)
    argv = [*ACQUIRE, "--config", str(config), "--frames", "300", "--exposure", "0.0015", "--json"]
    done = run(argv, home)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["plan"] == "movie"
    assert (result["frames_written"], result["frames_dropped"], result["frames_missed"]) == (
        300,
        0,
        0,
    )
    assert result["file"].split("/")[-1].startswith("fast_")
    with h5py.File(result["file"], "r") as f:
        assert f[layout.DATA].shape == (300, 64, 96)
        assert f["/entry"].attrs["exposure_time"] == 0.0015  # --exposure over the file's
        numbers = f[layout.FRAME_NUMBER][()]
    np.testing.assert_array_equal(np.diff(numbers), 1)  # the camera's numbers: no gap


@pytest.mark.parametrize(
    ("sent", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl_c", "sigterm"]
)
def test_ctrl_c_or_sigterm_ends_a_movie_early_keeping_its_frames(home, sent, code):
    """Ctrl-C, or SIGTERM as `timeout` or a batch system sends: the run ends with the frames
    taken, the file whole and closed, and the exit code the shell expects."""
    name = f"interrupted_{sent.name.lower()}"  # its own files: the other signal's are there
    config = home / f"{name}.toml"
    config.write_text(FAST_CAMERA.replace("[cameras.fast]", f"[cameras.{name}]"))
    argv = [*ACQUIRE, "--config", str(config), "--seconds", "60", "--json"]
    process = subprocess.Popen(
        argv, env=user_env(home), cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60  # the file is made at staging, before the camera runs
    while not frames_recorded(data_dir(home), f"{name}_*.h5") and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(sent)
    out, err = process.communicate(timeout=60)
    assert process.returncode == code, err[-3000:]
    assert f"{sent.name}: ending the run, keeping the frames taken" in err
    result = json.loads(out)
    assert result["frames_written"] > 0
    with h5py.File(result["file"], "r") as f:
        assert f[layout.DATA].shape[0] == result["frames_written"]
        assert bool(f["/entry"].attrs["complete"])


def test_ctrl_c_twice_aborts_the_count_at_once_keeping_its_frames_and_the_catalogs_end(home):
    """The first Ctrl-C ends a count after its event; a second, as the first says, stops at
    once: the run is aborted (in the catalog too), its file closed with the frames written.
    Python's KeyboardInterrupt would have had the RunEngine panic: a traceback, and a run
    the catalog never sees end."""
    from ophyd_scmos import open_catalog

    config = home / "twice.toml"
    config.write_text(FAST_CAMERA.replace("[cameras.fast]", "[cameras.twice]"))
    argv = [*ACQUIRE, "--config", str(config), "--num", "1000000", "--json"]
    process = subprocess.Popen(
        argv, env=user_env(home), cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while frames_recorded(data_dir(home), "twice_*.h5") < 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-3000:]
    assert "SIGINT again: stopping at once" in err
    assert "Traceback" not in err and "panicked" not in err, err[-3000:]
    result = json.loads(out)
    written = result["frames_written"]
    assert written >= 20 and result["error"] is None
    with h5py.File(result["file"], "r") as f:
        assert f[layout.DATA].shape[0] == written
    run_ = open_catalog(catalog_dir(home))[result["uid"]]
    assert run_.metadata["stop"]["exit_status"] == "abort"
    assert run_["primary"]["twice_image"].shape[0] == written


def test_ctrl_c_while_the_camera_is_being_staged_still_ends_the_movie_at_once(tmp_path):
    """Ctrl-C can come while the camera is staged (its file already made), when there is no
    recording yet to stop: the movie must still end as it starts, not run its 60 s."""
    from bluesky import RunEngine
    from bluesky.preprocessors import msg_mutator

    from ophyd_scmos.cli.lab import _Interrupt
    from ophyd_scmos.config import parse_config
    from ophyd_scmos.plans import movie

    lab = parse_config({"data": {"dir": str(tmp_path)}, "cameras": {"cam": {}}})
    cam = lab.camera().build()
    try:
        RE = RunEngine(context_managers=[])
        with _Interrupt(RE, cam, flying=True) as interrupt:
            interrupt.handle(signal.SIGINT, None)  # before the run's camera exists
            started = time.monotonic()
            RE(msg_mutator(movie(cam, seconds=60), interrupt.at_kickoff))
        assert time.monotonic() - started < 20
        assert int(cam.frames_written.get()) == 0
    finally:
        cam.destroy()


def test_acquire_with_a_wrong_config_or_camera_exits_2_saying_why(tmp_path, capsys):
    bad = tmp_path / "bad-overflow.toml"
    bad.write_text('[pipeline]\noverflow = "wait"\n')
    assert main(["acquire", "--config", str(bad), "--num", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"lab configuration {bad}: pipeline.overflow: 'wait' is not allowed" in err
    assert "block, drop" in err

    assert main(["acquire", "--config", str(EXAMPLE_CONFIG), "--camera", "side", "--num", "1"]) == 2
    assert "no camera named 'side'; configured: cam" in capsys.readouterr().err


def test_acquire_takes_exactly_one_positive_amount(capsys):
    for argv, message in (
        (["acquire", "--frames", "0"], "must be > 0"),
        (["acquire"], "one of the arguments --num --frames --seconds is required"),
        (["acquire", "--num", "5", "--seconds", "1"], "not allowed with argument"),
        (["acquire", "--num", "1e9"], "invalid int value: '1e9'"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


BITSHUFFLE_FILTER = 32008  # hdf5plugin's filter id, which the writer's chunks declare


def test_acquire_takes_the_settings_a_user_sets_in_ipython(home):
    config = home / "settings.toml"
    config.write_text(FAST_CAMERA.replace("[cameras.fast]", "[cameras.settings]"))
    argv = [*ACQUIRE, "--config", str(config), "--frames", "20", "--json"]
    argv += ["--roi", "0", "0", "64", "32", "--binning", "2", "--exposure", "0.0015"]
    argv += ["--compression", "bitshuffle-lz4"]  # over the file's "none"
    done = run(argv, home)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    with h5py.File(result["file"], "r") as f:
        data = f[layout.DATA]
        assert data.shape == (20, 16, 32)  # the ROI, binned 2x2
        assert data.id.get_create_plist().get_filter(0)[0] == BITSHUFFLE_FILTER
        assert (f["/entry"].attrs["binning"], f["/entry"].attrs["exposure_time"]) == (2, 0.0015)
        assert f["/entry"].attrs["compression"] == "bitshuffle-lz4"  # the codec, by its name


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--roi", "0", "0", "4096", "4096"], "--roi 0 0 4096 4096: refused by Simulated sCMOS"),
        (["--binning", "3"], "--binning 3: refused by Simulated sCMOS"),
        (["--compression", "gzip"], "--compression gzip: compression 'gzip' is not one of: none,"),
    ],
)
def test_a_setting_the_camera_refuses_is_one_line_and_exit_2(tmp_path, capsys, flags, says):
    config = tmp_path / "lab.toml"
    config.write_text(FAST_CAMERA)
    assert main(["acquire", "--config", str(config), "--num", "1", *flags]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"ophyd-scmos acquire: {says}")


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--exposure", "-1"], "argument --exposure: must be > 0 and finite, got -1"),
        (["--seconds", "inf"], "argument --seconds: must be > 0 and finite, got inf"),
        (["--roi", "0", "0", "64"], "argument --roi: expected 4 arguments"),
        (["--binning", "two"], "argument --binning: invalid int value: 'two'"),
    ],
)
def test_a_malformed_setting_is_one_line_and_exit_2(capsys, flags, says):
    amount = [] if "--seconds" in flags else ["--num", "1"]
    with pytest.raises(SystemExit) as exit_:
        main(["acquire", *amount, *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == f"ophyd-scmos acquire: {says} (see ophyd-scmos acquire --help)\n"


def test_a_configured_region_the_flags_push_out_of_the_frame_is_one_line_and_exit_2(
    tmp_path, capsys
):
    """The example configuration's region, in frame pixels, and a --binning that halves the
    frame: refused before the run, naming the configuration's key (not a run's traceback)."""
    config = tmp_path / "lab.toml"
    config.write_text(f'[data]\ndir = "{tmp_path / "data"}"\n' + FAST_CAMERA)
    config.write_text(config.read_text() + "rois = { spot = [40, 8, 16, 16] }\n")
    assert main(["acquire", "--config", str(config), "--num", "1", "--binning", "2"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert f"lab configuration {config}: cameras.fast.rois.spot: region spot=" in err
    assert "outside the 48x32 frame" in err and "as --roi/--binning make it" in err
    assert not (tmp_path / "data").exists() or not list((tmp_path / "data").iterdir())


def test_a_movie_shorter_than_one_frame_is_refused_before_it_starts(tmp_path, capsys):
    config = tmp_path / "lab.toml"
    config.write_text(f'[data]\ndir = "{tmp_path / "data"}"\n' + FAST_CAMERA)
    assert main(["acquire", "--config", str(config), "--seconds", "0.001"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert "--seconds 0.001 is shorter than one frame (0.002 s apart)" in err
    assert not (tmp_path / "data").exists() or not list((tmp_path / "data").iterdir())


def test_a_run_that_fails_at_stage_says_why_in_one_line(tmp_path, capsys):
    """Its file is there already (a template without a varying field): one line naming it,
    not bluesky's traceback of the aborted run; the file is left as it was."""
    config = tmp_path / "lab.toml"
    config.write_text(
        f'[data]\ndir = "{tmp_path / "data"}"\nfile_template = "{{name}}.h5"\n'
        f'[catalog]\npath = "{tmp_path / "catalog"}"\n' + FAST_CAMERA
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "fast.h5").write_bytes(b"earlier")
    assert main(["acquire", "--config", str(config), "--num", "1"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err and "Run aborted" not in err
    assert "fast.h5" in err and "exists" in err
    assert (tmp_path / "data" / "fast.h5").read_bytes() == b"earlier"


def test_the_readme_acquire_step_records_a_region_not_full_frames(home):
    """The README's command without IPython records "the same kind of movie" as its IPython
    step: a 512x512 region (0.5 GB in 10 s), not 8.4 MB full frames (8.4 GB). Run for 1 s."""
    readme = (REPO / "README.md").read_text()
    (command,) = re.findall(r"`\.venv/bin/(ophyd-scmos acquire [^`]*)`", readme)
    argv = shlex.split(command)
    assert "--roi" in argv
    argv[argv.index("--seconds") + 1] = "1"
    done = run([str(BIN / argv[0]), *argv[1:], "--json"], home)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    with h5py.File(result["file"], "r") as f:
        assert f[layout.DATA].shape[1:] == (512, 512)
        assert 20 <= f[layout.DATA].shape[0] <= 400  # ~100 frames/s for 1 s


def test_the_progress_bar_stays_within_its_total_and_shows_the_cameras_rate():
    """A timed movie's total is an estimate (300 for 3 s at 100 frames/s; it takes 301 or
    more); the rate counts from the run's start to the last frame, not the set-up before it
    (catalog, writer) nor the tail after it (closing the file, the catalog's stop)."""
    out = io.StringIO()
    progress = FrameProgress(300, "cam", file=out, disable=False)
    time.sleep(1)  # set-up
    progress("start", {})
    started = time.monotonic()
    progress("descriptor", {"data_keys": {"cam_image": {"dtype": "array", "shape": [64, 96]}}})
    for stop in (100, 200, 301):
        time.sleep(0.1)
        progress("stream_datum", {"indices": {"start": 0, "stop": stop}})
    frames_took = time.monotonic() - started  # 0.3 s, more on a loaded machine
    time.sleep(1)  # tail
    progress.close()
    drawn = out.getvalue()
    assert not re.search(r"\d+frames \[", drawn)  # tqdm's form for a count past its total
    for count, total in re.findall(r"(\d+)/(\d+) \[", drawn):
        assert int(count) <= int(total)
    final = drawn.rstrip().split("\r")[-1]
    assert "301/301" in final
    rate = float(re.search(r"([\d.]+)frames/s", final).group(1))
    # From the start to the last frame, not the 2 s more of set-up and tail.
    assert rate == pytest.approx(301 / frames_took, rel=0.2)
    assert progress.elapsed == pytest.approx(frames_took, abs=0.05)


def test_a_run_that_fails_midway_still_reports_its_uid_file_and_counts(tmp_path):
    """The file may grow no larger than 16 MB (`ulimit -f`): the writer fails mid-run. The
    command says why in one line and still prints the run's uid, its file and what it
    holds (the run is in the catalog, failed), as JSON here."""
    import resource

    config = tmp_path / "lab.toml"
    config.write_text(
        f'[data]\ndir = "{tmp_path / "data"}"\n[catalog]\npath = "{tmp_path / "catalog"}"\n'
        '[pipeline]\ncompression = "none"\nring_mb = 4\n'
        "[cameras.fast]\noptions = { shape = [256, 320], seed = 3 }\nexposure_time = 0.001\n"
    )
    limit = 16 << 20

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [*ACQUIRE, "--config", str(config), "--num", "300", "--json"],
        env=user_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=small_files,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "file-size limit reached" in done.stderr and "Traceback" not in done.stderr
    result = json.loads(done.stdout)
    assert len(result["uid"]) == 36 and "file-size limit reached" in result["error"]
    with h5py.File(result["file"], "r") as f:
        assert 0 < layout.stored_frames(f) == result["frames_written"] < 300
        assert not f["/entry"].attrs["complete"]
