"""`ophyd-scmos recover`: open again a file whose writer never closed it (killed, power cut).

A stream recovers its own file when its writer dies; this is for what no stream was left to
recover. HDF5 marks a file open for writing in its superblock; after a crash the mark stays
and readers refuse the file. Clearing it is what `h5clear -s` does (Debian's h5clear is too
old for these files).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def recover(args: argparse.Namespace) -> int:
    """Clear the open-for-writing mark of HDF5 files no process is writing; say what they hold."""
    import h5py

    from ophyd_scmos.pipeline import layout
    from ophyd_scmos.pipeline.recovery import clear_open_flags

    failed = 0
    for path in args.files:
        holder = _holder(path)
        try:
            if holder is not None:
                raise ValueError(f"{path} is open in process {holder}; recover it after it ends")
            cleared = clear_open_flags(path)
            with h5py.File(path, "r") as f:
                frames = f[layout.DATA].shape[0] if layout.DATA in f else 0
        except (OSError, ValueError) as exc:
            print(f"ophyd-scmos recover: {exc}", file=sys.stderr)
            failed += 1
            continue
        what = "cleared the open-for-writing mark" if cleared else "was not marked open"
        print(f"{path}: {what}; {frames} frames")
    return 1 if failed else 0


def _holder(path: Path) -> int | None:
    """A process that has `path` open (Linux: /proc), or None."""
    target = os.path.realpath(path)
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                if os.path.realpath(fd) == target:
                    return int(fd_dir.parent.name)
        except OSError:  # gone meanwhile, or not ours to look at
            continue
    return None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("recover", help=recover.__doc__, description=__doc__)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="HDF5 files to recover")
    p.set_defaults(func=recover)
