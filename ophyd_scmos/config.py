"""The lab configuration: which cameras, where files and runs go, in one TOML file.

A lab describes its setup once and every entry point follows it: the IPython profile
(``ophyd-scmos ipython``), ``ophyd-scmos acquire`` and ``ophyd-scmos config check``. The file
is found at ``$OPHYD_SCMOS_CONFIG``, else at `default_config_path()`; with neither there the
defaults hold (one simulated camera named ``cam``, the embedded catalog), so a new machine
starts without writing any file. ``profiles/lab.toml`` documents every key.

The file's shape is declared once, as pydantic models (one per TOML table, unknown keys
refused, TOML's own types required). Everything is checked at load, so a wrong value stops
the session before a camera opens, with one line naming the file, the key, the value and what
is allowed (`ConfigError`). A server's API key is never read from the file: the file names
the environment variable that holds it.
"""

from __future__ import annotations

import builtins
import datetime
import difflib
import functools
import inspect
import keyword
import math
import os
import re
import sys
import tempfile
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ophyd_scmos.drivers.base import TriggerMode
from ophyd_scmos.files import DEFAULT_TEMPLATE, check_template
from ophyd_scmos.paths import default_config_path, default_metadata_dir
from ophyd_scmos.pipeline.compression import CODECS
from ophyd_scmos.pipeline.options import OVERFLOW_POLICIES, PipelineOptions
from ophyd_scmos.pipeline.stats import (
    READ,
    RESERVED,
    STATS,
    check_hinted,
    check_names,
    check_region,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

if TYPE_CHECKING:
    from tiled.client.container import Container

    from ophyd_scmos.device import SCMOSCamera

__all__ = [
    "CONFIG_ENV",
    "CameraConfig",
    "CatalogConfig",
    "ConfigError",
    "LabConfig",
    "default_config_path",
    "load_config",
    "parse_config",
]

CONFIG_ENV = "OPHYD_SCMOS_CONFIG"  #: the lab configuration file, where it is not the default
#: The driver class each spec's kind makes (`driver_from_spec`): its keywords are the options.
DRIVER_CLASSES = {
    "simulated": "SimulatedSCMOS",
    "micromanager": "MicroManagerCamera",
    "genicam": "GenICamCamera",
}
#: Names the IPython profile defines: a camera of one of these names would hide it.
PROFILE_NAMES = frozenset(
    {"RE", "bec", "bp", "bps", "bpp", "catalog", "cameras", "count", "darks", "lab", "movie"}
    | {"motor_x", "motor_y"}  # where a camera is the simulated one
)
#: names an IPython session has before the profile runs: Python's builtins, IPython's own
SESSION_NAMES = frozenset(dir(builtins)) | {"get_ipython", "exit", "quit", "In", "Out"}
SECRET_NAMES = ("api_key", "key", "token", "password")


def _is_secret(name: str) -> bool:
    """`name` is one of SECRET_NAMES however it is spelt: apikey, API-Key, Token..."""
    squeezed = name.lower().replace("-", "").replace("_", "")
    return squeezed in {secret.replace("_", "") for secret in SECRET_NAMES}


class ConfigError(ValueError):
    """A wrong lab configuration: names the file, the key, the value and what is allowed."""

    def __init__(self, message: str, *, key: str | None = None, path: Path | None = None):
        self.key, self.path = key, path
        where = f"lab configuration {path}" if path else "lab configuration"
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


# -- what one value may be -------------------------------------------------------------------
def _refuse(value: Any, allowed: str, key: str | None = None) -> PydanticCustomError:
    """The one wording of a refused value; `key`, below the one validated, where it is."""
    shown = value.isoformat() if isinstance(value, (datetime.date, datetime.time)) else repr(value)
    context = {"value": shown, "allowed": allowed, **({"key": key} if key else {})}
    return PydanticCustomError("refused", "{value} is not allowed; expected {allowed}", context)


def _expect(allowed: str, check: Callable[[Any], object] | None = None) -> WrapValidator:
    """Whatever refuses the value (its type, a constraint, or `check` raising ValueError)
    says the same thing: the value and what is `allowed`, not pydantic's own words."""

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            checked = handler(value)
            if check is not None:
                check(checked)
        except ValueError:  # pydantic's ValidationError is one
            raise _refuse(value, allowed) from None
        return checked

    return WrapValidator(validate)


def _pipeline_option(name: str) -> Callable[[Any], object]:
    """`PipelineOptions` judges each pipeline value: this config only names its key."""
    return lambda value: PipelineOptions(**{name: value})


_UNSET_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})")


def _directory(value: Any, info: ValidationInfo) -> Path:
    """A directory that is there or can be made: ``~`` and $VARIABLES expanded, relative to
    the file's folder (not to wherever one starts), refused if a variable is unset, if it
    (or a folder on its way) is a file, or if nothing can be created where it would go."""
    value = os.fspath(value) if isinstance(value, os.PathLike) else value  # from Python
    if not isinstance(value, str) or not value:
        raise _refuse(value, "a directory path as a string")
    expanded = os.path.expandvars(value)
    unset = _UNSET_VARIABLE.search(expanded)
    if unset:
        raise ValueError(f"{value!r}: the environment variable {unset.group(0)} is not set")
    path = Path(expanded).expanduser()
    if not path.is_absolute():
        base = (info.context or {}).get("base") or Path.cwd()
        path = base / path
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{value!r}: {existing} is a file; expected a directory")
    try:  # the one honest test (permissions, read-only and pseudo file systems): try it
        os.rmdir(tempfile.mkdtemp(prefix=".ophyd-scmos-check-", dir=existing))
    except OSError as exc:
        raise ValueError(
            f"{value!r}: cannot create a directory in {existing}: {exc.strerror or exc}"
        ) from None
    return path


def _url(value: str) -> None:
    if not value.lower().startswith(("http://", "https://")):
        raise ValueError(value)


def _variable_name(value: str) -> None:
    if not value.isidentifier():
        raise ValueError(value)


def _driver_spec(value: str) -> None:
    kind, _, camera = value.partition(":")
    if (
        kind not in DRIVER_CLASSES
        or (kind == "simulated" and camera)
        or (kind == "micromanager" and not camera)
    ):
        raise ValueError(value)


def _camera_name(name: str) -> None:
    # names with a leading _ are the profile's and IPython's own (_, __, _i1, _roi, ...)
    shadows = name in PROFILE_NAMES or name in SESSION_NAMES or name.startswith("_")
    if not name.isidentifier() or keyword.iskeyword(name) or shadows:
        raise ValueError(name)


def _at_least_one_camera(cameras: dict[str, CameraTable]) -> dict[str, CameraTable]:
    if not cameras:
        raise ValueError("name at least one camera: [cameras.cam]")
    return cameras


METADATA_VALUES = "a string, number, boolean, or an array or table of them"


#: start document keys the RunEngine sets for each run (`scan_id`: RE.md's count of runs)
RUN_OWNED = ("uid", "time", "scan_id")


def _metadata(value: Any, key: str = "") -> Any:
    """Values RE.md can store and documents can carry: no TOML dates or times, no number a
    document cannot (inf, nan, beyond 64 bits), no key the RunEngine sets for each run."""
    if isinstance(value, Mapping):
        for name, item in value.items():
            if not key and name in RUN_OWNED:
                raise PydanticCustomError(
                    "run_owned",
                    "{key} is set by the RunEngine for each run (its start document's own); "
                    "remove it from [metadata]",
                    {"key": name},
                )
            _metadata(item, f"{key}.{name}" if key else name)
    elif isinstance(value, list):
        for item in value:
            _metadata(item, key)
    elif isinstance(value, (datetime.date, datetime.time)):  # a datetime is a date
        raise _refuse(value, f"{METADATA_VALUES}: quote a date or time to keep it as text", key)
    elif isinstance(value, float) and not math.isfinite(value):
        raise _refuse(value, f"{METADATA_VALUES}, finite (documents carry no inf or nan)", key)
    elif isinstance(value, int) and not -(2**63) <= value < 2**64:
        raise _refuse(value, f"{METADATA_VALUES}, an integer within 64 bits", key)
    elif not isinstance(value, (str, int, float, bool)):
        raise _refuse(value, METADATA_VALUES, key)
    return value


Directory = Annotated[Path, PlainValidator(_directory)]
Template = Annotated[str, _expect("a file name template string"), AfterValidator(check_template)]
Url = Annotated[str, _expect("an http:// or https:// URL of a Tiled server", _url)]
VariableName = Annotated[str, _expect("the name of an environment variable", _variable_name)]
DriverSpec = Annotated[
    str,
    _expect(
        "a camera spec: 'simulated', 'micromanager:Library:Device', 'micromanager:<file>.cfg', "
        "'genicam[:<id or address>]' (`ophyd-scmos cameras` lists them)",
        _driver_spec,
    ),
]
CameraName = Annotated[
    str,
    _expect(
        "a Python name (letters, digits, _) that is not one the profile uses "
        f"({', '.join(sorted(PROFILE_NAMES))}) nor Python's or IPython's own (print, "
        "get_ipython, ...), and starts with a letter, since the camera becomes that name",
        _camera_name,
    ),
]
Plots = Annotated[bool | Literal["auto"], _expect('true, false or "auto"')]
# The pipeline's keys: TOML's type here, the value judged by `PipelineOptions`.
Compression = Annotated[
    str, _expect(f"one of: none, {', '.join(CODECS)}", _pipeline_option("compression"))
]
RingMB = Annotated[float, _expect("megabytes of shared memory, > 0", _pipeline_option("ring_mb"))]
RingFrames = Annotated[
    int, _expect("frames the ring holds, an integer >= 2", _pipeline_option("ring_frames"))
]
Overflow = Annotated[
    str,
    _expect(
        f"one of: {', '.join(OVERFLOW_POLICIES)} (block waits for the writer, drop discards "
        "frames and counts them)",
        _pipeline_option("overflow"),
    ),
]
WriteLimit = Annotated[
    float, _expect("MB/s the writer may use, > 0", _pipeline_option("write_limit_mb_s"))
]
# The settings' types; the camera's own limits (binnings, sensor size) when it opens.
TriggerModeName = Annotated[
    str, _expect(f"one of: {', '.join(m.value for m in TriggerMode)}", TriggerMode.coerce)
]
Count = Annotated[int, Field(ge=1), _expect("an integer >= 1")]
Pixel = Annotated[int, Field(strict=True, ge=0)]
Roi = Annotated[
    tuple[Pixel, Pixel, Pixel, Pixel],
    Field(strict=False),  # from TOML's array
    _expect("[x, y, width, height] in sensor pixels"),
]
RegionName = Annotated[
    str,
    _expect(
        "a region name: letters, digits and _, starting with a letter, not "
        + " or ".join(RESERVED),
        lambda name: check_region(name, (0, 0, 1, 1)),
    ),
]
#: a named region: in the frame the camera takes (after its ROI and binning)
Region = Annotated[
    tuple[Pixel, Pixel, Pixel, Pixel],
    Field(strict=False),
    _expect("[x, y, width, height] in frame pixels (after roi and binning)"),
]

StatNames = Annotated[
    tuple[str, ...],
    Field(strict=False),  # from TOML's array
    _expect(
        f"an array of statistics from: {', '.join(STATS)}",
        lambda names: check_names("statistics", names),
    ),
]
Exposure = Annotated[float, Field(gt=0, allow_inf_nan=False), _expect("seconds, > 0")]
Period = Annotated[
    float,
    Field(ge=0, allow_inf_nan=False),
    _expect("seconds between frames, >= 0 (0: as fast as exposure)"),
]


# -- the file, table by table -----------------------------------------------------------------
class _Table(BaseModel):
    """One TOML table: its keys, TOML's types, nothing else."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        """An unknown key names what is allowed here, with the likely one it meant."""
        if not isinstance(data, Mapping):
            return data  # pydantic says it is not a table
        allowed = list(cls.model_fields)
        for name in data:
            if name in allowed:
                continue
            message = f"unknown key; allowed here: {', '.join(allowed)}"
            if _is_secret(name) and "api_key_env" in allowed:
                variable = data.get("api_key_env", cls.model_fields["api_key_env"].default)
                message += (
                    "; secrets are never read from this file: remove it and put the key in the "
                    f"environment variable ${variable} (api_key_env holds that variable's "
                    "name, never the key)"
                )
            else:
                close = difflib.get_close_matches(name, allowed, n=1)
                message += f"; did you mean {close[0]}?" if close else ""
            raise PydanticCustomError("unknown_key", "{message}", {"key": name, "message": message})
        return data


class DataTable(_Table):
    """[data]: where every camera's files go unless its own table says otherwise."""

    dir: Directory | None = None
    file_template: Template | None = None


class CatalogConfig(_Table):
    """[catalog]: where runs are catalogued, an embedded catalog directory or a Tiled server.

    None for both: `open_catalog()`'s own choice (``$OPHYD_SCMOS_CATALOG``, else the
    embedded catalog in the user's data directory).
    """

    path: Directory | None = None
    url: Url | None = None
    api_key_env: VariableName = "TILED_API_KEY"

    @model_validator(mode="after")
    def _one_place(self) -> CatalogConfig:
        if self.path is not None and self.url is not None:
            raise ValueError("give path (embedded) or url (server), not both")
        return self

    @property
    def location(self) -> str | None:
        return self.url or (str(self.path) if self.path else None)

    def describe(self) -> str:
        """Which catalog `open` opens and why, for people."""
        from ophyd_scmos.catalog.embedded import CATALOG_ENV
        from ophyd_scmos.paths import default_catalog_dir

        if self.location:
            return self.url or f"embedded, {self.path}"
        named = os.environ.get(CATALOG_ENV)
        if named:
            return f"{named} (from ${CATALOG_ENV})"
        return f"embedded, {default_catalog_dir()}"

    def open(self) -> Container:
        """The catalog, with the server's key from the environment variable named here; one
        that cannot be reached or opened raises `CatalogUnavailable`, saying where."""
        from ophyd_scmos.catalog import open_catalog, reaching

        with reaching(self.location):
            return open_catalog(self.location, api_key=os.environ.get(self.api_key_env) or None)


RING_SIZES = ("ring_mb", "ring_frames")


class PipelineTable(_Table):
    """[pipeline], and a camera's own pipeline keys: TOML types here, values judged by
    `PipelineOptions`. A table giving one ring size replaces both sizes of the defaults."""

    compression: Compression | None = None
    ring_mb: RingMB | None = None
    ring_frames: RingFrames | None = None
    overflow: Overflow | None = None
    write_limit_mb_s: WriteLimit | None = None

    @model_validator(mode="after")
    def _one_ring_size(self) -> PipelineTable:
        if self.ring_mb is not None and self.ring_frames is not None:
            raise _refuse(self.ring_frames, "ring_mb or ring_frames, not both", "ring_frames")
        return self

    def over(self, defaults: Mapping[str, Any]) -> dict[str, Any]:
        """The pipeline keys this table gives, over `defaults`."""
        given = {
            name: getattr(self, name)
            for name in PipelineTable.model_fields
            if name in self.model_fields_set
        }
        if given.keys() & set(RING_SIZES):
            defaults = {k: v for k, v in defaults.items() if k not in RING_SIZES}
        return {**defaults, **given}


class SessionTable(_Table):
    """[session]: the IPython session's RunEngine metadata and plots."""

    metadata_dir: Directory | None = None
    plots: Plots = "auto"


class _CameraDevice(_Table):
    """A camera's driver and files (first in a camera table, as in the example file)."""

    driver: DriverSpec = "simulated"
    options: dict[str, Any] = {}  #: checked against the driver's keywords when it opens
    write_dir: Directory | None = None
    file_template: Template | None = None
    #: named regions of interest, [x, y, width, height] in frame pixels (checked when it opens)
    rois: dict[RegionName, Region] = {}
    #: the statistics that are readings in step scans, and those of them hinted (plotted)
    stats_read: StatNames = READ
    stats_hinted: StatNames | None = None


class CameraSettingsTable(_Table):
    """A camera's settings, in the order they are applied (trigger mode and binning before the
    ROI). The types here; the camera's own limits (binnings, sensor size) when it opens."""

    trigger_mode: TriggerModeName | None = None
    bit_depth: Count | None = None
    binning: Count | None = None
    roi: Roi | None = None
    exposure_time: Exposure | None = None
    acquire_period: Period | None = None
    frames_per_point: Count | None = None
    save_images: StrictBool | None = None


SETTINGS = tuple(CameraSettingsTable.model_fields)


class CameraTable(CameraSettingsTable, PipelineTable, _CameraDevice):
    """[cameras.NAME]: driver, options, files, pipeline keys over [pipeline], settings."""

    def settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SETTINGS if name in self.model_fields_set}


class LabFile(_Table):
    """The whole file."""

    data: DataTable = DataTable()
    catalog: CatalogConfig = CatalogConfig()
    pipeline: PipelineTable = PipelineTable()
    session: SessionTable = SessionTable()
    metadata: Annotated[dict[str, Any], AfterValidator(_metadata)] = {}
    cameras: Annotated[dict[CameraName, CameraTable], AfterValidator(_at_least_one_camera)] = {
        "cam": CameraTable()
    }


# -- what the entry points use ----------------------------------------------------------------
@dataclass(frozen=True)
class CameraConfig:
    """One camera: its driver spec (as `driver_from_spec` takes it), the driver's keyword
    options, the device options, and the settings applied once it is open."""

    name: str
    driver: str = "simulated"
    options: Mapping[str, Any] = field(default_factory=dict)
    write_dir: Path | None = None
    file_template: str = DEFAULT_TEMPLATE
    pipeline: PipelineOptions = field(default_factory=PipelineOptions)
    settings: Mapping[str, Any] = field(default_factory=dict)
    rois: Mapping[str, tuple[int, int, int, int]] = field(default_factory=dict)
    stats_read: tuple[str, ...] = READ
    stats_hinted: tuple[str, ...] | None = None  #: None: the totals, where they are read
    path: Path | None = None  #: the file it came from, for messages

    # The pipeline's keys, as the file gives them (read-only; `pipeline` holds them all).
    compression = property(lambda self: self.pipeline.compression)
    ring_mb = property(lambda self: self.pipeline.ring_mb)
    ring_frames = property(lambda self: self.pipeline.ring_frames)
    overflow = property(lambda self: self.pipeline.overflow)
    write_limit_mb_s = property(lambda self: self.pipeline.write_limit_mb_s)

    def build(self) -> SCMOSCamera:
        """Open the camera and apply the settings; a refused one raises `ConfigError` naming
        its key with the driver's reason (the allowed values depend on the camera), and the
        camera is given back."""
        from ophyd_scmos.device import SCMOSCamera
        from ophyd_scmos.drivers import CameraError, MissingLibrary, driver_from_spec

        key = f"cameras.{self.name}"
        try:  # before the camera opens
            check_hinted(self.stats_hinted or (), self.stats_read)
        except ValueError as exc:
            raise ConfigError(str(exc), key=f"{key}.stats_hinted", path=self.path) from None
        options = self._driver_options(key)
        try:
            driver = driver_from_spec(self.driver, **options)
        except MissingLibrary as exc:
            raise ConfigError(str(exc), key=f"{key}.driver", path=self.path) from None
        except (TypeError, ValueError) as exc:  # the driver's own checks of its options
            raise ConfigError(str(exc), key=f"{key}.options", path=self.path) from None
        try:
            cam = SCMOSCamera(
                name=self.name,
                driver=driver,
                write_dir=self.write_dir,
                file_template=self.file_template,
                options=self.pipeline,
                stats_read=self.stats_read,
                stats_hinted=self.stats_hinted,
            )
        except (CameraError, OSError) as exc:
            driver.close()
            raise ConfigError(
                f"cannot open {self.driver!r}: {exc}", key=f"{key}.driver", path=self.path
            ) from None
        for name in SETTINGS:
            if name not in self.settings:
                continue
            try:
                getattr(cam, name).set(self.settings[name])
            except (ValueError, TypeError, RuntimeError) as exc:
                cam.destroy()
                raise ConfigError(
                    f"{self.settings[name]!r} refused by {driver.model}: {exc}",
                    key=f"{key}.{name}",
                    path=self.path,
                ) from None
        for region, value in self.rois.items():  # in frame pixels: after ROI and binning
            try:
                cam.rois[region] = value
            except ValueError as exc:
                cam.destroy()
                raise ConfigError(str(exc), key=f"{key}.rois.{region}", path=self.path) from None
        return cam

    def _driver_options(self, key: str) -> dict[str, Any]:
        """The options, checked against the keywords of the driver's class (its signature
        is their schema), so a wrong one names its own key instead of failing deep inside."""
        cls, schema = _driver_schema(self.driver.partition(":")[0])
        try:
            return schema.model_validate(self.options).model_dump(exclude_unset=True)
        except ValidationError as exc:
            error = exc.errors()[0]
            name = str(error["loc"][0])
            if error["type"] == "extra_forbidden":
                message = f"unknown option {name!r}; {cls.__name__} takes: "
                raise ConfigError(
                    message + ", ".join(schema.model_fields), key=f"{key}.options", path=self.path
                ) from None
            expected = inspect.signature(cls).parameters[name].annotation
            raise ConfigError(
                f"{self.options[name]!r} is not allowed; expected {expected}",
                key=f"{key}.options.{name}",
                path=self.path,
            ) from None


@functools.cache
def _driver_schema(kind: str) -> tuple[type, type[BaseModel]]:
    """The driver class of a spec's kind, and a model of its constructor's keywords."""
    import ophyd_scmos.drivers

    cls = getattr(ophyd_scmos.drivers, DRIVER_CLASSES[kind])
    hints = typing.get_type_hints(cls.__init__)
    keywords = [
        p
        for p in inspect.signature(cls).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    fields: dict[str, Any] = {p.name: (hints.get(p.name, Any), p.default) for p in keywords}
    schema = create_model(f"{cls.__name__}Options", __config__=ConfigDict(extra="forbid"), **fields)
    return cls, schema


@dataclass(frozen=True)
class LabConfig:
    """The whole lab configuration, checked. `path` is None where defaults are in force."""

    path: Path | None
    cameras: tuple[CameraConfig, ...]
    catalog: CatalogConfig
    metadata_dir: Path
    plots: bool | None  #: None: plot where a display is available
    metadata: Mapping[str, Any]

    @property
    def source(self) -> str:
        if self.path:
            return str(self.path)
        return f"defaults (no configuration file; it would be {default_config_path()})"

    def camera(self, name: str | None = None) -> CameraConfig:
        """The named camera, or the first one."""
        if name is None:
            return self.cameras[0]
        for camera in self.cameras:
            if camera.name == name:
                return camera
        known = ", ".join(c.name for c in self.cameras)
        raise ConfigError(f"no camera named {name!r}; configured: {known}", path=self.path)


def config_path() -> tuple[Path, bool]:
    """The file to read and whether it must exist (it must, when the environment names it)."""
    named = os.environ.get(CONFIG_ENV)
    if named:
        return Path(named).expanduser(), True
    return default_config_path(), False


def load_config(path: str | os.PathLike[str] | None = None) -> LabConfig:
    """Read and check the lab configuration: `path`, else `config_path()`'s file, else defaults.

    Raises `ConfigError` for a missing named file, a file that is not TOML text, an unknown
    key or a wrong value.
    """
    if path is not None:
        source, required = Path(path).expanduser(), True
    else:
        source, required = config_path()
    source = source.absolute()
    if not source.exists():
        if required:
            via = "" if path is not None else f" (named by ${CONFIG_ENV})"
            raise ConfigError(f"file not found{via}", path=source)
        return parse_config({}, None)
    try:
        data = tomllib.loads(source.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not valid TOML: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start})",
            path=source,
        ) from None
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise ConfigError(f"not valid TOML: {exc or 'nested too deeply'}", path=source) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=source) from None
    return parse_config(data, source)


def parse_config(data: Mapping[str, Any], path: Path | None = None) -> LabConfig:
    """Check a parsed configuration (a TOML document as a dict); `path` is for messages and
    the folder relative paths start from."""
    try:
        lab = LabFile.model_validate(data, context={"base": path.parent if path else None})
    except ValidationError as exc:
        raise _config_error(exc, path) from None
    defaults = lab.pipeline.over({})
    cameras = tuple(
        CameraConfig(
            name=name,
            driver=camera.driver,
            options=camera.options,
            write_dir=camera.write_dir or lab.data.dir,
            file_template=camera.file_template or lab.data.file_template or DEFAULT_TEMPLATE,
            pipeline=PipelineOptions(**camera.over(defaults)),
            settings=camera.settings(),
            rois=camera.rois,
            stats_read=camera.stats_read,
            stats_hinted=camera.stats_hinted,
            path=path,
        )
        for name, camera in lab.cameras.items()
    )
    return LabConfig(
        path=path,
        cameras=cameras,
        catalog=lab.catalog,
        metadata_dir=lab.session.metadata_dir or default_metadata_dir(),
        plots=None if lab.session.plots == "auto" else lab.session.plots,
        metadata=lab.metadata,
    )


def _config_error(exc: ValidationError, path: Path | None) -> ConfigError:
    """pydantic's first error as one line: its location as the dotted key, the message our
    validators wrote (or, for a value that is not a table, what is expected)."""
    error = exc.errors()[0]
    context = error.get("ctx", {})
    parts = [str(part) for part in error["loc"] if part != "[key]"]  # a table's key itself
    if "key" in context:  # a key below the one validated (an unknown key, a nested value)
        parts.append(context["key"])
    key = ".".join(parts)
    if error["type"] == "value_error":
        message = str(context["error"])
    elif error["type"] in ("model_type", "dict_type"):
        message = f"{error['input']!r} is not allowed; expected a table ([{key}])"
    else:
        message = error["msg"]
    return ConfigError(message, key=key or None, path=path)
