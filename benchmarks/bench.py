"""The throughput harness: `python benchmarks/bench.py [options]` is `ophyd-scmos bench`.

See `ophyd_scmos/pipeline/bench.py` for what is measured and how; `--help` for the options.
"""

import sys

from ophyd_scmos.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
