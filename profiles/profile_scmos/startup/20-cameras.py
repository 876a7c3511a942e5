"""The cameras of the lab configuration, each under its own name (`cam` by default), and all
of them in `cameras`. A camera that refuses a configured setting ends the session here,
before the catalog is opened."""

import atexit
import sys

from ophyd import Kind

from ophyd_scmos.config import ConfigError

cameras = {}
for _camera in lab.cameras:  # noqa: F821 - from 00-config.py
    try:
        _cam = cameras[_camera.name] = _camera.build()
    except ConfigError as _error:
        print(f"ophyd-scmos profile: {_error}", file=sys.stderr)
        raise SystemExit(2) from None
    # Given back at exit (a vendor SDK may hold a camera until its handle is closed). The hook
    # holds the camera itself: IPython empties this namespace before exit hooks run.
    atexit.register(_cam.destroy)
    # The table of each event shows the camera's own frame number: a gap shows at once.
    _cam.frame_number.kind = Kind.hinted
globals().update(cameras)
