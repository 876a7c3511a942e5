"""IPython settings of the ophyd-scmos profile.

The profile directory may be a read-only or shared checkout, so IPython's history goes to
the user's own state directory instead of into it.
"""

from ophyd_scmos.paths import state_dir

c = get_config()  # noqa: F821 - IPython provides it to this file

_state = state_dir()
_state.mkdir(parents=True, exist_ok=True)
c.HistoryManager.hist_file = str(_state / "ipython_history.sqlite")
c.TerminalIPythonApp.display_banner = False  # 99-ready.py says what this session holds
