"""Import the kernels without installing the project: the lent GPU machine has torch and Triton
only. Run from the repository's root as a module (``python -m benchmarks.gpu.kernel_bench``),
the root is on the path, so the test helpers (``tests.helpers.paged``) and the pure layouts
(``vllm_hogwild.layouts``) import as they are; only ``kernels/`` needs its installed name."""

from __future__ import annotations

import importlib.util
import os
import sys

from benchmarks.common.paths import ROOT


def load_kernels() -> None:
    """Make ``kernels/`` importable as ``hogwild_kernels`` (setup.py's name for it)."""
    if "hogwild_kernels" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "hogwild_kernels", os.path.join(ROOT, "kernels", "__init__.py"),
            submodule_search_locations=[os.path.join(ROOT, "kernels")],
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["hogwild_kernels"] = module
        spec.loader.exec_module(module)
