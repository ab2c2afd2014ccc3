"""Fuzzing, offline and seeded: junk in every hogwild field, and random traffic with aborts.

- Bad input: every ``hogwild_*`` key with values of the wrong type, null, NaN and inf, huge
  and negative numbers, empty, long and unicode strings, nested objects, lists of the wrong
  length, duplicate names, prefixes holding special tokens. Each is a ValueError naming a
  field, or a valid run of W workers; never another error, and a plain request is served after.
- Isolation: rounds of hogwild groups (W 1..4, every layout, protocol on and off) and plain
  requests submitted together, some aborted at random steps. Every request that survives gives
  exactly what it gives alone (greedy), and the free KV blocks return to their count before.
"""

from __future__ import annotations

import random

import pytest

from tests.helpers.engines import engine, scheduler
from tests.helpers.junk import FIELDS_NAMED, bad_input_cases
from vllm_hogwild.hooks import state

def test_junk_in_every_hogwild_field_is_refused_by_name_or_runs():
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    llm = engine("llama")
    refused = ran = 0
    for flags in bad_input_cases(0):
        try:
            params = SamplingParams(temperature=0, max_tokens=70, extra_args=flags)
            out = llm.generate(["Each worker writes a step."], params, use_tqdm=False)[0]
        except (ValueError, VLLMValidationError) as error:
            field = getattr(error, "parameter", None) or str(error).split(":")[0]
            assert field in FIELDS_NAMED or field in flags, (flags, str(error)[:200])  # or the unknown key
            refused += 1
        else:
            workers = flags["hogwild_workers"]
            assert len(out.outputs) == int(workers), flags
            assert all(o.finish_reason in ("stop", "length") for o in out.outputs), flags
            ran += 1
    assert refused > 100 and ran > 10, (refused, ran)  # both kinds of answer were exercised
    plain = llm.generate(["Alice and Bob"], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)[0]
    assert len(plain.outputs[0].token_ids) == 8


def _spec(rng: random.Random) -> tuple[str, dict | None]:
    """A random request: (prompt, hogwild flags or None for a plain request)."""
    prompt = rng.choice(["Each worker writes a step.", "Alice and Bob solve problems together.",
                         "Let x be the unknown. Then 2x + 3 = 11.", "We plan the work, split it."])
    if rng.random() < 0.3:
        return prompt, None
    flags = {"hogwild_layout": rng.choice(["contiguous", "interleaved", "combined"])}
    if rng.random() < 0.4:  # the protocol's prompt leaves room for 3 workers in the tiny models' 1024
        flags.update({"hogwild_workers": rng.randint(1, 3), "hogwild_protocol": True, "hogwild_answer_tokens": 3,
                      "hogwild_check_tokens": 8})
    else:
        flags.update({"hogwild_workers": rng.randint(1, 4), "hogwild_boundary": " ",
                      "hogwild_boundary_sentence": False})
    return prompt, flags


def _params(flags: dict | None):
    """Greedy; the whole output at the end (as ``LLM.generate`` asks), so that a group's
    last RequestOutput holds all its workers."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(temperature=0, max_tokens=72, output_kind=RequestOutputKind.FINAL_ONLY,
                          **({"extra_args": flags} if flags else {}))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_traffic_with_aborts_keeps_every_survivor_exact_and_frees_every_block(seed):
    llm = engine("llama")
    pool = scheduler(llm).kv_cache_manager.block_pool
    free = pool.get_num_free_blocks()
    rng = random.Random(seed)
    specs = [_spec(rng) for _ in range(rng.randint(5, 8))]
    solo = [llm.generate([p], _params(f), use_tqdm=False)[0] for p, f in specs]
    assert pool.get_num_free_blocks() == free
    aborts = {i: rng.randint(1, 40) for i in rng.sample(range(len(specs)), k=len(specs) // 3)}
    engine_ = llm.llm_engine
    for i, (prompt, flags) in enumerate(specs):
        engine_.add_request(f"fuzz-{seed}-{i}", prompt, _params(flags))
    finished, step = {}, 0
    while engine_.has_unfinished_requests():
        step += 1
        assert step < 1000, "the round never ended"
        for out in engine_.step():
            if out.finished:
                finished[out.request_id] = out
        for i, at in aborts.items():
            if at == step and f"fuzz-{seed}-{i}" not in finished:
                engine_.abort_request([f"fuzz-{seed}-{i}"])
    for i, want in enumerate(solo):
        got = finished.get(f"fuzz-{seed}-{i}")
        if got is None:
            assert i in aborts, f"request {i} ({specs[i][1]}) vanished"
            continue
        assert [list(o.token_ids) for o in got.outputs] == [list(o.token_ids) for o in want.outputs], specs[i]
        assert getattr(got, "hogwild_final_answer", None) == getattr(want, "hogwild_final_answer", None)
    assert pool.get_num_free_blocks() == free
    sched = scheduler(llm)
    assert not state.of(sched, state.SchedulerState).ended and not sched.requests
    # The model runner hears of the last step's finished requests with the next step's
    # batch: after one more request, no group is left in the planner or the protocol.
    llm.generate(["Alice"], _params(None), use_tqdm=False)
    runner = llm.llm_engine.model_executor.driver_worker.worker.model_runner
    planner = state.of(runner, state.RunnerState).planner
    assert not planner and not planner._pending and not planner._group_of
    from vllm_hogwild.hooks.sampler import hogwild_processors

    protocols = hogwild_processors(runner)
    assert protocols and not any(p._groups or p.rows for p in protocols)
