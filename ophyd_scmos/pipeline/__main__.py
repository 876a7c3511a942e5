"""Entry point of the writer process: ``python -m ophyd_scmos.pipeline``."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys

from ophyd_scmos.pipeline.protocol import State
from ophyd_scmos.pipeline.writer import WriterLoop, send


def describe_error(exc: BaseException, path: str) -> str:
    """Say what failed; the acquiring process adds how many frames the file holds."""
    code, text = getattr(exc, "errno", None), str(exc)
    if code == errno.EFBIG or "File too large" in text or "File size limit" in text:
        return f"file-size limit reached writing {path}: {exc}"
    if code == errno.ENOSPC or "No space left" in text:
        return f"disk full writing {path}: {exc}"
    return f"{type(exc).__name__} writing {path}: {exc}"


def main() -> int:
    # Ctrl-C in a terminal reaches the whole process group: the acquiring process decides
    # when writing stops, so this process must not die of it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A file-size limit must end in a clear error (EFBIG), not a silent death by SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    status = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt status
    loop = WriterLoop(status)
    try:
        loop.run(sys.stdin.fileno())
        return 0
    except BaseException as exc:  # report everything, then exit nonzero
        file, written = loop.file, 0
        message = describe_error(exc, file.path if file else "the run's file")
        if file is not None:  # keep what made it, without raising again
            file.reserve.release()  # the room held for closing it
            with contextlib.suppress(Exception):  # the statistics of every frame written
                file.store_stats(force=True)
            with contextlib.suppress(Exception):
                file.flush()
            written = file.flushed
            with contextlib.suppress(Exception):
                file.behind.close()  # its thread lets go of the file; `exc` is the error told
            with contextlib.suppress(Exception):
                file.file.close()  # a close that returns has written the metadata
                written = file.written
                file.record_outcome(complete=False, error=message)
        send(status, {"state": State.ERROR.value, "written": written, "error": message})
        print(message, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
