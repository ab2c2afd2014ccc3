"""Group lifecycle in vLLM: bad input, abort, KV pressure, and the cache layout we read."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.engines import engine, scheduler, tokenizer
from tests.helpers.runs import NAMES, PROMPT, prompt_ids
from vllm_hogwild.worker_requests import group_of
from vllm_hogwild.hooks import state


def _plain_works(llm) -> None:
    from vllm import SamplingParams

    out = llm.generate(["Each worker writes a step."], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4


@pytest.mark.parametrize("extra,match", [
    ({"hogwild_workers": 2, "hogwild_layout": "spiral"}, "hogwild_layout.*allowed: contiguous"),
    ({"hogwild_workers": 99}, "hogwild_workers: expected an int in 1..16"),
    ({"hogwild_workers": 2, "hogwild_bogus": 1}, "unknown hogwild field"),
    ({"hogwild_workers": 2, "hogwild_prefixes": [1, 2]}, "hogwild_prefixes"),
])
def test_bad_flag_is_refused_before_scheduling(extra, match):
    from vllm import SamplingParams

    llm = engine("llama")
    with pytest.raises(ValueError, match=match):
        llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=4, extra_args=extra), use_tqdm=False)
    assert not scheduler(llm).requests
    _plain_works(llm)


def test_n_and_length_are_checked():
    from vllm import SamplingParams

    llm = engine("llama")
    with pytest.raises(ValueError, match="n: a hogwild request takes n=1"):
        llm.generate([PROMPT], SamplingParams(n=2, temperature=0.5, max_tokens=4,
                                              extra_args={"hogwild_workers": 2}), use_tqdm=False)
    with pytest.raises(ValueError, match="max_tokens: 4 workers x max_tokens=300"):
        llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=300,
                                              extra_args={"hogwild_workers": 4}), use_tqdm=False)
    _plain_works(llm)


def test_abort_frees_every_block_of_the_group():
    from vllm import SamplingParams, TokensPrompt

    llm = engine("llama")
    pool = scheduler(llm).kv_cache_manager.block_pool
    free = pool.get_num_free_blocks()
    params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True, extra_args={"hogwild_workers": 3})
    rid = llm.llm_engine.add_request("abort-me", TokensPrompt(prompt_token_ids=prompt_ids("llama")), params)
    for _ in range(3):
        llm.llm_engine.step()
    assert pool.get_num_free_blocks() < free
    llm.llm_engine.abort_request([rid], internal=False)
    while llm.llm_engine.has_unfinished_requests():
        llm.llm_engine.step()
    assert pool.get_num_free_blocks() == free
    assert not scheduler(llm).requests
    assert not state.of(scheduler(llm), state.SchedulerState).ended


def test_kv_pressure_holds_groups_back_whole():
    """A cache too small for all groups at once: groups wait whole, ordinary requests are
    preempted instead, and every output equals what it is alone."""
    from vllm import SamplingParams, TokensPrompt

    block_bytes = 2 * 2 * 2 * 32 * 32 * 4  # layers x (K, V) x KV heads x head_dim x block x fp32
    llm = engine("llama", kv_bytes=13 * block_bytes, max_model_len=256)
    assert scheduler(llm).kv_cache_manager.block_pool.num_gpu_blocks <= 14
    ids = prompt_ids("llama")
    hog = SamplingParams(temperature=0, max_tokens=50, ignore_eos=True, logprobs=5,
                         extra_args={"hogwild_workers": 2, "hogwild_prefixes": NAMES[:2]})
    plain = SamplingParams(temperature=0, max_tokens=120, ignore_eos=True)
    with pytest.raises(ValueError, match=r"max_tokens: 7 workers x max_tokens=34 need 14 KV blocks at worst, "
                                         r"more than the cache holds \(\d+\); allowed: max_tokens <= \d+"):
        llm.generate([TokensPrompt(prompt_token_ids=ids)], SamplingParams(
            temperature=0, max_tokens=34, extra_args={"hogwild_workers": 7}), use_tqdm=False)
    prompts = [ids, ids[:-3], ids[:-6], ids[2:]]
    alone = [llm.generate([TokensPrompt(prompt_token_ids=p)], hog if i < 3 else plain, use_tqdm=False)[0]
             for i, p in enumerate(prompts)]
    seen = []
    sched = scheduler(llm)
    original = type(sched).schedule

    def spy(self, *a, **k):
        out = original(self, *a, **k)
        running = {group_of(r.sampling_params) for r in self.running}
        seen.append(len(running - {None}))
        return out

    type(sched).schedule = spy
    try:
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], [hog, hog, hog, plain],
                            use_tqdm=False)
    finally:
        type(sched).schedule = original
    assert max(seen) == 2  # the third group waited for room: 3 x 5 worst-case blocks > 13
    for out, ref in zip(outs, alone):
        assert [list(o.token_ids) for o in out.outputs] == [list(o.token_ids) for o in ref.outputs]


def test_cpu_cache_layout_matches_vllm_writer():
    """The fragment op reads keys and values where vLLM's CPU kernel writes them."""
    from tests.helpers.vllm_api import cpu_attn_reshape_and_cache

    from vllm_hogwild.cpu_backend import cpu_caches

    blocks, heads, block_size, dim = 5, 2, 32, 64
    kv = torch.zeros(blocks, heads, block_size, 2 * dim)
    key_cache, value_cache = kv.view(blocks, heads, 2 * block_size, dim).chunk(2, dim=2)
    key, value = torch.randn(70, heads, dim), torch.randn(70, heads, dim)
    slots = torch.randperm(blocks * block_size)[:70]
    cpu_attn_reshape_and_cache(key, value, key_cache, value_cache, slots, "vec",
                               k_scale=1.0, v_scale=1.0, kv_cache_dtype="auto")
    keys, values = cpu_caches(kv)
    b, o = slots // block_size, slots % block_size
    assert torch.equal(keys[b, o], key) and torch.equal(values[b, o], value)


_KEEP = []  # in-process engines share vLLM's process groups: dropping one breaks the others


def test_model_without_rope_is_refused(tmp_path):
    import transformers
    from vllm import LLM, SamplingParams

    tok = tokenizer("llama")
    config = transformers.GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=1, n_head=2, n_positions=256)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    llm = LLM(model=str(tmp_path), dtype="float32", enforce_eager=True, block_size=32, max_model_len=256,
              kv_cache_memory_bytes=8 * 2**20, max_num_seqs=4)
    with pytest.raises(ValueError, match="no rotary position embedding"):
        llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=4, extra_args={"hogwild_workers": 2}))
    _KEEP.append(llm)
    _plain_works(llm)


def test_engines_that_schedule_ahead_are_refused(monkeypatch):
    """vLLM's async scheduling (the CUDA default) would hand the planner stale tokens;
    speculative decoding drops the logits processor and writes draft tokens: the frontend reads
    both off the engine's config, and support.refusal names the setting."""
    from vllm_hogwild import support
    from vllm_hogwild.hooks.frontend import engine_facts

    config = engine("llama").llm_engine.vllm_config
    assert support.refusal(engine_facts(config)) is None  # the CPU engine is synchronous
    monkeypatch.setattr(config.scheduler_config, "async_scheduling", True)
    assert "--no-async-scheduling" in support.refusal(engine_facts(config))
    monkeypatch.setattr(config.scheduler_config, "async_scheduling", False)
    monkeypatch.setattr(config, "speculative_config", object())
    assert "speculative decoding" in support.refusal(engine_facts(config))


def test_protocol_errors_name_the_field():
    from vllm import SamplingParams

    llm = engine("llama")
    with pytest.raises(ValueError, match=r"max_tokens: hogwild_protocol=true needs max_tokens >= \d+"):
        llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=5, extra_args={
            "hogwild_workers": 2, "hogwild_protocol": True}), use_tqdm=False)
    with pytest.raises(ValueError, match="ignore_eos: hogwild_protocol=true needs"):
        llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=80, ignore_eos=True, extra_args={
            "hogwild_workers": 2, "hogwild_protocol": True}), use_tqdm=False)
    assert not scheduler(llm).requests
    _plain_works(llm)


def test_each_workers_text_starts_with_its_first_text():
    """A worker's first text ends its request's prompt; its output text still starts with it
    (the token ids do not: they are what it generated), cumulative and streamed alike."""
    from vllm import SamplingParams, TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    from tests.helpers.runs import group_params

    tok = tokenizer("qwen2")
    llm = engine("qwen2")
    ids = [TokensPrompt(prompt_token_ids=prompt_ids("qwen2"))]
    out = llm.generate(ids, SamplingParams(**group_params(3, "interleaved", 12)), use_tqdm=False)[0]
    for o, name in zip(out.outputs, NAMES):
        first = tok.encode(name, add_special_tokens=False)
        whole = tok.decode(first + list(o.token_ids))
        # (vLLM's detokenizer holds back the bytes of an unfinished last character)
        assert o.text.startswith(name) and whole.startswith(o.text) and len(o.text) >= len(whole) - 1, (name, o.text)
    streamed = {}
    engine_ = llm.llm_engine
    engine_.add_request("deltas", ids[0], SamplingParams(**group_params(3, "interleaved", 12),
                                                         output_kind=RequestOutputKind.DELTA))
    while engine_.has_unfinished_requests():
        for res in engine_.step():
            for o in res.outputs:
                streamed[o.index] = streamed.get(o.index, "") + o.text
    assert [streamed[w] for w in range(3)] == [o.text for o in out.outputs]
