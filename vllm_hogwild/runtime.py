"""Per-process state the backend reads: the model runner's planner, the model's attention
layers (each one's RoPE and window) and the runner's KV caches (whose size sets the CPU
path's packed store).

vLLM hands attention builders no request ids; the model-runner hook records the runner here
at every step, so the builder can map batch rows to hogwild workers. Token texts
(step boundaries) and encodings (protocol texts) come from one cached tokenizer.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from vllm_hogwild.hooks import state
from vllm_hogwild.planner import Packing, Planner, StepPlan

_runner: Any = None
_batch: Any = None  # reads this step's batch off the runner: the release's model-runner adapter


def set_runner(runner: Any, batch: Any) -> None:
    """``batch`` has ``req_ids(runner)`` (request ids in batch order) and ``discarded(runner)``
    (per batch row, whether its sample is thrown away, or None)."""
    global _runner, _batch
    _runner, _batch = runner, batch


def planner(runner: Any) -> Planner:
    """The runner's planner, made on first use with a decoder of token texts."""
    record = state.of(runner, state.RunnerState)
    if record.planner is None:
        record.planner = Planner(token_texts(runner.model_config))
    return record.planner


def _tokenizer(model_config: Any) -> Any:
    from vllm.tokenizers import cached_tokenizer_from_config

    return cached_tokenizer_from_config(model_config)


def token_texts(model_config: Any) -> Callable[[int], str]:
    """The text of one token (memoized; the tokenizer loads on first use)."""

    @functools.cache
    def decode(token: int) -> str:
        return _tokenizer(model_config).decode([token])

    return decode


def encoder(model_config: Any) -> Callable[[str], list[int]]:
    """Token ids of a protocol text, without special tokens (memoized)."""

    @functools.cache
    def encode(text: str) -> tuple[int, ...]:
        return tuple(_tokenizer(model_config).encode(text, add_special_tokens=False))

    return lambda text: list(encode(text))


def bans(model_config: Any, banned: tuple[str, ...]) -> Any:
    """The ``bans.Bans`` of the texts ``banned`` (a protocol group's, ``prompts.banned_texts``, or
    think while answering's), made once per tokenizer and texts: it reads the whole vocabulary."""
    tokenizer = (str(model_config.tokenizer), str(getattr(model_config, "tokenizer_revision", None)))
    key = (tokenizer, tuple(banned))
    found = _BANS.get(key)
    if found is None:
        from vllm_hogwild import bans as bans_module

        if tokenizer not in _VOCABULARIES:
            _VOCABULARIES[tokenizer] = bans_module.vocabulary_of(_tokenizer(model_config))
        texts, special = _VOCABULARIES[tokenizer]
        found = _BANS[key] = bans_module.Bans(banned, texts, special)
    return found


_BANS: dict = {}  # (tokenizer, banned texts) -> Bans
_VOCABULARIES: dict = {}  # tokenizer -> (each token's text, special token ids)


def discarded_rows() -> Any:
    """Per batch row of this step, whether vLLM will discard its sample (a prompt chunk
    before the last: its logits are not at the end of anything), or None before the first step."""
    return None if _runner is None else _batch.discarded(_runner)


def kv_caches() -> list[Any]:
    """The runner's KV caches, one per layer (empty before they are allocated)."""
    return list(getattr(_runner, "kv_caches", None) or [])


def step_plan(common: Any, packing: Packing | None = None) -> StepPlan | None:
    """Hogwild views of the batch that ``common`` (CommonAttentionMetadata) describes; with
    ``packing``, the shared histories packed (the CPU path)."""
    runner = _runner
    if runner is None:
        return None
    plan_for = getattr(state.peek(runner, state.RunnerState), "planner", None)
    if not plan_for:
        return None
    req_ids = _batch.req_ids(runner)[: common.num_reqs]
    qsl = common.query_start_loc_cpu.tolist()
    # vLLM's host copy is exact without speculative decoding (refused with hogwild); it
    # spares a device-to-host copy, which waits for the GPU, every step.
    seq_lens = common.seq_lens_cpu_upper_bound
    seq_lens = (common.seq_lens.cpu() if seq_lens is None else seq_lens).tolist()
    rows = [(rid, qsl[i + 1] - qsl[i], seq_lens[i]) for i, rid in enumerate(req_ids)]
    return plan_for.plan(rows, packing)


def layers() -> Any:
    """The model's RoPEs and each attention layer's kind (``attention.Layers``; read once per runner)."""
    record = state.of(_runner, state.RunnerState)
    if record.layers is None:
        from vllm_hogwild.attention import layer_kinds

        record.layers = layer_kinds(_runner.get_model())
    return record.layers
