"""What the pipeline's tests share: a small simulated camera."""

from __future__ import annotations

import pytest

from ophyd_scmos.drivers import CameraSettings, SimulatedSCMOS


@pytest.fixture
def camera() -> SimulatedSCMOS:
    """48x80, 0.5 ms exposures. It buffers every frame a test takes, so a loaded machine
    slows a test but never makes the camera miss a frame: the counts are exact."""
    cam = SimulatedSCMOS(shape=(48, 80), seed=3, camera_buffer_frames=1000)
    cam.open()
    cam.configure(CameraSettings(exposure_time=0.0005))
    return cam
