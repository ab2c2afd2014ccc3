"""The model-runner seam on Model Runner V2 (vLLM 0.34): the standalone CPU runner.

Patches ``StandaloneCPUModelRunner.load_model``, ``StandaloneCPUModelRunner.add_requests``,
``StandaloneCPUModelRunner.update_requests``, ``StandaloneCPUModelRunner._remove_request``,
``StandaloneCPUModelRunner.finish_requests``, ``StandaloneCPUModelRunner.prepare_attn`` and
``StandaloneCPUModelRunner.sample_tokens``.

Model Runner V2 keeps no per-request objects: a request is a slot in ``req_states`` (its
tokens, prompt, prefill and total lengths) and rows of ``block_tables``. The planner reads a
worker through ``SlotRequest`` (the prompt and block ids the scheduler handed over, the
output tokens off the slot). A step's batch order is the ``InputBatch`` that ``prepare_attn``
receives, just before the attention builders run.

A forced text: vLLM's scheduler appends every token the runner reports for a request and
schedules all of them whose keys are not computed next step. Model Runner V2 feeds a decode
row only its last sampled token, so the hook writes the text after the sampled token into
the slot's tokens and moves the slot's prefill length to their end: next step the runner
feeds them as a prefill chunk (the way it resumes a preempted request with output), and
samples at its end.

The CPU runner's sampler takes no custom logits processors; ``load_model`` adds the
protocol's (``sampler_v2``) to it.
"""

from __future__ import annotations

from typing import Any

from vllm_hogwild import runtime
from vllm_hogwild.hooks.patching import wrap
from vllm_hogwild.hooks.sampler_v2 import HogwildLogitsProcessor, hogwild_processors, host
from vllm_hogwild.worker_requests import stamp_of


class SlotRequest:
    """What the planner reads of a worker (``planner.RunnerRequest``) on Model Runner V2."""

    def __init__(self, runner: Any, req_id: str, prompt_token_ids: list[int], block_ids: Any) -> None:
        self._runner, self._req_id = runner, req_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.block_ids = tuple(list(ids) for ids in block_ids)
        self._final: list[int] | None = None

    def leave(self) -> None:
        """The slot is about to be freed: keep the tokens (a finished worker stays in others' views)."""
        self._final = self.output_token_ids

    @property
    def output_token_ids(self) -> list[int]:
        if self._final is not None:
            return self._final
        states = self._runner.req_states
        slot = states.req_id_to_index[self._req_id]
        start = int(host(states.prompt_len)[slot])
        return host(states.all_token_ids)[slot, start:int(host(states.total_len)[slot])].tolist()


class Batch:
    """This step's batch: the ``InputBatch`` recorded at ``prepare_attn``."""

    @staticmethod
    def req_ids(runner: Any) -> list[str]:
        batch = getattr(runner, "_hogwild_batch", None)
        return [] if batch is None else batch.req_ids  # (a dummy batch: no request of ours)

    @staticmethod
    def discarded(runner: Any) -> Any:
        batch = getattr(runner, "_hogwild_batch", None)
        if batch is None:
            return None
        prefill = host(runner.req_states.prefill_len)[batch.idx_mapping_np]
        return batch.seq_lens[: batch.num_reqs].numpy() < prefill


def runner_kind() -> str:
    """The standalone CPU runner (hooked here) or the GPU one (not yet)."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and current_platform.uses_standalone_cpu_model_runner():
        return "standalone CPU"
    return "V2 GPU"


def install() -> None:
    if runner_kind() != "standalone CPU":
        return  # the GPU runner is not hooked: hogwild requests are refused there (support.RUNNERS)
    from vllm.v1.worker.cpu.standalone_model_runner import StandaloneCPUModelRunner

    wrap(StandaloneCPUModelRunner, "load_model", _load_model)
    wrap(StandaloneCPUModelRunner, "add_requests", _add_requests)
    wrap(StandaloneCPUModelRunner, "update_requests", _update_requests)
    wrap(StandaloneCPUModelRunner, "_remove_request", _remove_request)
    wrap(StandaloneCPUModelRunner, "finish_requests", _finish_requests)
    wrap(StandaloneCPUModelRunner, "prepare_attn", _prepare_attn)
    wrap(StandaloneCPUModelRunner, "sample_tokens", _sample_tokens)


def _load_model(original):
    def wrapper(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        sampler = getattr(self, "sampler", None)
        if sampler is not None and not hogwild_processors(self):
            from vllm.v1.worker.cpu.logits_processors import LogitsProcRequestState

            state = LogitsProcRequestState.from_request_state(self.req_states)
            sampler.logits_processors.append(HogwildLogitsProcessor(self.vllm_config, state))
        return result

    return wrapper


def _add_requests(original):
    def wrapper(self, scheduler_output):
        result = original(self, scheduler_output)
        runtime.set_runner(self, Batch)
        views = self.__dict__.setdefault("_hogwild_requests", {})
        for new in scheduler_output.scheduled_new_reqs:
            stamp = stamp_of(new.sampling_params)
            if stamp is not None:
                views[new.req_id] = SlotRequest(self, new.req_id, new.prompt_token_ids, new.block_ids)
                runtime.planner(self).add(new.req_id, stamp, views[new.req_id])
        for processor in hogwild_processors(self):
            processor.forget_ended_groups()
        return result

    return wrapper


def _update_requests(original):
    def wrapper(self, scheduler_output):
        result = original(self, scheduler_output)
        views = self.__dict__.get("_hogwild_requests")
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
        views = self.__dict__.get("_hogwild_requests")
        view = views.pop(req_id, None) if views else None
        if view is not None and slot is not None:
            view.leave()
        return original(self, req_id)

    return wrapper


def _finish_requests(original):
    def wrapper(self, scheduler_output):
        result = original(self, scheduler_output)
        planner = getattr(self, "_hogwild_planner", None)
        if scheduler_output.finished_req_ids and planner is not None:
            planner.finish(list(scheduler_output.finished_req_ids))
        return result

    return wrapper


def _prepare_attn(original):
    def wrapper(self, input_batch):
        self._hogwild_batch = input_batch
        return original(self, input_batch)

    return wrapper


def _sample_tokens(original):
    def wrapper(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        self._hogwild_batch = None  # until the next real step's prepare_attn
        if output is None or not getattr(output, "sampled_token_ids", None):
            return output
        states = self.req_states
        for processor in hogwild_processors(self):
            for index, then in processor.take_then().items():
                sampled = output.sampled_token_ids
                if index >= len(sampled) or not sampled[index]:
                    continue  # the row's sample was discarded: nothing follows it
                slot = states.req_id_to_index[output.req_ids[index]]
                start = int(states.total_len[slot])
                end = min(start + len(then), self.max_model_len)
                then = list(then[: end - start])
                states.all_token_ids[slot, start:end] = torch_tensor(then)
                states.total_len[slot] = end
                host(states.prefill_len)[slot] = end
                sampled[index].extend(then)
        return output

    return wrapper


def torch_tensor(ids: list[int]) -> Any:
    import torch

    return torch.tensor(ids, dtype=torch.int32)
