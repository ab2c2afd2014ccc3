"""Test setup: the Triton interpreter must be chosen before triton is imported."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from tests.helpers.interpreter import fix_bfloat16_dot  # noqa: E402

if os.environ["TRITON_INTERPRET"] == "1":
    fix_bfloat16_dot()
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_PLUGINS", "hogwild")


def pytest_addoption(parser):
    parser.addoption("--real-models", action="store_true",
                     help="also run the tests on real checkpoints of the catalogue (tests/engine/test_real_models.py; "
                          "each fetched first with `vllm-hogwild models fetch NAME`; ~15 min and up to 20 GiB)")


def pytest_collection_modifyitems(config, items):
    """Real checkpoints only when asked for: whether a 1 GB model happens to sit in this machine's
    cache must not decide what the suite runs, how long it takes or how much memory it needs (a
    Qwen 1.5B engine and its float32 oracle beside the suite's cached tiny engines exhausted 24 GiB)."""
    import pytest

    if config.getoption("--real-models"):
        return
    skip = pytest.mark.skip(reason="real checkpoints: run with --real-models (after `vllm-hogwild models fetch NAME`)")
    for item in items:
        if item.get_closest_marker("real_model"):
            item.add_marker(skip)
