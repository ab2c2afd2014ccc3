"""vLLM's prefix cache and hogwild groups: a group's shared prompt is read from the cache and
written to it like a plain request's; nothing of a group after its prompt is ever hit.

Every group here is held to the recompute oracle, and every plain request to transformers,
whatever the cache held before it.
"""

from __future__ import annotations

import torch

from tests.helpers.engines import engine, hf_model, output_dict, tokenizer
from tests.helpers.runs import NAMES, PROMPT, assert_matches, group_params, oracle_runs, prompt_ids
from tests.helpers.runs import STEP

BLOCK = 32  # the engines' block size


def system_prompt(family: str, blocks: int = 3) -> list[int]:
    """A prompt of ``blocks`` whole cache blocks and a few tokens more (a shared system prompt)."""
    ids = prompt_ids(family, " ".join([PROMPT] * 20))
    return ids[: blocks * BLOCK + 5]


def run(llm, prompt: list[int], params: dict):
    from vllm import SamplingParams, TokensPrompt

    return llm.generate([TokensPrompt(prompt_token_ids=prompt)], SamplingParams(**params), use_tqdm=False)[0]


def greedy(family: str, prompt: list[int], tokens: int) -> list[int]:
    with torch.no_grad():
        out = hf_model(family).generate(torch.tensor([prompt]), max_new_tokens=tokens, do_sample=False)
    return out[0, len(prompt):].tolist()


def test_a_group_starts_from_the_prompt_a_plain_request_cached():
    family = "llama"
    llm = engine(family)
    llm.reset_prefix_cache()  # what earlier tests left
    prompt = system_prompt(family) + prompt_ids(family, " First problem.")
    plain = run(llm, prompt, dict(temperature=0, max_tokens=1))
    assert plain.num_cached_tokens == 0  # nothing before it
    out = run(llm, prompt, group_params(3, "combined", 12))
    assert out.num_cached_tokens == 3 * BLOCK  # the whole blocks of the prompt
    assert_matches(out, oracle_runs(family, prompt, 3, "combined", 12))


def test_groups_share_their_prompt_and_nothing_else():
    """Two groups with one prompt (different workers' prefixes): the second reads the first's
    prompt blocks, not one block of its workers'."""
    family = "qwen3"
    llm = engine(family)
    llm.reset_prefix_cache()
    prompt = system_prompt(family, 2) + prompt_ids(family, " Second problem.")
    first = run(llm, prompt, group_params(2, "interleaved", 40))
    assert first.num_cached_tokens == 0
    prefixes = ["Dave thinks we", " Carol"]
    second = run(llm, prompt, group_params(2, "interleaved", 12, prefixes=prefixes))
    assert second.num_cached_tokens == 2 * BLOCK
    assert_matches(second, oracle_runs(family, prompt, 2, "interleaved", 12, prefixes=prefixes))
    # The same group again: still only the prompt, though every block of the first one's
    # workers has been written (and hashed) by now.
    again = run(llm, prompt, group_params(2, "interleaved", 40))
    assert again.num_cached_tokens == 2 * BLOCK
    assert output_dict(again)["outputs"] == output_dict(first)["outputs"]


def test_a_plain_request_gets_its_own_result_after_a_group_wrote_the_same_text():
    """A plain request whose prompt is a worker's whole request (prompt, prefix, output) would,
    if a worker's blocks were cached, start from keys computed in the group's views. It hits
    the prompt's blocks only and gets the plain result."""
    family = "llama"
    llm = engine(family)
    llm.reset_prefix_cache()
    prompt = system_prompt(family) + prompt_ids(family, " Third problem.")
    group = run(llm, prompt, group_params(3, "contiguous", 40))
    tok = tokenizer(family)
    worker0 = prompt + tok.encode(NAMES[0], add_special_tokens=False) + list(group.outputs[0].token_ids)
    worker1 = prompt[-1:] + tok.encode(NAMES[1], add_special_tokens=False) + list(group.outputs[1].token_ids)
    for text in (worker0, worker1):
        out = run(llm, text, dict(temperature=0, max_tokens=8))
        assert out.num_cached_tokens <= 3 * BLOCK
        assert list(out.outputs[0].token_ids) == greedy(family, text, 8)


def test_a_prompt_of_three_steps_leads_from_its_cached_part():
    """Chunked prefill: a group whose prompt is longer than a step starts its chunks from the
    hit, as a plain request does, and equals the oracle."""
    from tests.helpers.runs import long_prompt

    family = "llama"
    llm = engine(family, step_tokens=STEP)
    llm.reset_prefix_cache()
    prompt = long_prompt(family)
    run(llm, prompt[: 2 * STEP + 3], dict(temperature=0, max_tokens=1))  # caches 4 of its blocks
    out = run(llm, prompt, group_params(3, "combined"))
    assert out.num_cached_tokens == 4 * BLOCK
    assert_matches(out, oracle_runs(family, prompt, 3, "combined"))


def test_without_prefix_caching_nothing_is_read():
    family = "llama"
    llm = engine(family, prefix_caching=False)
    prompt = system_prompt(family) + prompt_ids(family, " Fourth problem.")
    run(llm, prompt, dict(temperature=0, max_tokens=1))
    out = run(llm, prompt, group_params(2, "combined", 8))
    assert out.num_cached_tokens == 0
    assert_matches(out, oracle_runs(family, prompt, 2, "combined", 8))
