"""`ophyd-scmos cameras`: the cameras each installed driver can see, named as specs.

Each line's spec works with `driver_from_spec` and with ``OPHYD_SCMOS_TEST_CAMERA`` (the
contract suite on your hardware). A driver whose library is missing says what to install.
"""

from __future__ import annotations

import argparse
import sys


def cameras(args: argparse.Namespace) -> int:
    """List the cameras each installed driver can see, with the spec that opens each."""
    from pathlib import Path

    from ophyd_scmos.cli import CommandError
    from ophyd_scmos.drivers import CameraError, MissingLibrary

    if args.mm_path and not Path(args.mm_path).is_dir():
        raise CommandError(f"--mm-path {args.mm_path}: no such folder")
    found: list[tuple[str, str]] = [("simulated", "Simulated sCMOS, 2048x2048 (software)")]
    notes: list[str] = []
    try:
        from ophyd_scmos.drivers.micromanager import list_cameras as micromanager_cameras

        paths = [args.mm_path] if args.mm_path else None
        found += [
            (f"micromanager:{device}", f"{text} (Micro-Manager adapter)")
            for device, text in micromanager_cameras(paths)
        ]
    except MissingLibrary as exc:
        notes.append(f"micromanager: not available: {exc}")
    try:
        from ophyd_scmos.drivers.genicam import GenICamCamera
        from ophyd_scmos.drivers.genicam import list_cameras as genicam_cameras

        found += [(f"genicam:{camera_id}", text) for camera_id, text in genicam_cameras()]
        for address in args.address:
            driver = GenICamCamera(address)
            try:
                driver.open()
                found.append((f"genicam:{address}", driver.model))
            except CameraError as exc:
                notes.append(f"genicam:{address}: {exc}")
            finally:
                driver.close()
    except MissingLibrary as exc:
        notes.append(f"genicam: not available: {exc}")
    width = max(len(spec) for spec, _ in found) + 2
    print(f"{'SPEC':<{width}}CAMERA")
    for spec, text in found:
        print(f"{spec:<{width}}{text}")
    for note in notes:
        print(note, file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("cameras", help=cameras.__doc__, description=cameras.__doc__)
    p.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="IP",
        help="also open the GenICam camera at this address (discovery misses cameras on "
        "other subnets and Aravis's fake camera); repeatable",
    )
    p.add_argument(
        "--mm-path",
        default=None,
        metavar="DIR",
        help="Micro-Manager folder with device adapters (default: pymmcore-plus's search, "
        "MICROMANAGER_PATH, `mmcore install`)",
    )
    p.set_defaults(func=cameras)
