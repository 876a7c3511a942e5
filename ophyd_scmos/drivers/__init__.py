"""Camera drivers: the `CameraDriver` contract and its implementations."""

from .base import ROI, CameraDriver, CameraError, CameraSettings, FrameInfo, TriggerMode
from .simulated import SimulatedSCMOS

__all__ = [
    "CameraDriver",
    "CameraError",
    "CameraSettings",
    "FrameInfo",
    "ROI",
    "SimulatedSCMOS",
    "TriggerMode",
]
