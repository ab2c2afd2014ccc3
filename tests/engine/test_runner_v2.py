"""Model Runner V2's hook (``hooks/model_runner_v2``) keeps each worker's tokens as a host list,
extended from every step's output. On the GPU runner that output is an ``AsyncOutput`` the
engine fetches only on the rank that reports; on the other tensor-parallel ranks the next step
must fetch it, or their planners would see workers stop growing. Runs on any release (the
engine-level tests of both V2 runners run on vLLM 0.34: test_triton_backend, the suite)."""

from __future__ import annotations

from types import SimpleNamespace

from vllm.v1.outputs import AsyncModelRunnerOutput

from vllm_hogwild.hooks import model_runner_v2 as v2
from vllm_hogwild.hooks import state


class Output(AsyncModelRunnerOutput):
    """An ``AsyncOutput``: the step's tokens reach the host when ``get_output`` is called."""

    def __init__(self, req_ids, sampled):
        self.fetches = 0
        self._output = SimpleNamespace(req_ids=req_ids, sampled_token_ids=sampled)

    def get_output(self):
        self.fetches += 1
        return self._output

    def get_kv_connector_output(self):  # (abstract on vLLM 0.34)
        return None


class Runner:
    def __init__(self, views):
        state.of(self, state.RunnerState).requests = views


def _step(runner, output, then=None):
    return v2._on_output(runner, output, lambda out: v2._record(state.of(runner, state.RunnerState).requests, out, then or {}))


def _next_step(runner):
    finish = v2._finish_requests(lambda self, scheduler_output: None)
    finish(runner, SimpleNamespace(finished_req_ids=set()))


def test_a_rank_the_engine_does_not_fetch_gets_the_tokens_at_the_next_step():
    worker = v2.SlotRequest([1, 2], ([0],), [1, 2])
    runner = Runner({"w": worker})
    output = _step(runner, Output(["w", "plain"], [[7], [9]]))
    assert worker.output_token_ids == []
    _next_step(runner)
    assert worker.output_token_ids == [7] and output.fetches == 1


def test_the_reporting_rank_records_a_step_once():
    worker = v2.SlotRequest([1, 2], ([0],), [1, 2])
    runner = Runner({"w": worker})
    output = _step(runner, Output(["plain", "w"], [[9], [7]]))
    fetched = output.get_output()  # the engine, right after the step
    assert fetched.sampled_token_ids == [[9], [7]] and worker.output_token_ids == [7]
    _next_step(runner)
    assert output.get_output() is fetched
    assert worker.output_token_ids == [7] and output.fetches == 1


def test_a_forced_text_follows_the_sampled_token_in_the_output_and_the_worker():
    worker = v2.SlotRequest([1, 2], ([0],), [1, 2, 5])  # resumed: one output token in its prefill
    runner = Runner({"w": worker})
    output = _step(runner, Output(["w"], [[7]]), then={0: [30, 31]})
    assert output.get_output().sampled_token_ids == [[7, 30, 31]]
    assert worker.output_token_ids == [5, 7, 30, 31]


def test_a_plain_output_is_recorded_at_once():
    worker = v2.SlotRequest([1], ([0],), [1])
    runner = Runner({"w": worker})
    _step(runner, SimpleNamespace(req_ids=["w"], sampled_token_ids=[[4]]))
    assert worker.output_token_ids == [4] and state.of(runner, state.RunnerState).pending is None
