"""The `ophyd-scmos` command: one entry point, one module per group of subcommands.

Each module in `COMMANDS` has `register(subparsers)`, which adds its subcommands with a
`func(args) -> int` default; heavy imports happen inside those functions, so `--help` is fast.
A command that cannot start with what it was given raises `CommandError`: one line, no
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

COMMANDS = ("demo", "bench", "cameras", "catalog", "lab", "live", "recover")
EXIT_CONFIG = 2  #: the configuration or the command line is wrong, as argparse's usage errors
#: plus the number of the signal that ended a run early, as shells report it: 130 for Ctrl-C
EXIT_INTERRUPTED = 128


class CommandError(Exception):
    """What the user must fix before the command can do anything: `main` prints it as one
    line and exits with `code`."""

    def __init__(self, message: str, code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.code = code


@contextlib.contextmanager
def reaching_catalog(location: str | None) -> Iterator[None]:
    """Around opening (or using) the catalog at `location`: one it cannot reach or open
    (`ophyd_scmos.catalog.reaching`) is a `CommandError`, exit 2 as a wrong configuration:
    nothing was done, and the fix is the URL, the server or the directory, not the run."""
    from ophyd_scmos.catalog import CatalogUnavailable, reaching

    try:
        with reaching(location):
            yield
    except CatalogUnavailable as exc:
        raise CommandError(str(exc)) from None


@contextlib.contextmanager
def opened_catalog(location: str | None, api_key: str | None) -> Iterator[Any]:
    """The catalog at `location` (`open_catalog`'s); one it cannot reach ends the command in
    one line (`reaching_catalog`), and a server's connections are closed after (an embedded
    catalog's client is this process's, shared, and closes its own when garbage)."""
    from ophyd_scmos.catalog import open_catalog, server_url

    with reaching_catalog(location):
        catalog = open_catalog(location, api_key=api_key)
    if server_url(location) is None:
        yield catalog
        return
    try:
        yield catalog
    finally:
        catalog.context.close()


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse `type`: a `kind` (int, float) > 0 and finite."""

    def parse(text: str) -> Any:
        value = kind(text)
        if not 0 < value < math.inf:
            raise argparse.ArgumentTypeError(f"must be > 0 and finite, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid int value: ..."
    return parse


def whole_number(text: str) -> int:
    """An argparse `type`: an integer >= 0 (a seed)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def port(text: str) -> int:
    """An argparse `type`: a TCP port, 0 (any free one) to 65535."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port, 0 to 65535, got {text}")
    return value


class _RunAbortedFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Run aborted"


@contextlib.contextmanager
def no_run_aborted_traceback() -> Iterator[None]:
    """A command says in one line why its run failed (the file, what it holds): bluesky's
    traceback of the same failure, logged as "Run aborted", would bury that line."""
    bluesky_log, quiet = logging.getLogger("bluesky"), _RunAbortedFilter()
    bluesky_log.addFilter(quiet)
    try:
        yield
    finally:
        bluesky_log.removeFilter(quiet)


def run_error(exc: BaseException) -> str:
    """What failed a run, in one line: a failed status's own error (bluesky's FailedStatus
    wraps it), else the exception, named."""
    from bluesky.utils import FailedStatus

    if isinstance(exc, FailedStatus) and exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"


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
    try:
        return args.func(args)
    except CommandError as exc:
        print(f"ophyd-scmos {args.command}: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
