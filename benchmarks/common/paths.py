"""Where the project's folders are: benchmarks run as modules (``python -m benchmarks.<role>.<name>``
from the repository's root), and write their results and read their data by these paths."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
RESULTS = os.path.join(BENCHMARKS, "results")
DATA = os.path.join(BENCHMARKS, "data")


def command() -> str:
    """The command that runs this process, as a user types it from the repository's root
    (``python -m benchmarks.<role>.<name> ARGS``), for the results' record."""
    import sys

    script = os.path.abspath(sys.argv[0])
    if script.startswith(ROOT + os.sep) and script.endswith(".py"):
        module = os.path.relpath(script, ROOT)[:-3].replace(os.sep, ".")
        return " ".join(["python", "-m", module] + sys.argv[1:])
    return " ".join(["python"] + sys.argv)
