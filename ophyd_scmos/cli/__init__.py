"""The `ophyd-scmos` command: one entry point, one module per group of subcommands.

Each module in `COMMANDS` has `register(subparsers)`, which adds its subcommands with a
`func(args) -> int` default; heavy imports happen inside those functions, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

COMMANDS = ("demo", "bench", "cameras", "catalog", "lab", "live", "recover")


class Parser(argparse.ArgumentParser):
    """A wrong command line is refused in one line, as a wrong value anywhere else is: what
    is wrong, and where the help is (exit code 2, as argparse's)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ophyd-scmos",
        description="Drive an sCMOS camera from Bluesky; every frame into one HDF5 file a run.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"ophyd_scmos.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
