"""The model-runner seam on vLLM 0.32's V1 runner (``GPUModelRunner``, which the CPU worker runs too).

Patches ``GPUModelRunner._update_states``, ``GPUModelRunner._sample`` and
``GPUModelRunner._bookkeeping_sync``.

vLLM's scheduler appends every token the runner reports for a request (as it does for
speculative decoding's accepted tokens) and, next step, schedules all of those whose keys
are not yet computed: so a forced text reported whole after its first token is computed in
one step, as a chunk. The runner keeps its own copy of each request's tokens (what it
feeds the model), so the hook writes the chunk there too.

A prompt chunk before the prompt's end is sampled and its sample discarded; vLLM 0.32 then
rewinds a seeded request's generator by its offset, which CPU generators do not have
("CPU Generator does not use offset": the engine dies, with or without the plugin). A
group's worker 0 prefills long prompts in chunks, so on CPU the hook saves such a
generator's state before sampling and puts it back instead.
"""

from __future__ import annotations

from typing import Any

from vllm_hogwild import runtime
from vllm_hogwild.hooks import state
from vllm_hogwild.hooks.patching import wrap
from vllm_hogwild.worker_requests import stamp_of


class Batch:
    """This step's batch, read off the V1 runner's persistent input batch."""

    @staticmethod
    def req_ids(runner: Any) -> list[str]:
        return runner.input_batch.req_ids

    @staticmethod
    def discarded(runner: Any) -> Any:
        mask = getattr(runner, "discard_request_mask", None)
        return None if mask is None else mask.np


def runner_kind() -> str:
    return "V1"


def install() -> None:
    import os

    from vllm_hogwild.support import V1_RUNNER

    # The hook and the protocol's logits processor drive the V1 runner, which CUDA builds of
    # vLLM 0.32 leave for Model Runner V2 unless told otherwise.
    os.environ.setdefault(*V1_RUNNER)
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    wrap(GPUModelRunner, "_update_states", _update_states)
    wrap(GPUModelRunner, "_sample", _sample)
    wrap(GPUModelRunner, "_bookkeeping_sync", _bookkeeping_sync)


def _update_states(original):
    def wrapper(self, scheduler_output):
        result = original(self, scheduler_output)
        runtime.set_runner(self, Batch)
        for new in scheduler_output.scheduled_new_reqs:
            stamp = stamp_of(new.sampling_params)
            if stamp is not None:
                runtime.planner(self).add(new.req_id, stamp, self.requests[new.req_id])
        planner = getattr(state.peek(self, state.RunnerState), "planner", None)
        if scheduler_output.finished_req_ids and planner is not None:
            planner.finish(list(scheduler_output.finished_req_ids))
        return result

    return wrapper


def _sample(original):
    def wrapper(self, *args, **kwargs):
        state.of(self, state.RunnerState).rewind = _discarded_cpu_generators(self)
        return original(self, *args, **kwargs)

    return wrapper


def _discarded_cpu_generators(runner) -> dict[int, Any]:
    """Batch index -> state before sampling, of every CPU generator whose row's sample vLLM
    will discard (CUDA generators vLLM rewinds itself)."""
    generators = runner.input_batch.generators
    if not generators:
        return {}
    discard = runner.discard_request_mask.np[: runner.input_batch.num_reqs]
    return {i: gen.get_state() for i, gen in generators.items()
            if i < discard.size and discard[i] and gen.device.type == "cpu"}


def _bookkeeping_sync(original):
    from vllm_hogwild.hooks.sampler_v1 import hogwild_processors

    def wrapper(self, *args, **kwargs):
        record = state.of(self, state.RunnerState)
        rewind, record.rewind = record.rewind, {}
        generators = self.input_batch.generators
        taken = {i: generators.pop(i) for i in rewind}
        try:
            result = original(self, *args, **kwargs)
        finally:
            for i, gen in taken.items():
                gen.set_state(rewind[i])
                generators[i] = gen
        sampled = result[3]  # valid_sampled_token_ids: per batch row, what the scheduler gets
        for processor in hogwild_processors(self):
            for index, then in processor.take_then().items():
                if index >= len(sampled) or not sampled[index]:
                    continue  # the row's sample was discarded (or not on the host): nothing follows it
                batch = self.input_batch
                start = int(batch.num_tokens_no_spec[index])
                end = min(start + len(then), self.max_model_len)
                then = list(then[: end - start])
                batch.token_ids_cpu[index, start:end] = then
                batch.is_token_ids[index, start:end] = True
                batch.num_tokens_no_spec[index] = end
                self.requests[batch.req_ids[index]].output_token_ids.extend(then)
                sampled[index].extend(then)
        return result

    return wrapper
