"""`ophyd-scmos ipython | acquire | config check`: the lab's setup, from the lab configuration.

All three read the same file (``--config``, else ``$OPHYD_SCMOS_CONFIG``, else the user's
``lab.toml``, else the defaults), so a session, a script and a check agree on the cameras,
the data directory and the catalog. A wrong configuration ends each of them with exit code 2
and one line naming the key, before a camera opens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from ophyd_scmos.cli import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    no_run_aborted_traceback,
    positive,
    reaching_catalog,
    run_error,
)


def default_profile() -> Path:
    """The lab's IPython profile: beside the package in a source checkout (an editable
    install), else where a wheel installed it, <prefix>/share/ophyd-scmos."""
    checkout = Path(__file__).resolve().parents[2] / "profiles" / "profile_scmos"
    if (checkout / "startup").is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "ophyd-scmos" / "profile_scmos"


def ipython(args: argparse.Namespace) -> int:
    """Start IPython with the lab profile: a RunEngine, the catalog, the cameras, the plans."""
    from ophyd_scmos.config import CONFIG_ENV

    if args.config:
        os.environ[CONFIG_ENV] = str(Path(args.config).expanduser().absolute())
    if _load(args.config, "ipython") is None:
        return EXIT_CONFIG
    profile = Path(args.profile_dir) if args.profile_dir else default_profile()
    if not (profile / "startup").is_dir():
        fix = (
            "give --profile-dir a directory holding a profile (its startup/ folder), such as"
            if args.profile_dir
            else "pass --profile-dir with"
        )
        print(
            f"ophyd-scmos ipython: no IPython profile at {profile}; {fix} a copy of "
            "profiles/profile_scmos from the ophyd-scmos source",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    import IPython

    if not os.access(profile, os.W_OK):
        profile = _writable_copy(profile)
    extra = args.ipython_args[1:] if args.ipython_args[:1] == ["--"] else args.ipython_args
    IPython.start_ipython(argv=[f"--profile-dir={profile}", *extra])
    return 0


def _writable_copy(profile: Path) -> Path:
    """IPython makes directories of its own in the profile it starts (log, pid, security):
    a read-only profile (a shared checkout, a system-wide install) is started from a copy of
    its settings and startup files in the user's state directory, made afresh each time."""
    from ophyd_scmos.paths import state_dir

    copy = state_dir() / "profile_scmos"
    shutil.rmtree(copy / "startup", ignore_errors=True)
    shutil.copytree(profile / "startup", copy / "startup")
    (copy / "ipython_config.py").unlink(missing_ok=True)
    if (profile / "ipython_config.py").exists():
        shutil.copy2(profile / "ipython_config.py", copy / "ipython_config.py")
    return copy


def acquire(args: argparse.Namespace) -> int:
    """Take a count (--num, one event per frame) or a movie at full rate (--frames or
    --seconds) without IPython; print the run's uid, its file and its frame counts."""
    import dataclasses
    import warnings

    lab = _load(args.config, "acquire")
    if lab is None:
        return EXIT_CONFIG
    try:
        camera = lab.camera(args.camera)
        if args.compression is not None:
            camera = dataclasses.replace(camera, pipeline=_compression(camera, args.compression))
        cam = camera.build()
    except ValueError as exc:  # a ConfigError, or --compression refused
        print(f"ophyd-scmos acquire: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        _apply_settings(cam, args, camera)
    except ValueError as exc:
        cam.destroy()
        print(f"ophyd-scmos acquire: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from ophyd_scmos.catalog import start_local_server

    try:
        with reaching_catalog(lab.catalog.location):
            start_local_server(lab.catalog.location)  # if none runs: it starts while this imports
        from bluesky.plans import count
        from bluesky.preprocessors import msg_mutator
        from bluesky.utils import RunEngineInterrupted

        from ophyd_scmos.catalog.writing import CatalogWriter
        from ophyd_scmos.plans import movie
        from ophyd_scmos.session import FrameProgress, make_run_engine

        with reaching_catalog(lab.catalog.location):  # before the RunEngine takes a frame
            catalog = lab.catalog.open()
        # Ctrl-C is _Interrupt's (end the run, keep it), not a RunEngine pause.
        RE = make_run_engine(lab, progress=False, sigint=False)
        RE.subscribe(CatalogWriter(catalog))
        interrupt = _Interrupt(RE, cam, flying=args.num is None)
        started: list[str] = []  # the run's uid, also where it fails
        RE.subscribe(lambda name, doc: started.append(doc["uid"]), "start")
        if args.num is not None:
            plan = count([cam], num=args.num)
            total = args.num * int(cam.frames_per_point.get())
        else:
            plan = msg_mutator(
                movie(cam, frames=args.frames, seconds=args.seconds), interrupt.at_kickoff
            )
            interval = cam.settings.frame_interval
            total = args.frames or max(1, round(min(args.seconds / interval, 1e12)))
        progress = FrameProgress(total, cam.name)
        RE.subscribe(progress)
        error = None
        try:
            # The RunEngine's own messages go to stderr: stdout is the result (--json).
            with (
                warnings.catch_warnings(),
                interrupt,
                contextlib.redirect_stdout(sys.stderr),
                no_run_aborted_traceback(),
            ):
                warnings.simplefilter("ignore", RuntimeWarning)  # lost frames: reported below
                try:
                    RE(plan)
                except RunEngineInterrupted:  # paused by a signal: end it, keep it
                    interrupt.end()
        except Exception as exc:  # the camera's, the writer's or the catalog's own message
            error = run_error(exc)
            print(f"ophyd-scmos acquire: {error}", file=sys.stderr)
            if not started:
                return 1
        finally:
            progress.close()
        # Also for a failed run: what it holds is in the catalog and the file.
        result = {
            "uid": started[-1],
            "scan_id": RE.md.get("scan_id"),
            "plan": "count" if args.num is not None else "movie",
            "file": cam.file_path.get(),
            "frames_written": int(cam.frames_written.get()),
            "frames_dropped": int(cam.frames_dropped.get()),
            "frames_missed": int(cam.frames_missed.get()),
            "catalog": lab.catalog.describe(),
            "error": error,
        }
    finally:
        cam.destroy()
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"uid      {result['uid']}")
        print(f"file     {result['file']}")
        print(
            f"frames   {result['frames_written']} written, {result['frames_dropped']} dropped, "
            f"{result['frames_missed']} missed"
        )
        print(f"catalog  {result['catalog']}  (scan {result['scan_id']})")
    if error is not None:
        return 1
    if interrupt.signal:
        return EXIT_INTERRUPTED + interrupt.signal
    lost = result["frames_dropped"] + result["frames_missed"]
    if lost:
        print(
            f"ophyd-scmos acquire: {lost} frame(s) lost; the file records which (gaps in "
            "frame_number). A larger ring_mb, compression or a longer exposure helps",
            file=sys.stderr,
        )
        return 1
    return 0


def _compression(camera: Any, codec: str) -> Any:
    """The camera's pipeline options with --compression; ValueError naming the flag."""
    import dataclasses

    try:
        return dataclasses.replace(camera.pipeline, compression=codec)
    except ValueError as exc:  # PipelineOptions' own check
        raise ValueError(f"--compression {codec}: {exc}") from None


#: acquire's settings flags, in the order the camera takes them (binning before the ROI)
SETTING_FLAGS = (("binning", "--binning"), ("roi", "--roi"), ("exposure_time", "--exposure"))


def _apply_settings(cam: Any, args: argparse.Namespace, camera: Any) -> None:
    """The command line's settings over the configuration's (`camera`), each checked by the
    camera as in IPython (``cam.roi.set(...)``), then the configuration's regions against
    the frame they give, and `--seconds` against its frame interval; ValueError names the
    flag or key, the value and the reason."""
    from ophyd_scmos.config import ConfigError
    from ophyd_scmos.pipeline import stats

    values = {"binning": args.binning, "roi": args.roi, "exposure_time": args.exposure}
    for setting, flag in SETTING_FLAGS:
        value = values[setting]
        if value is None:
            continue
        try:
            getattr(cam, setting).set(tuple(value) if setting == "roi" else value)
        except (ValueError, TypeError, RuntimeError) as exc:
            shown = " ".join(map(str, value)) if setting == "roi" else value
            raise ValueError(f"{flag} {shown}: refused by {cam.driver.model}: {exc}") from None
    for region, value in cam.rois.items():
        try:
            stats.check_region(region, value, cam.driver.frame_shape)
        except ValueError as exc:
            raise ConfigError(
                f"{exc}, as --roi/--binning make it: give a region that fits, or another "
                "--roi/--binning",
                key=f"cameras.{cam.name}.rois.{region}",
                path=camera.path,
            ) from None
    interval = cam.driver.settings.frame_interval
    if args.seconds is not None and args.seconds < interval:
        raise ValueError(
            f"--seconds {args.seconds:g} is shorter than one frame ({interval:g} s apart): "
            "the movie would hold none"
        )


def config_check(args: argparse.Namespace) -> int:
    """Check the lab configuration: every key and value, then, unless --no-cameras, open
    each camera and apply its settings (the camera's own limits), and open the catalog where
    it exists."""
    from ophyd_scmos.config import ConfigError
    from ophyd_scmos.paths import default_write_dir

    lab = _load(args.config, "config check")
    if lab is None:
        return EXIT_CONFIG
    print(f"config   {lab.source}")
    print(f"catalog  {lab.catalog.describe()}")
    if lab.catalog.url and not os.environ.get(lab.catalog.api_key_env):
        print(f"         ${lab.catalog.api_key_env} is not set: no API key for the server")
    print(f"metadata {lab.metadata_dir}")
    for camera in lab.cameras:
        line = (
            f"camera   {camera.name}: {camera.driver} -> {camera.write_dir or default_write_dir()}"
        )
        if not args.no_cameras:
            try:
                cam = camera.build()
            except ConfigError as exc:
                print(line)
                print(f"ophyd-scmos config check: {exc}", file=sys.stderr)
                return EXIT_CONFIG
            rows, cols = cam.driver.frame_shape
            line += f" ({cam.driver.model}, {cols}x{rows}, opened and set)"
            cam.destroy()
        print(line)
    if not args.no_cameras and _catalog_exists(lab.catalog.location):
        from ophyd_scmos.catalog import CatalogUnavailable

        try:
            lab.catalog.open()
        except CatalogUnavailable as exc:
            print(f"ophyd-scmos config check: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        print("catalog  opened")
    print("ok")
    return 0


def _catalog_exists(location: str | None) -> bool:
    """A catalog `config check` can open without making one: a server, or an embedded
    catalog's database (one not there yet is made where the first run is recorded)."""
    from ophyd_scmos.catalog.embedded import CATALOG_DB, embedded_directory

    directory = embedded_directory(location)
    return directory is None or (directory / CATALOG_DB).exists()


def _load(path: str | None, command: str) -> Any:
    """The configuration, or None after printing why it is wrong."""
    from ophyd_scmos.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"ophyd-scmos {command}: {exc}", file=sys.stderr)
        return None


class _Interrupt:
    """Ctrl-C, or SIGTERM (`timeout`, a batch system's end of job), ends the acquisition
    early and keeps it: a movie stops the camera and the run ends with the frames so far, a
    count ends after the current event. The same signal again stops at once: the run is
    aborted, its file closed with the frames written; a third acts as it would have."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, RE: Any, cam: Any, *, flying: bool):
        self.RE, self.cam, self.flying = RE, cam, flying
        self.signal = 0  #: the signal that ended it early, if one did
        self.at_once = False  #: it came twice: the run is aborted at once

    @property
    def seen(self) -> bool:
        return self.signal != 0

    def __enter__(self) -> _Interrupt:
        self.previous: dict[int, Any] = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, previous in self.previous.items():
            signal.signal(s, previous)

    def handle(self, signum: int, frame: Any) -> None:
        if self.signal:
            self._at_once(signum)
            return
        self.signal = signum
        again = "Ctrl-C" if signum == signal.SIGINT else "the same signal"
        print(
            f"\nophyd-scmos acquire: {signal.Signals(signum).name}: ending the run, keeping "
            f"the frames taken ({again} again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
        if self.flying:
            self.cam.stop(success=True)  # the movie's completion sees the camera stopped
        else:
            self.RE.request_pause(defer=True)

    def _at_once(self, signum: int) -> None:
        """The second signal: the RunEngine pauses now, and the run is aborted (`end`),
        its file closed with the frames written (a movie the first signal already ended
        just ends). Python's own KeyboardInterrupt would have the RunEngine panic instead:
        a traceback, and a run the catalog never sees end."""
        signal.signal(signum, self.previous[signum])  # a third acts as it would have
        self.at_once = True
        print(
            f"\nophyd-scmos acquire: {signal.Signals(signum).name} again: stopping at once, "
            "keeping the frames written",
            file=sys.stderr,
            flush=True,
        )
        with contextlib.suppress(Exception):  # the RunEngine already pausing, or done
            self.RE.request_pause(defer=False)

    def end(self) -> None:
        """End the run the RunEngine paused for a signal: stopped (a success, after the
        event under way) or, at the second signal, aborted."""
        if self.RE.state != "paused":  # it ended meanwhile
            return
        if self.at_once:
            self.RE.abort(f"stopped at once by {signal.Signals(self.signal).name}")
        else:
            self.RE.stop()

    def at_kickoff(self, msg: Any) -> Any:
        """A movie's messages pass here: a Ctrl-C while the camera was still being staged
        found no recording to stop, so stop it as the movie starts (the run then ends at
        once, with the frames taken: none)."""
        if msg.command == "kickoff" and self.seen:
            self.cam.stop(success=True)
        return msg


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="PATH",
        help="the lab configuration (default: $OPHYD_SCMOS_CONFIG, else "
        "~/.config/ophyd-scmos/lab.toml, else one simulated camera and the embedded catalog)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ipython", help=ipython.__doc__, description=ipython.__doc__)
    _config_option(p)
    p.add_argument(
        "--profile-dir",
        metavar="DIR",
        help="an IPython profile directory (default: profiles/profile_scmos of a source "
        "checkout, else <prefix>/share/ophyd-scmos/profile_scmos)",
    )
    p.add_argument(
        "ipython_args",
        nargs=argparse.REMAINDER,
        metavar="-- IPYTHON_ARGS",
        help="passed to IPython, after --; e.g. -- -c 'RE(count([cam], num=10))'",
    )
    p.set_defaults(func=ipython)

    p = subparsers.add_parser("acquire", help=acquire.__doc__, description=acquire.__doc__)
    _config_option(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--num", type=positive(int), help="count: this many events (frames)")
    what.add_argument("--frames", type=positive(int), help="movie: this many frames, full rate")
    what.add_argument("--seconds", type=positive(float), help="movie: this long, full rate")
    p.add_argument("--camera", help="which configured camera (default: the first)")
    p.add_argument(
        "--roi",
        type=int,
        nargs=4,
        metavar=("X", "Y", "W", "H"),
        help="region of interest in sensor pixels (a 512x512 frame is 0.5 MB, a full 2048x2048 "
        "one 8 MB)",
    )
    p.add_argument("--binning", type=int, help="square binning: 1, 2, 4 (what the camera offers)")
    p.add_argument("--exposure", type=positive(float), help="exposure time, seconds")
    p.add_argument(
        "--compression",
        metavar="CODEC",
        help="none, bitshuffle-lz4, blosc2-lz4 or blosc2-zstd (default: the configuration's)",
    )
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")
    p.set_defaults(func=acquire)

    p = subparsers.add_parser(
        "config", help="Check the lab configuration.", description="The lab configuration."
    )
    sub = p.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    check = sub.add_parser("check", help=config_check.__doc__, description=config_check.__doc__)
    _config_option(check)
    check.add_argument(
        "--no-cameras",
        action="store_true",
        help="check the file only; open no camera, nor the catalog",
    )
    check.set_defaults(func=config_check)
