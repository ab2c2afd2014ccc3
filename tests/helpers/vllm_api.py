"""The vLLM functions the tests call directly, found where each supported release keeps them
(vLLM 0.32 and 0.34 moved them): one place, not a version check in each test."""

from __future__ import annotations

import importlib
from typing import Any


def _first(name: str, *modules: str) -> Any:
    for module in modules:
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if found is not None:
            return found
    raise AttributeError(f"{name} is in none of {modules}")


def cpu_attn_reshape_and_cache(*args: Any, **kwargs: Any) -> Any:
    """vLLM's own CPU cache writer."""
    return _first("cpu_attn_reshape_and_cache", "vllm._custom_ops", "vllm._cpu_ops")(*args, **kwargs)


def make_arg_parser(parser: Any) -> Any:
    """``vllm serve``'s argument parser."""
    return _first("make_arg_parser", "vllm.entrypoints.launchers.cli_args", "vllm.entrypoints.common.cli_args")(parser)
