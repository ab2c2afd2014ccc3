"""The pure core imports neither torch nor vLLM (nor transformers): the request flag, the
layouts, the steps, the planner, admission, the protocol and its texts, the bans, the packed
store's bookkeeping, the environment and what vLLM's CPU build does. A change that pulls one of
them into the core (an import of ``hogwild_kernels.table`` from the planner, say) fails here."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = ("params", "worker_requests", "layouts", "steps", "group", "planner", "admission", "prompts", "protocol",
        "bans", "repeats", "packing", "envs", "vllm_cpu", "support", "models", "window_reach")


@pytest.mark.parametrize("module", PURE)
def test_the_core_imports_no_torch_and_no_vllm(module):
    code = (f"import sys, vllm_hogwild.{module}\n"
            "print(' '.join(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "", f"vllm_hogwild.{module} imports {run.stdout.strip()}"
