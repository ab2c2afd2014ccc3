"""Shared helpers for tests that run vLLM in-process on tiny local models."""

from __future__ import annotations

import functools
import os
import tempfile

from tests.helpers.tiny_models import MIXED_WINDOWS, make_model

ROOT = os.environ.get("HOGWILD_TEST_MODELS", os.path.join(tempfile.gettempdir(), "hogwild-tiny-models"))


@functools.lru_cache(maxsize=None)
def model_path(family: str) -> str:
    """A tiny random model of ``family``, made here; or a catalogue model (``vllm-hogwild
    models``) by name, converted, the test skipped (saying how to fetch it) where it is not."""
    from vllm_hogwild import models

    if family in models.CATALOGUE:
        if models.state(family) == "not fetched":
            import pytest

            pytest.skip(f"{family} is not fetched here: vllm-hogwild models fetch {family} "
                        f"({models.CATALOGUE[family].size / 2**20:.0f} MiB; CI never downloads it)")
        return models.resolve(family)
    return make_model(family, ROOT)


@functools.lru_cache(maxsize=None)
def engine(family: str, kv_bytes: int = 64 * 2**20, max_model_len: int = 1024, step_tokens: int | None = None,
           env: tuple[tuple[str, str], ...] = (), dtype: str = "float32", block_size: int = 32,
           kv_cache_dtype: str = "auto", hybrid_kv_cache: bool | None = None, prefix_caching: bool = True):
    """One in-process vLLM engine per configuration, shared by the tests (an engine that
    ends in-process takes vLLM's process-wide parallel state with it); ``step_tokens``:
    its ``max_num_batched_tokens`` (vLLM's default if None); ``env``: environment variables
    set while it starts and runs its first step, where the plugin reads its settings;
    ``hybrid_kv_cache``: vLLM's hybrid KV cache manager on (default: off for families that
    mix windowed and full layers, which hogwild needs it off for); ``prefix_caching``: vLLM's
    automatic prefix caching (its default, on)."""
    from vllm import LLM, SamplingParams

    step = {} if step_tokens is None else {"max_num_batched_tokens": step_tokens}
    saved = {k: os.environ.get(k) for k, _ in env}
    os.environ.update(dict(env))
    try:
        llm = LLM(model=model_path(family), dtype=dtype, enforce_eager=True, block_size=block_size,
                  kv_cache_dtype=kv_cache_dtype, max_model_len=max_model_len, kv_cache_memory_bytes=kv_bytes,
                  max_num_seqs=16, seed=0, disable_hybrid_kv_cache_manager=family in MIXED_WINDOWS if hybrid_kv_cache is None else not hybrid_kv_cache,
                  enable_prefix_caching=prefix_caching, **step)
        llm.generate(["a"], SamplingParams(max_tokens=1), use_tqdm=False)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return llm


def output_dict(out) -> dict:
    """A RequestOutput as plain data (logprobs keyed by token id), to compare or to send."""
    return {
        "prompt_token_ids": list(out.prompt_token_ids),
        "final_answer": getattr(out, "hogwild_final_answer", None),
        "outputs": [
            {"index": o.index, "token_ids": list(o.token_ids), "text": o.text, "finish_reason": o.finish_reason,
             "logprobs": [{t: lp.logprob for t, lp in step.items()} for step in (o.logprobs or [])]}
            for o in out.outputs
        ],
    }


def scheduler(llm):
    """The engine core's scheduler of an in-process LLM."""
    return llm.llm_engine.engine_core.engine_core.scheduler


@functools.lru_cache(maxsize=None)
def hf_model(family: str, dtype: str = "float32"):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(model_path(family), dtype=dtype)


@functools.lru_cache(maxsize=None)
def tokenizer(family: str):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(model_path(family))


def decoder(family: str):
    tok = tokenizer(family)
    return lambda t: tok.decode([t])
