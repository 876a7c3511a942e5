"""The lab configuration: which cameras, where files and runs go, in one TOML file.

A lab describes its setup once and every entry point follows it: the IPython profile
(``ophyd-scmos ipython``), ``ophyd-scmos acquire`` and ``ophyd-scmos config check``. The file
is found at ``$OPHYD_SCMOS_CONFIG``, else at `default_config_path()`; with neither there the
defaults hold (one simulated camera named ``cam``, the embedded catalog), so a new machine
starts without writing any file. ``profiles/lab.toml`` documents every key.

Everything is checked at load, so a wrong value stops the session before a camera opens,
with the key, the value and what is allowed (`ConfigError`). A server's API key is never
read from the file: the file names the environment variable that holds it.
"""

from __future__ import annotations

import difflib
import keyword
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import platformdirs

from ophyd_scmos.drivers.base import TriggerMode
from ophyd_scmos.files import DEFAULT_TEMPLATE, check_template
from ophyd_scmos.pipeline.compression import CODECS, check_compression
from ophyd_scmos.pipeline.ring import check_ring_size
from ophyd_scmos.pipeline.stream import OVERFLOW_POLICIES

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
]

CONFIG_ENV = "OPHYD_SCMOS_CONFIG"  #: the lab configuration file, where it is not the default
DRIVER_KINDS = ("simulated", "micromanager", "genicam")
DRIVER_FORMS = (
    "'simulated', 'micromanager:Library:Device', 'micromanager:<file>.cfg', "
    "'genicam[:<id or address>]'"
)
#: Names the IPython profile defines: a camera of one of these names would hide it.
PROFILE_NAMES = frozenset(
    {"RE", "bec", "bp", "bps", "bpp", "catalog", "cameras", "count", "darks", "lab", "movie"}
)
#: Camera settings, in the order they are applied (trigger mode and binning before the ROI).
SETTINGS = (
    "trigger_mode",
    "bit_depth",
    "binning",
    "roi",
    "exposure_time",
    "acquire_period",
    "frames_per_point",
)
PIPELINE_KEYS = ("compression", "ring_mb", "ring_frames", "overflow", "write_limit_mb_s")
CAMERA_KEYS = ("driver", "options", "write_dir", "file_template", *PIPELINE_KEYS, *SETTINGS)
SECTIONS = ("data", "catalog", "pipeline", "session", "metadata", "cameras")


class ConfigError(ValueError):
    """A wrong lab configuration: names the file, the key, the value and what is allowed."""

    def __init__(self, message: str, *, key: str | None = None, path: Path | None = None):
        self.key, self.path = key, path
        where = f"lab configuration {path}" if path else "lab configuration"
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


@dataclass(frozen=True)
class CatalogConfig:
    """Where runs are catalogued: an embedded catalog directory or a Tiled server URL.

    None for both: `open_catalog()`'s own choice (``$OPHYD_SCMOS_CATALOG``, else the
    embedded catalog in the user's data directory).
    """

    path: Path | None = None
    url: str | None = None
    api_key_env: str = "TILED_API_KEY"

    @property
    def location(self) -> str | None:
        return self.url or (str(self.path) if self.path else None)

    def describe(self) -> str:
        """Which catalog `open` opens and why, for people."""
        from ophyd_scmos.catalog import CATALOG_ENV, default_catalog_dir

        if self.location:
            return self.url or f"embedded, {self.path}"
        named = os.environ.get(CATALOG_ENV)
        if named:
            return f"{named} (from ${CATALOG_ENV})"
        return f"embedded, {default_catalog_dir()}"

    def open(self) -> Container:
        """The catalog, with the server's key from the environment variable named here."""
        from ophyd_scmos.catalog import open_catalog

        return open_catalog(self.location, api_key=os.environ.get(self.api_key_env) or None)


@dataclass(frozen=True)
class CameraConfig:
    """One camera: its driver spec (as `driver_from_spec` takes it), the driver's keyword
    options, the device options, and the settings applied once it is open."""

    name: str
    driver: str = "simulated"
    options: Mapping[str, Any] = field(default_factory=dict)
    write_dir: Path | None = None
    file_template: str = DEFAULT_TEMPLATE
    compression: str | None = None
    ring_mb: float | None = 256
    ring_frames: int | None = None
    overflow: str = "block"
    write_limit_mb_s: float | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None  #: the file it came from, for messages

    def build(self) -> SCMOSCamera:
        """Open the camera and apply the settings; a refused one raises `ConfigError` naming
        its key with the driver's reason (the allowed values depend on the camera)."""
        from ophyd_scmos.device import SCMOSCamera
        from ophyd_scmos.drivers import CameraError, MissingLibrary, driver_from_spec

        key = f"cameras.{self.name}"
        try:
            driver = driver_from_spec(self.driver, **self.options)
        except MissingLibrary as exc:
            raise ConfigError(str(exc), key=f"{key}.driver", path=self.path) from None
        except (TypeError, ValueError) as exc:  # the spec's form was checked at load
            raise ConfigError(str(exc), key=f"{key}.options", path=self.path) from None
        try:
            cam = SCMOSCamera(
                name=self.name,
                driver=driver,
                write_dir=self.write_dir,
                file_template=self.file_template,
                ring_mb=self.ring_mb,
                ring_frames=self.ring_frames,
                overflow=self.overflow,
                compression=self.compression,
                write_limit_mb_s=self.write_limit_mb_s,
            )
        except (CameraError, OSError) as exc:
            raise ConfigError(
                f"cannot open {self.driver!r}: {exc}", key=f"{key}.driver", path=self.path
            ) from None
        for name in SETTINGS:
            if name not in self.settings:
                continue
            try:
                getattr(cam, name).set(self.settings[name])
            except (ValueError, TypeError, RuntimeError) as exc:
                driver.close()
                raise ConfigError(
                    f"{self.settings[name]!r} refused by {driver.model}: {exc}",
                    key=f"{key}.{name}",
                    path=self.path,
                ) from None
        return cam


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


def default_config_path() -> Path:
    """Where the lab configuration lives when ``$OPHYD_SCMOS_CONFIG`` is not set."""
    return Path(platformdirs.user_config_dir("ophyd-scmos")) / "lab.toml"


def default_metadata_dir() -> Path:
    """Where the RunEngine's metadata (``RE.md``, with the scan id) persists between sessions."""
    return Path(platformdirs.user_state_dir("ophyd-scmos")) / "runengine-metadata"


def config_path() -> tuple[Path, bool]:
    """The file to read and whether it must exist (it must, when the environment names it)."""
    named = os.environ.get(CONFIG_ENV)
    if named:
        return Path(named).expanduser(), True
    return default_config_path(), False


def load_config(path: str | os.PathLike[str] | None = None) -> LabConfig:
    """Read and check the lab configuration: `path`, else `config_path()`'s file, else defaults.

    Raises `ConfigError` for a missing named file, bad TOML, an unknown key or a wrong value.
    """
    if path is not None:
        source, required = Path(path).expanduser(), True
    else:
        source, required = config_path()
    if not source.exists():
        if required:
            via = "" if path is not None else f" (named by ${CONFIG_ENV})"
            raise ConfigError(f"file not found{via}", path=source)
        return parse_config({}, None)
    try:
        data = tomllib.loads(source.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=source) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=source) from None
    return parse_config(data, source.absolute())


def parse_config(data: Mapping[str, Any], path: Path | None = None) -> LabConfig:
    """Check a parsed configuration (a TOML document as a dict); `path` is for messages."""
    check = _Checker(path)
    check.keys("", data, SECTIONS)
    data_section = check.table("data", data.get("data", {}))
    check.keys("data", data_section, ("dir", "file_template"))
    write_dir = check.path("data.dir", data_section.get("dir"))
    template = check.template("data.file_template", data_section.get("file_template"))

    catalog = check.table("catalog", data.get("catalog", {}))
    check.keys("catalog", catalog, ("path", "url", "api_key_env"))
    if "path" in catalog and "url" in catalog:
        raise ConfigError(
            "give path (embedded) or url (server), not both", key="catalog", path=path
        )
    url = catalog.get("url")
    if url is not None and not (
        isinstance(url, str) and url.lower().startswith(("http://", "https://"))
    ):
        check.fail("catalog.url", url, "an http:// or https:// URL of a Tiled server")
    api_key_env = catalog.get("api_key_env", "TILED_API_KEY")
    if not (isinstance(api_key_env, str) and api_key_env.isidentifier()):
        check.fail("catalog.api_key_env", api_key_env, "the name of an environment variable")
    catalog_config = CatalogConfig(
        check.path("catalog.path", catalog.get("path")), url, api_key_env
    )

    pipeline = check.table("pipeline", data.get("pipeline", {}))
    check.keys("pipeline", pipeline, PIPELINE_KEYS)
    defaults = check.pipeline("pipeline", pipeline, {})

    session = check.table("session", data.get("session", {}))
    check.keys("session", session, ("metadata_dir", "plots"))
    plots = session.get("plots", "auto")
    if not (isinstance(plots, bool) or plots == "auto"):
        check.fail("session.plots", plots, 'true, false or "auto"')
    metadata_dir = check.path("session.metadata_dir", session.get("metadata_dir"))

    cameras_table = check.table("cameras", data.get("cameras", {"cam": {}}))
    if not cameras_table:
        raise ConfigError("name at least one camera: [cameras.cam]", key="cameras", path=path)
    cameras = []
    for name, camera in cameras_table.items():
        key = f"cameras.{name}"
        if not name.isidentifier() or keyword.iskeyword(name) or name in PROFILE_NAMES:
            check.fail(
                key,
                name,
                "a Python name (letters, digits, _) that is not one the profile uses "
                f"({', '.join(sorted(PROFILE_NAMES))}), since the camera becomes that name",
            )
        camera = check.table(key, camera)
        check.keys(key, camera, CAMERA_KEYS)
        cameras.append(
            CameraConfig(
                name=name,
                driver=check.driver(f"{key}.driver", camera.get("driver", "simulated")),
                options=check.table(f"{key}.options", camera.get("options", {})),
                write_dir=check.path(f"{key}.write_dir", camera.get("write_dir")) or write_dir,
                file_template=check.template(f"{key}.file_template", camera.get("file_template"))
                or template
                or DEFAULT_TEMPLATE,
                **check.pipeline(key, camera, defaults),
                settings=check.settings(key, camera),
                path=path,
            )
        )
    return LabConfig(
        path=path,
        cameras=tuple(cameras),
        catalog=catalog_config,
        metadata_dir=metadata_dir or default_metadata_dir(),
        plots=None if plots == "auto" else plots,
        metadata=check.metadata("metadata", check.table("metadata", data.get("metadata", {}))),
    )


class _Checker:
    """Checks of one file's values, each failing with the key and what is allowed."""

    def __init__(self, path: Path | None):
        self.file = path

    def fail(self, key: str, value: Any, allowed: str) -> NoReturn:
        raise ConfigError(f"{value!r} is not allowed; expected {allowed}", key=key, path=self.file)

    def keys(self, where: str, table: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
        for name in table:
            if name not in allowed:
                key = f"{where}.{name}" if where else name
                hint = ""
                if name in ("api_key", "key", "token", "password"):
                    hint = (
                        "; secrets are never read from this file: put the key in the "
                        "environment variable that catalog.api_key_env names (TILED_API_KEY "
                        "unless set)"
                    )
                close = difflib.get_close_matches(name, allowed, n=1)
                if close:
                    hint = f"; did you mean {close[0]}?{hint}"
                raise ConfigError(
                    f"unknown key; allowed here: {', '.join(allowed)}{hint}",
                    key=key,
                    path=self.file,
                )

    def table(self, key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            self.fail(key, value, f"a table ([{key}])")
        return dict(value)

    def path(self, key: str, value: Any) -> Path | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.fail(key, value, "a directory path as a string")
        resolved = Path(os.path.expandvars(value)).expanduser()
        if not resolved.is_absolute():  # relative to the file, not to wherever one starts
            base = self.file.parent if self.file else Path.cwd()
            resolved = base / resolved
        return resolved

    def template(self, key: str, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(key, value, "a file name template string")
        try:
            return check_template(value)
        except ValueError as exc:
            raise ConfigError(str(exc), key=key, path=self.file) from None

    def driver(self, key: str, value: Any) -> str:
        kind, _, camera = value.partition(":") if isinstance(value, str) else ("", "", "")
        if (
            kind not in DRIVER_KINDS
            or (kind == "simulated" and camera)
            or (kind == "micromanager" and not camera)
        ):
            self.fail(
                key, value, f"a camera spec: {DRIVER_FORMS} (`ophyd-scmos cameras` lists them)"
            )
        return value

    def metadata(self, key: str, value: Any) -> Any:
        """Values RE.md can store and documents can carry: no TOML dates or times."""
        if isinstance(value, Mapping):
            return {k: self.metadata(f"{key}.{k}", v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.metadata(key, v) for v in value]
        if not isinstance(value, (str, int, float, bool)):
            self.fail(key, value, "a string, number, boolean, or an array or table of them")
        return value

    def pipeline(
        self, where: str, table: Mapping[str, Any], defaults: Mapping[str, Any]
    ) -> dict[str, Any]:
        out = {
            "compression": None,
            "ring_mb": 256,
            "ring_frames": None,
            "overflow": "block",
            "write_limit_mb_s": None,
            **defaults,
        }
        if "compression" in table:
            value = table["compression"]
            try:
                out["compression"] = check_compression(value if isinstance(value, str) else "?")
            except ValueError:
                self.fail(f"{where}.compression", value, f"one of: none, {', '.join(CODECS)}")
        # One size, in megabytes or in frames: a table that gives one replaces both defaults.
        if "ring_mb" in table and "ring_frames" in table:
            self.fail(
                f"{where}.ring_frames", table["ring_frames"], "ring_mb or ring_frames, not both"
            )
        if "ring_mb" in table:
            value = table["ring_mb"]
            if not _number(value) or not 0 < value < math.inf:
                self.fail(f"{where}.ring_mb", value, "megabytes of shared memory, > 0")
            out["ring_mb"], out["ring_frames"] = float(value), None
        if "ring_frames" in table:
            value = table["ring_frames"]
            try:
                out["ring_mb"], out["ring_frames"] = check_ring_size(None, value)
            except ValueError:
                self.fail(f"{where}.ring_frames", value, "frames the ring holds, an integer >= 2")
        if "overflow" in table:
            value = table["overflow"]
            if value not in OVERFLOW_POLICIES:
                self.fail(
                    f"{where}.overflow",
                    value,
                    f"one of: {', '.join(OVERFLOW_POLICIES)} (block waits for the writer, drop "
                    "discards frames and counts them)",
                )
            out["overflow"] = value
        if "write_limit_mb_s" in table:
            value = table["write_limit_mb_s"]
            if not _number(value) or not 0 < value < math.inf:
                self.fail(f"{where}.write_limit_mb_s", value, "MB/s the writer may use, > 0")
            out["write_limit_mb_s"] = float(value)
        return out

    def settings(self, where: str, camera: Mapping[str, Any]) -> dict[str, Any]:
        """The types here; the camera's own limits (binnings, sensor size) when it opens."""
        out: dict[str, Any] = {}
        for name in SETTINGS:
            if name not in camera:
                continue
            value, key = camera[name], f"{where}.{name}"
            if name == "trigger_mode":
                allowed = [m.value for m in TriggerMode]
                if value not in allowed:
                    self.fail(key, value, f"one of: {', '.join(allowed)}")
            elif name == "exposure_time":
                if not _number(value) or not 0 < value < math.inf:
                    self.fail(key, value, "seconds, > 0")
            elif name == "acquire_period":
                if not _number(value) or not 0 <= value < math.inf:
                    self.fail(key, value, "seconds between frames, >= 0 (0: as fast as exposure)")
            elif name == "roi":
                if not (
                    isinstance(value, list)
                    and len(value) == 4
                    and all(_integer(v) and v >= 0 for v in value)
                ):
                    self.fail(key, value, "[x, y, width, height] in sensor pixels")
                value = tuple(value)
            elif name in ("binning", "bit_depth", "frames_per_point") and (
                not _integer(value) or value < 1
            ):
                self.fail(key, value, "an integer >= 1")
            out[name] = value
        return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
