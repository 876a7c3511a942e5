"""ophyd-scmos: drive a scientific CMOS camera from Bluesky and keep every frame.

Frames go from the camera into a shared-memory ring, from there to a writer process that
appends them to one HDF5 file per run; the run's documents point at that file, so any
catalog (embedded Tiled, a Tiled server, databroker) replays the images.
"""

import importlib

#: public name -> module that defines it. Imported on first use: the writer process (and the
#: CLI) start in a fraction of the time when they do not load ophyd, bluesky or Tiled.
_EXPORTS = {
    "ROI": "ophyd_scmos.drivers",
    "CameraDriver": "ophyd_scmos.drivers",
    "CameraSettings": "ophyd_scmos.drivers",
    "FrameStream": "ophyd_scmos.pipeline",
    "SCMOSCamera": "ophyd_scmos.device",
    "SimulatedSCMOS": "ophyd_scmos.drivers",
    "Spot": "ophyd_scmos.drivers",
    "StreamError": "ophyd_scmos.pipeline",
    "TriggerMode": "ophyd_scmos.drivers",
    "open_catalog": "ophyd_scmos.catalog",
    "CatalogWriter": "ophyd_scmos.catalog.writing",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ophyd_scmos' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
