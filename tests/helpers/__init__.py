"""What the tests share: tiny models and engines, the recompute oracle and its runs, paged caches,
servers, bad input. Imported as ``tests.helpers.<module>`` (pytest runs from the repository's
root, ``pytest.ini``'s ``pythonpath``); ``python_at_root`` runs a child Python that imports them
the same way."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def python_at_root(args: Sequence[str], env: dict | None = None, **kwargs: Any) -> subprocess.CompletedProcess:
    """``python ARGS`` in a child process that imports ``tests.*`` and ``benchmarks.*`` as the
    suite does: run from the repository's root, with the root on its path."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.run([sys.executable, *args], env=env, cwd=ROOT, **kwargs)
