"""`python -m ophyd_scmos.live ANNOUNCEMENT --host HOST --port PORT [--own-directory]`: a
camera's live view server (see `ophyd_scmos.live.server`); the camera starts it."""

import sys

from ophyd_scmos.live.server import main

sys.exit(main())
