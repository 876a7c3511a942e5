"""Naming run files: a template, a directory, and a promise never to overwrite."""

from __future__ import annotations

import datetime
import os
import string
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TEMPLATE = "{name}_{date:%Y%m%d-%H%M%S}_{uid}.h5"
FIELDS = {"name", "date", "uid", "counter"}
SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs")


def check_template(template: str) -> str:
    """Raise ValueError unless `template` names a file inside the write directory."""
    if not isinstance(template, str) or "\0" in template:
        raise ValueError(f"file template {template!r} must be a string without NUL characters")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"file template {template!r} is not a format string: {exc}") from None
    unknown = fields - FIELDS
    if unknown:
        raise ValueError(
            f"file template {template!r} uses unknown field(s) {sorted(unknown)}; "
            f"allowed: {sorted(FIELDS)}"
        )
    try:  # a field's format is a path too once formatted: `{date:..}`, `{date:/tmp/x}`
        example = _format(template, "cam", datetime.datetime.now(), "0" * 8, 0)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"file template {template!r} is not a format string: {exc}") from None
    _inside(template, template)
    _inside(template, example)
    if not template.endswith(SUFFIXES):
        raise ValueError(f"file template {template!r} must end with one of {SUFFIXES}")
    return template


def _format(template: str, name: str, date: datetime.datetime, uid: str, counter: int) -> str:
    return template.format(name=name, date=date, uid=uid, counter=counter)


def _inside(template: str, relative: str) -> None:
    """Raise ValueError unless `relative` (the template, or a name it gave) stays inside the
    write directory."""
    parts = Path(relative).parts
    if Path(relative).is_absolute() or ".." in parts or not parts:
        raise ValueError(
            f"file template {template!r} must give a relative path inside the write directory "
            f"(no leading '/', no '..'); it gives {relative!r}"
        )


def prepare_dir(write_dir: str | os.PathLike) -> Path:
    """Create the directory if missing (as areaDetector does); fail clearly if not writable."""
    path = Path(write_dir).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create write directory {path}: {exc.strerror or exc}") from exc
    if not path.is_dir():
        raise NotADirectoryError(f"write directory {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"write directory {path} is not writable by this user")
    return path


def next_file(write_dir: Path, template: str, name: str) -> Path:
    """The file this run will write; FileExistsError if the template gives an existing name.

    With a `{counter}` field the first free number is taken instead.
    """
    now = datetime.datetime.now()
    uid = uuid.uuid4().hex[:8]
    counter = 0
    while True:
        relative = _format(template, name, now, uid, counter)
        _inside(template, relative)
        path = write_dir / relative
        if not path.exists():
            break
        if "{counter" not in template:
            raise FileExistsError(
                f"{path} already exists and ophyd-scmos never overwrites a file; "
                "change the file template or the write directory"
            )
        counter += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def create_next(write_dir: Path, template: str, name: str, create: Callable[[Path], T]) -> T:
    """Make this run's file with `create(path)`, which must create it exclusively (raising
    FileExistsError if it exists). With a `{counter}` field, a number that another process
    took in the meantime is skipped, so two processes starting together both get a file."""
    while True:
        path = next_file(write_dir, template, name)
        try:
            return create(path)
        except FileExistsError:
            if "{counter" not in template:
                raise
