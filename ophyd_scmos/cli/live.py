"""`ophyd-scmos live`: watch a camera from a shell, as `cam.live()` does in IPython, until
Ctrl-C. The camera comes from the lab configuration, as for `ophyd-scmos acquire`."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from ophyd_scmos.cli import port
from ophyd_scmos.cli.lab import EXIT_CONFIG, _config_option, _load


def live(args: argparse.Namespace) -> int:
    """Focus mode and the live view's address, until Ctrl-C: the camera free-runs (internal
    trigger, at most 30 frames/s) into no file, and the page shows its newest frames."""
    lab = _load(args.config, "live")
    if lab is None:
        return EXIT_CONFIG
    try:
        cam = lab.camera(args.camera).build()
    except ValueError as exc:  # a ConfigError: no such camera, or one that cannot open
        print(f"ophyd-scmos live: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # A SIGTERM (a service manager, `kill`) ends it as Ctrl-C does: the camera is let go.
    # Ctrl-C's handler is set here too, as `acquire` and the RunEngine set theirs: Python
    # leaves SIGINT ignored where it started ignored (a job a script put in the background).
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        cam.live(host=args.host, port=args.port)  # prints the page's address
        sys.stdout.flush()  # now, for whoever reads it from a pipe
        print("ophyd-scmos live: Ctrl-C to stop", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:  # the view could not start, or the camera would not run
        print(f"ophyd-scmos live: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        cam.destroy()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("live", help=live.__doc__, description=live.__doc__)
    _config_option(p)
    p.add_argument("--camera", help="which configured camera (default: the first)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="serve the page on this address (default 127.0.0.1: this computer only); "
        "another, e.g. 0.0.0.0, lets anyone who can reach it and has the token watch",
    )
    p.add_argument(
        "--port", type=port, default=0, help="serve the page on this port (default: a free one)"
    )
    p.set_defaults(func=live)
