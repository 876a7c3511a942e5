"""A sample to align, where a camera is the simulated one: `motor_x` and `motor_y` (ophyd.sim
SynAxis; one motor unit moves the sample's image 10 sensor pixels) carry a small sample
through a beam on each simulated camera's axis, the middle of its ROI. The sample is hidden at
motor_x = 1.2, motor_y = -0.3: out of the beam where the motors start, so the frames are the
scene's alone until it is found.

    RE(bp.scan([cam], motor_x, -2, 2, 41))                      # a peak near motor_x = 1.2
    RE(bps.mv(motor_x, bec.peaks["cen"]["cam_stats_total"]))    # then the same with motor_y

(`bec.peaks` is filled where plots are on; without a display, bluesky's `PeakStats` finds
the peak: docs/align.md, which also says how a lab puts its own motors here.)"""

from ophyd.sim import SynAxis as _SynAxis

from ophyd_scmos.drivers import ROI as _ROI
from ophyd_scmos.drivers import SimulatedSCMOS as _SimulatedSCMOS
from ophyd_scmos.drivers import sample_on_stage as _sample_on_stage

_SAMPLE_AT = (1.2, -0.3)  # motor units: where the motors put the sample in the beam

_simulated = [n for n, c in cameras.items() if isinstance(c.driver, _SimulatedSCMOS)]  # noqa: F821
if _simulated:
    motor_x = _SynAxis(name="motor_x")
    motor_y = _SynAxis(name="motor_y")
    for _name in _simulated:
        _driver = cameras[_name].driver  # noqa: F821 - from 20-cameras.py
        _roi = _driver.settings.roi or _ROI.full(_driver.sensor_shape)
        _driver.spot = _sample_on_stage(
            motor_x,
            motor_y,
            axis=(_roi.x + (_roi.width - 1) / 2, _roi.y + (_roi.height - 1) / 2),
            aligned_at=_SAMPLE_AT,
        )
