"""Test setup: the Triton interpreter must be chosen before triton is imported."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from interpreter import fix_bfloat16_dot  # noqa: E402

if os.environ["TRITON_INTERPRET"] == "1":
    fix_bfloat16_dot()
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_PLUGINS", "hogwild")
