"""The RunEngine: metadata that persists between sessions (RE.md, and so the scan ids),
a table of each event's scalars, and progress bars while it waits for frames."""

import os
import sys

from bluesky.callbacks.best_effort import BestEffortCallback

from ophyd_scmos.session import make_run_engine

RE = make_run_engine(lab, progress=True)  # noqa: F821 - from 00-config.py

bec = BestEffortCallback()
_plots = lab.plots  # noqa: F821
if _plots is None:  # "auto": plot where there is a screen to plot on
    _plots = sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
if _plots:
    try:
        get_ipython().run_line_magic("matplotlib", "")  # noqa: F821 - a GUI event loop
    except Exception as _error:  # no GUI toolkit installed: the table still works
        print(f"no plots ({_error}); the table of each event still prints", file=sys.stderr)
        _plots = False
if not _plots:
    bec.disable_plots()
RE.subscribe(bec)
