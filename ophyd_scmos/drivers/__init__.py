"""Camera drivers: the `CameraDriver` contract and its implementations.

`DriverBase` does the work every driver shares (settings checked against the camera's
`CameraLimits`, applied all or nothing; start, stop and close in order): see docs/drivers.md.
`MicroManagerCamera` and `GenICamCamera` are imported on first use, so this package imports
without their SDKs; making one without its SDK raises `MissingLibrary` saying what to install.
"""

from typing import Any

from ._common import DriverBase, MissingLibrary
from .base import (
    ROI,
    CameraDriver,
    CameraError,
    CameraLimits,
    CameraSettings,
    FrameInfo,
    TriggerMode,
)
from .simulated import SimulatedSCMOS, Spot, sample_on_stage

__all__ = [
    "CameraDriver",
    "CameraError",
    "CameraLimits",
    "CameraSettings",
    "DriverBase",
    "FrameInfo",
    "GenICamCamera",
    "MicroManagerCamera",
    "MissingLibrary",
    "ROI",
    "SimulatedSCMOS",
    "Spot",
    "TriggerMode",
    "driver_from_spec",
    "sample_on_stage",
]

_OPTIONAL = {"MicroManagerCamera": ".micromanager", "GenICamCamera": ".genicam"}


def __getattr__(name: str) -> Any:
    if name in _OPTIONAL:
        import importlib

        return getattr(importlib.import_module(_OPTIONAL[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def driver_from_spec(spec: str, **kwargs: Any) -> CameraDriver:
    """A driver (not yet opened) from one string, so a camera can be named in an environment
    variable or on a command line: ``simulated``, ``micromanager:Library:Device``,
    ``micromanager:/path/to/config.cfg``, ``genicam:<id or IP address>``, ``genicam`` (the
    first camera found). `kwargs` go to the driver's constructor."""
    kind, _, camera = spec.partition(":")
    if kind == "simulated" and not camera:
        return SimulatedSCMOS(**kwargs)
    if kind == "micromanager" and camera:
        from .micromanager import MicroManagerCamera

        if camera.endswith(".cfg"):
            return MicroManagerCamera(config=camera, **kwargs)
        return MicroManagerCamera(camera, **kwargs)
    if kind == "genicam":
        from .genicam import GenICamCamera

        return GenICamCamera(camera or None, **kwargs)
    raise ValueError(
        f"camera spec {spec!r} is not 'simulated', 'micromanager:Library:Device', "
        "'micromanager:<file>.cfg' or 'genicam[:<id or address>]'"
    )
