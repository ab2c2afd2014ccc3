"""A group whose prompt is longer than one engine step: worker 0 prefills the shared prompt
in chunks, the other workers join in the step that prefills the rest, and every token is
the recompute oracle's (which has no notion of chunks: the shared prompt's keys are the
plain causal prompt's, whoever computes them and in how many steps)."""

from __future__ import annotations

from collections import defaultdict

import pytest

from tests.helpers.engines import engine, scheduler, tokenizer
from tests.helpers.runs import (NAMES, STEP, assert_matches, group_params, long_prompt, oracle_runs,
                                protocol_run)
from vllm_hogwild.worker_requests import stamp_of

# (layout, workers): every layout, W = 1..4
GROUPS = [("contiguous", 1), ("interleaved", 2), ("combined", 3), ("contiguous", 4), ("combined", 4)]


class StepLog:
    """Every step's scheduled tokens, by group and worker (wraps one scheduler instance)."""

    def __init__(self, sched) -> None:
        self.steps: list[dict[tuple[str, int], int]] = []
        self.plain: list[dict[str, int]] = []
        original = sched.schedule

        def schedule(*args, **kwargs):
            out = original(*args, **kwargs)
            step, plain = {}, {}
            for rid, n in out.num_scheduled_tokens.items():
                stamp = stamp_of(sched.requests[rid].sampling_params)
                if stamp is None:
                    plain[rid] = n
                else:
                    step[(stamp.group, stamp.worker)] = n
            self.steps.append(step)
            self.plain.append(plain)
            return out

        self._sched, self._original = sched, original
        sched.schedule = schedule

    def close(self) -> None:
        self._sched.schedule = self._original

    def of_group(self, request_id: str) -> dict[int, list[tuple[int, int]]]:
        """worker -> [(step, tokens)] of the scheduled steps of the group a request made (the
        engine's id of a fanned-out request carries a suffix)."""
        found = defaultdict(list)
        for i, step in enumerate(self.steps):
            for (g, w), n in step.items():
                if g == request_id or g.startswith(request_id + "-"):
                    found[w].append((i, n))
        return found


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "llama3-scaled"])
def test_a_prompt_of_three_steps_prefills_in_chunks_and_the_workers_start_together(family):
    from vllm import SamplingParams, TokensPrompt

    llm = engine(family, step_tokens=STEP)
    ids = long_prompt(family)
    # A prompt of its own for each group, none cached: each worker 0 computes the whole of it
    # (tests/engine/test_prefix_cache.py has groups that start from a cached part).
    group_ids = [[ids[1 + g]] + ids[1:] for g in range(len(GROUPS))]
    plain_params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    plain_prompts = [ids[5:], ids[:20]]  # a long ordinary prompt (vLLM chunks it too) and a short one
    alone = [llm.generate([TokensPrompt(prompt_token_ids=p)], plain_params, use_tqdm=False)[0] for p in plain_prompts]
    llm.reset_prefix_cache()
    log = StepLog(scheduler(llm))
    try:
        params = [SamplingParams(**group_params(w, layout, max_tokens=8)) for layout, w in GROUPS]
        outs = llm.generate([TokensPrompt(prompt_token_ids=g) for g in group_ids]
                            + [TokensPrompt(prompt_token_ids=p) for p in plain_prompts],
                            params + [plain_params] * len(plain_prompts), use_tqdm=False)
    finally:
        log.close()
    for (layout, workers), out, own in zip(GROUPS, outs, group_ids):
        assert out.num_cached_tokens == 0
        assert_matches(out, oracle_runs(family, own, workers, layout, max_tokens=8))
        steps = log.of_group(out.request_id)
        assert sorted(steps) == list(range(workers))
        # Worker 0: the prompt, then its prefix; every other: the prompt's last token, its prefix.
        prefix = [len(tokenizer(family).encode(name, add_special_tokens=False)) for name in NAMES[:workers]]
        prompt = [len(ids) + prefix[0]] + [1 + n for n in prefix[1:]]
        # The step the workers start in: worker 0's prompt done, every other worker's whole.
        done, start = 0, None
        for i, n in steps[0]:
            done += n
            if done >= prompt[0]:
                start = i
                break
        assert done == prompt[0]
        for w in range(1, workers):
            assert steps[w][0] == (start, prompt[w]), (layout, workers, w)
        # Before it, worker 0 alone on the shared prompt (all but its last token), in 3+ chunks.
        chunks = [n for i, n in steps[0] if i < start]
        assert len(chunks) >= 3 and sum(chunks) <= len(ids) - 1, (layout, workers, steps[0])
    for got, want in zip(outs[len(GROUPS):], alone):
        assert got.outputs[0].token_ids == want.outputs[0].token_ids
    assert not scheduler(llm).requests


def test_a_protocol_group_with_a_long_prompt_equals_the_oracle():
    """The protocol's prompt (567 tokens) in four steps of 160, its framing and headers (150)
    in the step the workers start in. The protocol never sees a chunk's sample: worker 0's
    logits there are mid-prompt, and a stop token among them must not start the answer."""
    from vllm_hogwild.hooks.sampler import hogwild_processors

    llm = engine("qwen3", step_tokens=160)
    (processor,) = hogwild_processors(llm.llm_engine.model_executor.driver_worker.worker.model_runner)
    seen = processor.worker_steps
    log = StepLog(scheduler(llm))
    try:
        out, runs = protocol_run("qwen3", 2, "combined", step_tokens=160)
    finally:
        log.close()
    assert len(out.prompt_token_ids) > 3 * 160
    assert_matches(out, runs)
    steps = log.of_group(out.request_id)
    chunks = len([i for i, _ in steps[0] if i < steps[1][0][0]])
    assert chunks >= 3
    # The protocol decided every sampled row, and no chunk's.
    assert processor.worker_steps - seen == len(steps[0]) + len(steps[1]) - chunks


def test_seeded_requests_with_long_prompts_sample_as_without_chunks():
    """A prompt chunk's sample is thrown away and vLLM rewinds a seeded request's generator,
    which on CPU has no offset to rewind: vLLM 0.32 dies there ("CPU Generator does not use
    offset"), plain request or group. The runner hook restores the generator instead, so a
    seeded request samples the same tokens whether its prompt came in chunks or in one step."""
    from vllm import SamplingParams, TokensPrompt

    ids = long_prompt("llama")
    plain = SamplingParams(temperature=1.0, seed=7, max_tokens=8, ignore_eos=True)
    group = SamplingParams(**{**group_params(2, "combined", max_tokens=8), "temperature": 1.0, "seed": 7})
    chunked = engine("llama", step_tokens=STEP).generate([TokensPrompt(prompt_token_ids=ids)] * 2, [plain, group],
                                                         use_tqdm=False)
    whole = engine("llama").generate([TokensPrompt(prompt_token_ids=ids)] * 2, [plain, group], use_tqdm=False)
    for a, b in zip(chunked, whole):
        assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]


def test_a_prompt_longer_than_the_model_is_still_refused_before_scheduling():
    from vllm import SamplingParams, TokensPrompt
    from vllm.exceptions import VLLMValidationError

    llm = engine("llama", step_tokens=STEP)
    ids = (long_prompt("llama") * 6)[:1100]
    with pytest.raises(VLLMValidationError, match="maximum context length is 1024 tokens.*your prompt contains 1100"):
        llm.generate([TokensPrompt(prompt_token_ids=ids)], SamplingParams(**group_params(2, "combined")),
                     use_tqdm=False)
    with pytest.raises(ValueError, match=r"hogwild_prefixes: .*more than max_num_batched_tokens=64"):
        llm.generate([TokensPrompt(prompt_token_ids=ids[:300])],
                     SamplingParams(**group_params(2, "combined", prefixes=["A long first text " * 6, "B"])),
                     use_tqdm=False)
    assert not scheduler(llm).requests
