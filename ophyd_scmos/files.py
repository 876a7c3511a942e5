"""Naming run files: a template, a directory, and a promise never to overwrite."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import string
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

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
        now = datetime.datetime.now()
        examples = [_format(template, "cam", now, "0" * 8, n) for n in (0, 47)]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"file template {template!r} is not a format string: {exc}") from None
    _inside(template, template)
    for example in examples:
        _inside(template, example)
        # `{counter:c}`: a number as a character, NUL or "/" among them
        if "\0" in example or len(Path(example).parts) != len(Path(examples[0]).parts):
            raise ValueError(f"file template {template!r} gives {example!r}: not a file name")
    check_uri_path(Path(template), "file template")
    if not template.endswith(SUFFIXES):
        raise ValueError(f"file template {template!r} must end with one of {SUFFIXES}")
    return template


def _numbered(template: str) -> bool:
    """Whether `template` has a `{counter}` field (``{{counter}}`` is text)."""
    return any(field == "counter" for _, field, _, _ in string.Formatter().parse(template))


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


def file_uri(path: str | os.PathLike) -> str:
    """The URI of a run file in its documents, as TiledWriter writes one and Tiled reads it
    back (`tiled.utils.path_from_uri`, which takes the path as it is: no percent-encoding)."""
    return f"file://localhost{Path(path).absolute()}"


def local_path(uri: str) -> Path:
    """The path of a ``file:`` URI of a catalog's assets and documents (`file_uri`)."""
    return Path(urlparse(uri).path)


def check_uri_path(path: Path, what: str) -> None:
    """Raise ValueError if `path` has a character that would end it in a file's URI (where
    a catalog reads it back): '#', '?' or a control character."""
    bad = sorted({c for c in str(path) if c in "#?" or ord(c) < 32 or ord(c) == 127})
    if bad:
        raise ValueError(
            f"{what} {str(path)!r} has {', '.join(map(repr, bad))} in it: catalogs find a "
            "run's file by a URI, where such a character ends the path; choose a name "
            "without it"
        )


def prepare_dir(write_dir: str | os.PathLike) -> Path:
    """Create the directory if missing (as areaDetector does); fail clearly if not writable
    or if a catalog could not find files in it (`check_uri_path`)."""
    path = Path(write_dir).expanduser().resolve()
    check_uri_path(path, "write directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create write directory {path}: {exc.strerror or exc}") from exc
    if not path.is_dir():
        raise NotADirectoryError(f"write directory {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"write directory {path} is not writable by this user")
    return path


def next_file(write_dir: Path, template: str, name: str, first: int = 0) -> tuple[Path, int]:
    """The file this run will write, and its `{counter}` number; FileExistsError if the
    template gives an existing name. With a `{counter}` field the first free number from
    `first` on is taken instead.
    """
    now = datetime.datetime.now()
    uid = uuid.uuid4().hex[:8]
    counter = first
    while True:
        relative = _format(template, name, now, uid, counter)
        _inside(template, relative)
        path = write_dir / relative
        if not os.path.lexists(path):  # a dangling symlink takes its name too
            break
        if not _numbered(template):
            raise FileExistsError(
                f"{path} already exists and ophyd-scmos never overwrites a file; "
                "change the file template or the write directory"
            )
        counter += 1
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FileExistsError(
            f"{path.parent} cannot be made for {path.name}: a file is in its way (the file "
            f"template {template!r} makes it a directory)"
        ) from None
    return path, counter


def create_next(write_dir: Path, template: str, name: str, create: Callable[[Path], T]) -> T:
    """Make this run's file with `create(path)`, which must create it exclusively (raising
    FileExistsError if it exists).

    With a `{counter}` field, numbers go on from the last one this template and camera
    took in `write_dir` (kept in its `COUNTERS` file), never back: a number whose file was
    moved away (archived) is not taken again, which would give a run in a catalog another
    run's file under its file's name. A number another process took in the meantime is
    skipped, so two processes starting together both get a file.
    """
    if not _numbered(template):
        return create(next_file(write_dir, template, name)[0])
    with _counters(write_dir) as taken:
        series = f"{name} {template}"
        first = taken.get(series, -1) + 1
        while True:
            path, number = next_file(write_dir, template, name, first)
            try:
                made = create(path)
            except FileExistsError:
                first = number + 1
                continue
            taken[series] = number
            return made


#: the file in a write directory that keeps the last `{counter}` number of each camera and
#: template (JSON); removing it lets numbers start again at the first free one
COUNTERS = ".ophyd-scmos-counters.json"


@contextlib.contextmanager
def _counters(write_dir: Path) -> Iterator[dict[str, int]]:
    """The write directory's last `{counter}` numbers, for one caller at a time (a file
    lock, also between processes), written back as they are left. A record that does not
    read (cut short) counts as empty: numbers then go on from the first free one."""
    with open(write_dir / COUNTERS, "a+", encoding="utf-8") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        file.seek(0)
        try:
            taken = {str(k): int(v) for k, v in json.loads(file.read() or "{}").items()}
        except (ValueError, AttributeError):
            taken = {}
        try:
            yield taken
        finally:
            file.seek(0)
            file.truncate()
            file.write(json.dumps(taken, indent=1))
