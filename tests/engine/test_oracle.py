"""The project's spine: hogwild workers in vLLM equal the recompute oracle, step by step."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.engines import decoder, engine, hf_model, tokenizer
from tests.helpers.oracle import Oracle
from tests.helpers.runs import BOUNDARY, NAMES, assert_matches, hogwild, prompt_ids
from vllm_hogwild.steps import BoundaryRule

@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "llama3-scaled"])
@pytest.mark.parametrize("layout", ["contiguous", "interleaved", "combined"])
@pytest.mark.parametrize("workers", [2, 4])
def test_workers_equal_recompute_oracle(family, layout, workers):
    out, runs = hogwild(family, prompt_ids(family), workers, layout)
    assert_matches(out, runs)


def test_steps_commit_during_generation():
    """The interleaved runs above exercise commits: check the boundary really occurs."""
    out, runs = hogwild("llama", prompt_ids("llama"), 2, "interleaved", max_tokens=16)
    texts = [tokenizer("llama").decode(o.token_ids) for o in out.outputs]
    assert any(BOUNDARY in t for t in texts)
    assert_matches(out, runs)


def test_finished_worker_stays_visible():
    """A worker that stops early keeps its keys readable by the others until the group ends."""
    family = "qwen3"
    ids = prompt_ids(family)
    free, _ = hogwild(family, ids, 3, "combined", max_tokens=14)
    # Stop on the earliest token that only one worker emits: that worker ends early.
    streams = [list(o.token_ids) for o in free.outputs]
    only_one = [(s.index(t), t) for s in streams for t in s if sum(t in o for o in streams) == 1]
    stop = min(only_one)[1]
    out, runs = hogwild(family, ids, 3, "combined", max_tokens=14, stop=(stop,))
    lengths = sorted(len(o.token_ids) for o in out.outputs)
    assert lengths[0] < lengths[-1]
    assert_matches(out, runs)


def test_one_worker_equals_an_ordinary_request():
    from vllm import SamplingParams, TokensPrompt

    ids = prompt_ids("qwen3")
    llm = engine("qwen3")
    plain = llm.generate([TokensPrompt(prompt_token_ids=ids)],
                         SamplingParams(temperature=0, max_tokens=12, logprobs=3), use_tqdm=False)[0].outputs[0]
    hog = llm.generate([TokensPrompt(prompt_token_ids=ids)],
                       SamplingParams(temperature=0, max_tokens=12, logprobs=3,
                                      extra_args={"hogwild_workers": 1, "hogwild_layout": "combined"}),
                       use_tqdm=False)[0].outputs
    assert len(hog) == 1 and list(hog[0].token_ids) == list(plain.token_ids)
    for a, b in zip(hog[0].logprobs, plain.logprobs):
        for t in b:
            assert abs(a[t].logprob - b[t].logprob) < 1e-4


def test_ordinary_requests_and_two_groups_share_a_batch():
    """Plain requests give what they give alone; two groups never see each other's tokens."""
    from vllm import SamplingParams, TokensPrompt

    family = "qwen2"
    llm = engine(family)
    plain_prompts = [prompt_ids(family, "Each worker writes a step."), prompt_ids(family, "Check: 2 * 4 + 3 = 11.")]
    plain_params = SamplingParams(temperature=0, max_tokens=9)
    alone = [llm.generate([TokensPrompt(prompt_token_ids=p)], plain_params, use_tqdm=False)[0].outputs[0].token_ids
             for p in plain_prompts]
    group_prompts = [prompt_ids(family), prompt_ids(family, "We plan the work, split it, and tell each other.")]
    expected = [hogwild(family, p, 2, "combined")[1] for p in group_prompts]
    hog_params = SamplingParams(
        temperature=0, max_tokens=10, logprobs=5,
        extra_args={"hogwild_workers": 2, "hogwild_layout": "combined", "hogwild_boundary": BOUNDARY,
                    "hogwild_boundary_sentence": False, "hogwild_prefixes": NAMES[:2]})
    prompts = [TokensPrompt(prompt_token_ids=p) for p in group_prompts + plain_prompts]
    outs = llm.generate(prompts, [hog_params, hog_params, plain_params, plain_params], use_tqdm=False)
    for out, runs in zip(outs[:2], expected):
        assert_matches(out, runs)
    for out, want in zip(outs[2:], alone):
        assert list(out.outputs[0].token_ids) == list(want)


@pytest.mark.parametrize("family", ["qwen2", "mistral", "gemma2", "gemma3", "gpt-oss"])
def test_oracle_with_one_worker_is_plain_transformers(family):
    """Self-check of the oracle: one worker, no prefix, is an ordinary greedy decode, its
    family's windows, soft caps and sinks included. Against transformers' eager attention:
    its SDPA path drops Gemma 2's soft cap."""
    ids = prompt_ids(family)
    model = hf_model(family)
    runs = Oracle(model, decoder(family), "combined", BoundaryRule(), ids, [[]], 24, set()).run()
    usual = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            ref = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
    finally:
        model.set_attn_implementation(usual)
    assert runs[0].generated == ref[0, len(ids):].tolist()
