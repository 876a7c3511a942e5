"""The RunEngine: metadata that persists between sessions (RE.md, and so the scan ids),
a table of each event's scalars, and progress bars while it waits for frames.

Without plots, the BestEffortCallback (which imports matplotlib: about a second) loads on a
thread from the first prompt on; until then `bec` stands in for it (a use waits, so does the
first run), then it is the callback itself. With plots, matplotlib's GUI loop is set up here."""

import os
import sys

from ophyd_scmos.session import Background, make_run_engine

RE = make_run_engine(lab, progress=True)  # noqa: F821 - from 00-config.py

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


def _best_effort_callback(plots=_plots):
    from bluesky.callbacks.best_effort import BestEffortCallback

    callback = BestEffortCallback()
    if not plots:
        callback.disable_plots()
    return callback


if _plots:
    bec = _best_effort_callback()
else:
    bec = Background(_best_effort_callback, "no table of events: the BestEffortCallback failed")
    bec.start_at_prompt(get_ipython(), "bec")  # noqa: F821
RE.subscribe(bec)
