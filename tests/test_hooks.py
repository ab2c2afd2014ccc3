"""The hooks: one supported vLLM release, and every patched internal named where it is patched."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

from vllm_hogwild import hooks


def test_the_supported_vllm_release_and_patch_releases_pass():
    hooks.check_vllm_version("0.32.0")
    hooks.check_vllm_version("0.32.3+cpu")


@pytest.mark.parametrize("version", ["0.31.2", "0.33.0", "1.32.0"])
def test_another_vllm_release_is_refused_naming_both(version, monkeypatch):
    monkeypatch.delenv(hooks.ANY_VLLM_ENV, raising=False)
    with pytest.raises(RuntimeError, match=rf"supports vLLM 0\.32\.x .*vLLM {re.escape(version)} is installed.*"
                                           rf"{hooks.ANY_VLLM_ENV}=1"):
        hooks.check_vllm_version(version)


def test_the_override_lets_another_release_through(monkeypatch):
    monkeypatch.setenv(hooks.ANY_VLLM_ENV, "1")
    hooks.check_vllm_version("0.33.0")  # a warning, no error


def _patched(module) -> list[str]:
    parts = (module.__doc__ or "").split("\n\n")
    head = parts[1] if len(parts) > 1 else ""
    return re.findall(r"``(\w+)\.(\w+)``", head) if head.startswith("Patches ``") else []


def test_every_hook_module_lists_what_it_patches_and_vllm_has_it():
    """Each seam's docstring opens with ``Patches ``Class.method``...``; every one named
    exists in the installed vLLM, so the list cannot drift from what is wrapped."""
    import vllm.engine.arg_utils
    import vllm.entrypoints.openai.chat_completion.serving
    import vllm.entrypoints.openai.completion.serving
    import vllm.v1.core.kv_cache_coordinator
    import vllm.v1.core.kv_cache_manager
    import vllm.v1.core.sched.scheduler
    import vllm.v1.engine.async_llm
    import vllm.v1.engine.core
    import vllm.v1.engine.core_client
    import vllm.v1.engine.input_processor
    import vllm.v1.engine.output_processor
    import vllm.v1.engine.parallel_sampling
    import vllm.v1.worker.gpu_model_runner

    classes = {}
    for mod in (vllm.engine.arg_utils, vllm.entrypoints.openai.chat_completion.serving,
                vllm.entrypoints.openai.completion.serving, vllm.v1.core.kv_cache_coordinator,
                vllm.v1.core.kv_cache_manager, vllm.v1.core.sched.scheduler, vllm.v1.engine.async_llm,
                vllm.v1.engine.core,
                vllm.v1.engine.core_client, vllm.v1.engine.input_processor, vllm.v1.engine.output_processor,
                vllm.v1.engine.parallel_sampling, vllm.v1.worker.gpu_model_runner):
        classes.update({name: obj for name, obj in vars(mod).items() if isinstance(obj, type)})
    seams = [importlib.import_module(f"vllm_hogwild.hooks.{m.name}") for m in pkgutil.iter_modules(hooks.__path__)]
    listed = {name: _patched(m) for m, name in ((m, m.__name__.rsplit(".", 1)[1]) for m in seams)}
    assert all(listed[name] for name in listed if name not in ("patching", "sampler")), listed
    for name, pairs in listed.items():
        for cls, method in pairs:
            assert hasattr(classes[cls], method), f"hooks.{name}: vLLM has no {cls}.{method}"
