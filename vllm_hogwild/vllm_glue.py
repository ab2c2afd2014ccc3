"""Every hook the plugin puts into vLLM 0.32, in one place (a vLLM upgrade touches this file).

How a hogwild request flows:

* frontend (``InputProcessor.process_inputs``): the flag is validated before anything is
  scheduled; the request then asks vLLM's own parallel-sampling fan-out for W children
  (``n = W``; the greedy check on ``n`` ran when the user built ``SamplingParams`` with
  n=1), so the W worker completions come back as one RequestOutput, in worker order;
  ``ParentRequest.get_child_info`` stamps each child with its worker index and group;
* engine core (``EngineCore.preprocess_add_request``): each child's prompt becomes its
  worker's request: worker 0 holds the shared prompt, every other worker only its own
  copy of the prompt's last token; each then gets its prefix text;
* scheduler: a group is admitted whole (``admission.py``), its workers run before
  ordinary requests (vLLM preempts from the back), and a finished worker's blocks are
  freed only when its whole group has ended (or was aborted);
* model runner (``_update_states``): worker requests are registered with the planner;
  the attention backend (``backend.py``) asks it for the step's views.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

from vllm_hogwild import runtime
from vllm_hogwild.admission import Capacity, GroupDemand, blocks_for
from vllm_hogwild.params import (
    GROUP_KEY,
    PREFIX_IDS_KEY,
    PROMPT_LEN_KEY,
    WORKER_KEY,
    is_hogwild,
    parse,
)

_installed = False


def install() -> None:
    """Patch vLLM once per process (the plugin entry point runs in every vLLM process)."""
    global _installed
    if _installed:
        return
    _installed = True
    from vllm.platforms import current_platform

    _patch_frontend()
    _patch_engine_core()
    _patch_scheduler()
    _patch_model_runner()
    if current_platform.is_cpu():
        from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

        register_backend(AttentionBackendEnum.CPU_ATTN, "vllm_hogwild.backend.HogwildCPUBackend")


def _wrap(cls: type, name: str, make) -> None:
    original = getattr(cls, name)
    setattr(cls, name, make(original))


# ---------------------------------------------------------------- frontend


def _check_model(model_config: Any) -> None:
    cfg = model_config.hf_text_config
    if not any(getattr(cfg, k, None) is not None for k in ("rope_theta", "rope_parameters", "rope_scaling")):
        raise ValueError(
            f"hogwild_workers: model {model_config.model!r} has no rotary position embedding "
            "(RoPE); hogwild needs a RoPE model (Llama, Qwen2, Qwen3, Mistral, ...)"
        )
    if model_config.get_sliding_window() is not None:
        raise ValueError("hogwild_workers: sliding-window attention models are not supported")


def _check_lengths(engine: Any, params: Any, prompt_len: int, prefixes: list[list[int]]) -> int:
    """The views must fit the model and the group's prefill one step; returns max_tokens."""
    max_len = engine.model_config.max_model_len
    workers = len(prefixes)
    room = max_len - prompt_len - sum(len(p) for p in prefixes)
    if params.max_tokens is None:
        if room < workers:
            raise ValueError(
                f"max_tokens: the prompt ({prompt_len} tokens) leaves no room for {workers} workers "
                f"within max_model_len={max_len}"
            )
        return room // workers
    if params.max_tokens * workers > room:
        raise ValueError(
            f"max_tokens: {workers} workers x max_tokens={params.max_tokens} plus the prompt "
            f"({prompt_len} tokens) and prefixes exceed max_model_len={max_len}; allowed: "
            f"max_tokens <= {max(room, 0) // workers}"
        )
    prefill = prompt_len + sum(len(p) for p in prefixes) + workers - 1
    budget = engine.vllm_config.scheduler_config.max_num_batched_tokens
    if prefill > budget:
        raise ValueError(
            f"prompt: a hogwild group prefills its prompt and every worker's prefix in one step "
            f"({prefill} tokens), more than max_num_batched_tokens={budget}; raise it or shorten the prompt"
        )
    return params.max_tokens


def _patch_frontend() -> None:
    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.engine.parallel_sampling import ParentRequest

    def process_inputs(original):
        def wrapper(self, request_id, prompt, params, *args, **kwargs):
            extra = getattr(params, "extra_args", None)
            if not isinstance(params, SamplingParams) or not is_hogwild(extra):
                return original(self, request_id, prompt, params, *args, **kwargs)
            hog = parse(extra)
            if params.n != 1:
                raise ValueError(
                    f"n: a hogwild request takes n=1 (got {params.n}); its "
                    f"hogwild_workers={hog.workers} worker completions are the choices"
                )
            _check_model(self.model_config)
            request = original(self, request_id, prompt, params, *args, **kwargs)
            if request.prompt_embeds is not None or request.mm_features or not request.prompt_token_ids:
                raise ValueError("prompt: hogwild takes a non-empty text or token-id prompt (no embeddings or images)")
            tokenizer = self.tokenizer
            prefixes = [tokenizer.encode(p, add_special_tokens=False) for p in hog.prefixes] if hog.prefixes \
                else [[] for _ in range(hog.workers)]
            prompt_len = len(request.prompt_token_ids)
            sp = request.sampling_params
            sp.max_tokens = _check_lengths(self, params, prompt_len, prefixes)
            sp.extra_args = {**sp.extra_args, PROMPT_LEN_KEY: prompt_len, PREFIX_IDS_KEY: prefixes}
            sp.n = hog.workers
            sp.skip_reading_prefix_cache = True
            # A salt of its own keeps the group's blocks (whose keys depend on the other
            # workers) out of every other request's prefix-cache hits.
            request.cache_salt = f"hogwild-{uuid.uuid4().hex}"
            return request

        return wrapper

    def get_child_info(original):
        def wrapper(self, index: int):
            child_id, params = original(self, index)
            extra = params.extra_args
            if extra and PROMPT_LEN_KEY in extra:
                params = params.clone()
                params.extra_args = {**extra, WORKER_KEY: index, GROUP_KEY: self.request_id}
            return child_id, params

        return wrapper

    _wrap(InputProcessor, "process_inputs", process_inputs)
    _wrap(ParentRequest, "get_child_info", get_child_info)


# ---------------------------------------------------------------- engine core


def _patch_engine_core() -> None:
    from vllm.v1.engine.core import EngineCore

    def preprocess_add_request(original):
        def wrapper(self, request):
            sp = request.sampling_params
            extra = sp.extra_args if sp is not None else None
            if extra and WORKER_KEY in extra:
                worker, prompt_len = int(extra[WORKER_KEY]), int(extra[PROMPT_LEN_KEY])
                shared = list(request.prompt_token_ids[:prompt_len])
                own = shared if worker == 0 else shared[-1:]
                request.prompt_token_ids = own + list(extra[PREFIX_IDS_KEY][worker])
            return original(self, request)

        return wrapper

    _wrap(EngineCore, "preprocess_add_request", preprocess_add_request)


# ---------------------------------------------------------------- scheduler


def _group_of(request: Any) -> str | None:
    sp = request.sampling_params
    extra = sp.extra_args if sp is not None else None
    return extra.get(GROUP_KEY) if extra else None


def _patch_scheduler() -> None:
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.request import RequestStatus

    def schedule(original):
        def wrapper(self, *args, **kwargs):
            groups: dict[str, list[Any]] = defaultdict(list)
            for request in self.requests.values():
                key = _group_of(request)
                if key is not None and not request.is_finished():
                    groups[key].append(request)
            if not groups:
                return original(self, *args, **kwargs)
            # Workers first: under KV pressure vLLM preempts from the back of `running`.
            self.running.sort(key=lambda r: _group_of(r) is None)
            admitted, held = _admit(self, groups, RequestStatus.WAITING)
            self.waiting.remove_requests(held + [r for key in admitted for r in groups[key]])
            self.waiting.prepend_requests(reversed([r for key in admitted for r in groups[key]]))
            try:
                output = original(self, *args, **kwargs)
            finally:
                self.waiting.prepend_requests(held)
            _check_whole(output, admitted, groups)
            return output

        return wrapper

    def free_blocks(original):
        def wrapper(self, request):
            key = _group_of(request)
            if key is None:
                return original(self, request)
            ended = self.__dict__.setdefault("_hogwild_ended", defaultdict(list))
            ended[key].append(request)
            if len(ended[key]) < parse(request.sampling_params.extra_args).workers:
                return None  # the others still read this worker's keys
            for member in ended.pop(key):
                original(self, member)
            return None

        return wrapper

    _wrap(Scheduler, "schedule", schedule)
    _wrap(Scheduler, "_free_blocks", free_blocks)


def _admit(sched: Any, groups: dict[str, list[Any]], waiting_status: Any) -> tuple[list[str], list[Any]]:
    """Which waiting groups start now (in arrival order) and which requests wait."""
    bs = sched.block_size
    pool = sched.kv_cache_manager.block_pool
    running_need = sum(max(0, r.num_tokens_with_spec - r.num_computed_tokens) for r in sched.running)
    active = [reqs for reqs in groups.values() if any(r.status != waiting_status for r in reqs)]
    reserved = sum(blocks_for(r.num_prompt_tokens + r.max_tokens, bs) for reqs in active for r in reqs)
    capacity = Capacity(
        tokens=sched.max_num_scheduled_tokens - running_need,
        seats=sched.max_num_running_reqs - len(sched.running),
        free_blocks=pool.get_num_free_blocks() - len(sched.running),
        unreserved_blocks=pool.num_gpu_blocks - 1 - reserved,
        block_size=bs,
    )
    waiting = sorted(
        (key for key, reqs in groups.items() if all(r.status == waiting_status for r in reqs)),
        key=lambda key: min(r.arrival_time for r in groups[key]),
    )
    admitted, held, blocked = [], [], False
    for key in waiting:
        reqs = sorted(groups[key], key=lambda r: r.sampling_params.extra_args[WORKER_KEY])
        complete = len(reqs) == parse(reqs[0].sampling_params.extra_args).workers
        demand = GroupDemand(tuple(r.num_prompt_tokens for r in reqs), reqs[0].max_tokens)
        if not blocked and complete and capacity.take(demand):
            admitted.append(key)
            groups[key] = reqs
        else:
            blocked = blocked or complete  # first come, first served among groups
            held.extend(reqs)
    return admitted, held


def _check_whole(output: Any, admitted: list[str], groups: dict[str, list[Any]]) -> None:
    """A group runs whole or not at all: anything else is a bug, never silent."""
    for key in admitted:
        for r in groups[key]:
            if output.num_scheduled_tokens.get(r.request_id) != r.num_prompt_tokens:
                raise RuntimeError(f"hogwild: group {key} was only partly admitted (request {r.request_id})")
    preempted = output.preempted_req_ids or ()
    for key, reqs in groups.items():
        if any(r.request_id in preempted for r in reqs):
            raise RuntimeError(f"hogwild: a worker of group {key} was preempted")


# ---------------------------------------------------------------- model runner


def _patch_model_runner() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    def update_states(original):
        def wrapper(self, scheduler_output):
            result = original(self, scheduler_output)
            runtime.set_runner(self)
            for new in scheduler_output.scheduled_new_reqs:
                sp = new.sampling_params
                if sp is not None and sp.extra_args and WORKER_KEY in sp.extra_args:
                    runtime.planner(self).add(new.req_id, sp.extra_args, self.requests[new.req_id])
            if scheduler_output.finished_req_ids and getattr(self, "_hogwild_planner", None) is not None:
                self._hogwild_planner.finish(list(scheduler_output.finished_req_ids))
            return result

        return wrapper

    _wrap(GPUModelRunner, "_update_states", update_states)
