"""ophyd-scmos: drive a scientific CMOS camera from Bluesky and keep every frame.

Frames go from the camera into a shared-memory ring, from there to a writer process that
appends them to one HDF5 file per run; the run's documents point at that file, so any
catalog (embedded Tiled, a Tiled server, databroker) replays the images.
"""

from ophyd_scmos.device import SCMOSCamera
from ophyd_scmos.drivers import ROI, CameraDriver, CameraSettings, SimulatedSCMOS, TriggerMode
from ophyd_scmos.pipeline import FrameStream, StreamError

__all__ = [
    "ROI",
    "CameraDriver",
    "CameraSettings",
    "FrameStream",
    "SCMOSCamera",
    "SimulatedSCMOS",
    "StreamError",
    "TriggerMode",
    "open_catalog",
]


def __getattr__(name: str):
    # The catalog pulls in Tiled's server stack: import it only when asked for.
    if name == "open_catalog":
        from ophyd_scmos.catalog import open_catalog

        return open_catalog
    raise AttributeError(name)
