"""Import the kernels and the test helpers without installing the project: the lent GPU
machine has torch and Triton only."""

from __future__ import annotations

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_kernels() -> None:
    """Make ``kernels/`` importable as ``hogwild_kernels``, and ``tests/`` (for ``paged``)
    and the project root (for ``vllm_hogwild.layouts``, pure Python) importable."""
    if "hogwild_kernels" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "hogwild_kernels", os.path.join(ROOT, "kernels", "__init__.py"),
            submodule_search_locations=[os.path.join(ROOT, "kernels")],
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["hogwild_kernels"] = module
        spec.loader.exec_module(module)
    for path in (ROOT, os.path.join(ROOT, "tests")):
        if path not in sys.path:
            sys.path.insert(0, path)
