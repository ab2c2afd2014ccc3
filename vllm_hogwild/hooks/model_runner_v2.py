"""The model-runner seam on Model Runner V2 (vLLM 0.34): the standalone CPU runner and the GPU runner.

Patches ``StandaloneCPUModelRunner.load_model``, ``StandaloneCPUModelRunner.add_requests``,
``StandaloneCPUModelRunner.update_requests``, ``StandaloneCPUModelRunner._remove_request``,
``StandaloneCPUModelRunner.finish_requests``, ``StandaloneCPUModelRunner.prepare_attn``,
``StandaloneCPUModelRunner.sample_tokens``, or on the GPU runner ``GPUModelRunner.load_model``,
``GPUModelRunner.add_requests``, ``GPUModelRunner.update_requests``,
``GPUModelRunner._remove_request``, ``GPUModelRunner.finish_requests``,
``GPUModelRunner.prepare_attn`` and ``GPUModelRunner.sample_tokens``: the runner the engine
runs (``runner_kind``; vLLM's CPU worker runs the GPU runner when a Triton backend is
active, as the suite's CUDA-path test does under the Triton interpreter). Both runners have these methods with the same parameters and meanings; they differ in where a
request's tokens live (host tensors on the CPU runner; on the GPU runner device or UVA
tensors written through staged writes) and in what ``sample_tokens`` returns (the output,
or an ``AsyncOutput`` that copies it to the host when asked).

Model Runner V2 keeps no per-request objects: a request is a slot in ``req_states`` and rows
of ``block_tables``. The planner reads a worker through ``SlotRequest``: the prompt and block
ids the scheduler handed over, and the worker's output tokens as a host list this hook extends
from each step's output (the tokens the scheduler is told were sampled, forced texts
included). Reading them off the slot instead would cost the GPU runner a device-to-host copy
per worker per step, and a freed slot's tokens would be gone while the worker stays in the
others' views. A step's batch order is the ``InputBatch`` that ``prepare_attn`` receives, just
before the attention builders run.

A forced text: vLLM's scheduler appends every token the runner reports for a request and
schedules all of them whose keys are not computed next step. Model Runner V2 feeds a decode
row only its last sampled token, so the hook writes the text after the sampled token into
the slot's tokens and moves the slot's prefill length to their end: next step the runner
feeds them as a prefill chunk (the way it resumes a preempted request with output), and
samples at its end.

The protocol's logits processor (``sampler_v2``): the GPU runner loads it from the entry
point; the CPU runner's sampler takes no custom processors, so ``load_model`` adds it. Either
way ``load_model`` tells it where a slot's output tokens are (``SlotRequest``).
"""

from __future__ import annotations

from typing import Any, Callable

from vllm_hogwild import runtime
from vllm_hogwild.hooks import state
from vllm_hogwild.hooks.patching import wrap
from vllm_hogwild.hooks.sampler_v2 import HogwildLogitsProcessor, hogwild_processors
from vllm_hogwild.worker_requests import stamp_of

class SlotRequest:
    """What the planner reads of a worker (``planner.RunnerRequest``) on Model Runner V2."""

    def __init__(self, prompt_token_ids: list[int], block_ids: Any, prefill_token_ids: list[int]) -> None:
        self.prompt_token_ids = list(prompt_token_ids)
        self.block_ids = tuple(list(ids) for ids in block_ids)
        # A request resumed after preemption comes back with its output so far in its prefill.
        self.output_token_ids = list(prefill_token_ids[len(self.prompt_token_ids):])


class Batch:
    """This step's batch: the ``InputBatch`` recorded at ``prepare_attn``."""

    @staticmethod
    def req_ids(runner: Any) -> list[str]:
        batch = getattr(state.peek(runner, state.RunnerState), "batch", None)
        return [] if batch is None else batch.req_ids  # (a dummy batch: no request of ours)

    @staticmethod
    def discarded(runner: Any) -> Any:
        """A row whose tokens end short of its prefill is a chunk: its sample is thrown away."""
        batch = getattr(state.peek(runner, state.RunnerState), "batch", None)
        if batch is None:
            return None
        return batch.seq_lens_cpu_upper_bound[: batch.num_reqs].numpy() < batch.prefill_len_np


def runner_kind() -> str:
    """Which Model Runner V2 runner this process's engine runs (``support.RUNNERS`` names them)."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and current_platform.uses_standalone_cpu_model_runner():
        return "standalone CPU"
    return "V2 GPU"


def install() -> None:
    if runner_kind() == "standalone CPU":
        from vllm.v1.worker.cpu.standalone_model_runner import StandaloneCPUModelRunner as Runner
    else:
        from vllm.v1.worker.gpu.model_runner import GPUModelRunner as Runner
    wrap(Runner, "load_model", _load_model)
    wrap(Runner, "add_requests", _add_requests)
    wrap(Runner, "update_requests", _update_requests)
    wrap(Runner, "_remove_request", _remove_request)
    wrap(Runner, "finish_requests", _finish_requests)
    wrap(Runner, "prepare_attn", _prepare_attn)
    wrap(Runner, "sample_tokens", _sample_tokens)


def _views(runner: Any) -> dict[str, SlotRequest]:
    return state.of(runner, state.RunnerState).requests


def _load_model(original):
    def wrapper(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        sampler = getattr(self, "sampler", None)
        if sampler is None:
            return result  # not the last pipeline stage: no sampling here
        if not hogwild_processors(self):
            from vllm.v1.worker.cpu.logits_processors import LogitsProcRequestState

            state = LogitsProcRequestState.from_request_state(self.req_states)
            sampler.logits_processors.append(HogwildLogitsProcessor(self.vllm_config, state))
        views, slots = _views(self), self.req_states.index_to_req_id
        for processor in hogwild_processors(self):
            processor.read_outputs(lambda slot: views[slots[slot]].output_token_ids)
        return result

    return wrapper


def _add_requests(original):
    def wrapper(self, scheduler_output):
        result = original(self, scheduler_output)
        runtime.set_runner(self, Batch)
        views = _views(self)
        for new in scheduler_output.scheduled_new_reqs:
            stamp = stamp_of(new.sampling_params)
            if stamp is not None:
                views[new.req_id] = SlotRequest(new.prompt_token_ids, new.block_ids, new.prefill_token_ids)
                runtime.planner(self).add(new.req_id, stamp, views[new.req_id])
        for processor in hogwild_processors(self):
            processor.forget_ended_groups()
        return result

    return wrapper


def _update_requests(original):
    def wrapper(self, scheduler_output):
        result = original(self, scheduler_output)
        views = _views(self)
        if views:
            reqs = scheduler_output.scheduled_cached_reqs
            for req_id, new_ids in zip(reqs.req_ids, reqs.new_block_ids):
                view = views.get(req_id)
                if view is not None and new_ids is not None:
                    for ids, more in zip(view.block_ids, new_ids):
                        ids.extend(more)
        return result

    return wrapper


def _remove_request(original):
    def wrapper(self, req_id):
        slot = self.req_states.req_id_to_index.get(req_id)
        if slot is not None:
            for processor in hogwild_processors(self):
                processor.remove(slot)
        views = _views(self)
        if views:
            views.pop(req_id, None)  # the planner keeps its view: the worker stays in the others'
        return original(self, req_id)

    return wrapper


def _finish_requests(original):
    def wrapper(self, scheduler_output):
        # The last step's tokens reach the workers' lists before this step is planned: the
        # engine fetched them already on the rank that reports; other ranks fetch them here.
        record = state.of(self, state.RunnerState)
        pending, record.pending = record.pending, None
        if pending is not None:
            pending.get_output()
        result = original(self, scheduler_output)
        planner = record.planner
        if scheduler_output.finished_req_ids and planner is not None:
            planner.finish(list(scheduler_output.finished_req_ids))
        return result

    return wrapper


def _prepare_attn(original):
    def wrapper(self, input_batch):
        state.of(self, state.RunnerState).batch = input_batch
        return original(self, input_batch)

    return wrapper


def _sample_tokens(original):
    def wrapper(self, *args, **kwargs):
        record = state.of(self, state.RunnerState)
        batch, record.batch = record.batch, None  # until the next prepare_attn
        output = original(self, *args, **kwargs)
        views = record.requests
        if output is None or batch is None or not views:
            return output
        then: dict[int, list[int]] = {}
        for processor in hogwild_processors(self):
            for index, tokens in processor.take_then().items():
                # The sampled token sits at the row's sequence length; the text follows it.
                start = int(batch.seq_lens_cpu_upper_bound[index]) + 1
                then[index] = _write_after(self, int(batch.idx_mapping_np[index]), start, tokens)
        return _on_output(self, output, lambda out: _record(views, out, then))

    return wrapper


def _write_after(runner: Any, slot: int, start: int, tokens: Any) -> list[int]:
    """Write ``tokens`` into the slot from ``start`` and make them the slot's prefill; returns
    those that fit the model's length."""
    states = runner.req_states
    end = min(start + len(tokens), runner.max_model_len)
    tokens = list(tokens[: end - start])
    if hasattr(states.all_token_ids, "stage_write"):  # the GPU runner's staged device tensors
        states.all_token_ids.stage_write(slot, start, tokens)
        states.all_token_ids.apply_write()
        states.total_len.stage_write_elem(slot, end)
        states.total_len.apply_write()
        states.prefill_len.np[slot] = end
        states.prefill_len.copy_to_uva()
    else:  # the CPU runner's host tensors
        import torch

        states.all_token_ids[slot, start:end] = torch.tensor(tokens, dtype=torch.int32)
        states.total_len[slot] = end
        states.prefill_len[slot] = end
    return tokens


def _on_output(runner: Any, output: Any, record: Callable[[Any], None]) -> Any:
    """Run ``record`` on the step's output once it is on the host: now, or when the engine (or
    the next step, ``_finish_requests``) asks an ``AsyncOutput`` for it."""
    from vllm.v1.outputs import AsyncModelRunnerOutput

    if not isinstance(output, AsyncModelRunnerOutput):
        if output.sampled_token_ids:  # (a pipeline stage before the last samples nothing)
            record(output)
        return output
    fetch, fetched = output.get_output, []

    def get_output():
        if not fetched:
            fetched.append(fetch())
            record(fetched[0])
        return fetched[0]

    output.get_output = get_output
    state.of(runner, state.RunnerState).pending = output
    return output


def _record(views: dict[str, SlotRequest], output: Any, then: dict[int, list[int]]) -> None:
    """Append a forced text's tokens to what the scheduler is told was sampled, and each
    worker's tokens to its list."""
    sampled = output.sampled_token_ids
    for index, tokens in then.items():
        sampled[index].extend(tokens)
    for req_id, tokens in zip(output.req_ids, sampled):
        view = views.get(req_id)
        if view is not None:
            view.output_token_ids.extend(tokens)
