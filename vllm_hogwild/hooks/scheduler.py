"""Scheduler: a group is admitted whole, runs before ordinary requests, and frees its blocks together.

Patches ``Scheduler.schedule``, ``Scheduler._reserve_prefill_lookahead``,
``Scheduler._free_blocks`` and ``Scheduler.update_from_output``.

A think-while-answering group's writer waits for the thoughts under a per-request cap
(``pacing.py``), through the same ``_reserve_prefill_lookahead``.

Admission policy is ``admission.py``; the workers of running groups go first in vLLM's
running list (vLLM preempts from the back); a finished worker's blocks are freed only when
its whole group has ended (or was aborted); a group whose workers do not all arrive within
``GROUP_ASSEMBLY_SECONDS`` fails instead of waiting forever.

What a group's blocks may do in vLLM's prefix cache and window freeing is ``kv_cache.py``'s.

A group too long for one step *leads* (``admission.py``): vLLM chunks worker 0's prompt as
it chunks any long prompt, and ``_reserve_prefill_lookahead`` (where vLLM already caps a
chunk per request) stops each chunk at the end of the shared prompt until the other
workers join, so worker 0 never starts before them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from vllm.logger import init_logger

from vllm_hogwild import admission, runtime
from vllm_hogwild.admission import Capacity, GroupDemand, blocks_for
from vllm_hogwild.hooks import pacing, state
from vllm_hogwild.hooks.patching import group_of, wrap
from vllm_hogwild.worker_requests import prompt_tails, stamp_of

logger = init_logger(__name__)


def install() -> None:
    from vllm.v1.core.sched.scheduler import Scheduler

    wrap(Scheduler, "schedule", _schedule)
    wrap(Scheduler, "_reserve_prefill_lookahead", _reserve_prefill_lookahead)
    wrap(Scheduler, "_free_blocks", _free_blocks)
    wrap(Scheduler, "update_from_output", _update_from_output)


def _schedule(original):
    from vllm.v1.request import RequestStatus

    def wrapper(self, *args, **kwargs):
        groups: dict[str, list[Any]] = defaultdict(list)
        for request in self.requests.values():
            key = group_of(request)
            if key is not None and not request.is_finished():
                groups[key].append(request)
        _fail_unassembled(self, groups, RequestStatus)
        record = state.of(self, state.SchedulerState)
        # The coordinator is told the requests whose blocks it must keep, and each group's
        # workers, ended ones included (what its windowed layers may free: kv_cache.py).
        coordinator = state.of(self.kv_cache_manager.coordinator, state.CoordinatorState)
        coordinator.requests, coordinator.step = self.requests, coordinator.step + 1
        coordinator.groups = {key: reqs + record.ended.get(key, []) for key, reqs in groups.items()}
        for key in [k for k in coordinator.reach if k not in coordinator.groups]:
            del coordinator.reach[key]  # an ended group's copy of its commits (kv_cache.py)
        if groups and record.decode is None:
            record.decode = runtime.token_texts(self.vllm_config.model_config)
        coordinator.decode = record.decode
        if record.paced or any(stamp_of(reqs[0].sampling_params).flag.is_async for reqs in groups.values()):
            record.caps = pacing.caps(record.paced, groups, record.decode, RequestStatus.WAITING)
        if not groups:
            return original(self, *args, **kwargs)
        # Workers first: under KV pressure vLLM preempts from the back of `running`.
        self.running.sort(key=lambda r: group_of(r) is None)
        plan = _admit(self, groups, RequestStatus.WAITING)
        if plan.held or plan.starting:  # (vLLM's remove rebuilds the waiting queue)
            self.waiting.remove_requests(plan.held + plan.starting)
            self.waiting.prepend_requests(reversed(plan.starting))
        record.hold = plan.hold
        try:
            output = original(self, *args, **kwargs)
        finally:
            record.hold = {}
            self.waiting.prepend_requests(plan.held)
        _check_whole(output, plan, groups, record.caps)
        record.caps = {}
        return output

    return wrapper


def _reserve_prefill_lookahead(original):
    def wrapper(self, request, num_computed_tokens, num_new_tokens):
        num_new_tokens = original(self, request, num_computed_tokens, num_new_tokens)
        record = state.peek(self, state.SchedulerState)
        if record is None:
            return num_new_tokens
        shared = record.hold.get(request.request_id)
        if shared is not None:  # a leading worker 0 whose group does not join this step
            num_new_tokens = max(0, min(num_new_tokens, shared - num_computed_tokens))
        return pacing.cap(record.caps, request, num_computed_tokens, num_new_tokens)  # a waiting writer

    return wrapper


def _free_blocks(original):
    def wrapper(self, request):
        key = group_of(request)
        record = state.of(self, state.SchedulerState)
        if key is None or key in record.failing:
            return original(self, request)
        ended = record.ended
        ended[key].append(request)
        if len(ended[key]) < stamp_of(request.sampling_params).flag.workers:
            return None  # the others still read this worker's keys
        record.paced.pop(key, None)
        for member in ended.pop(key):
            original(self, member)
        return None

    return wrapper


def _update_from_output(original):
    def wrapper(self, *args, **kwargs):
        outputs = original(self, *args, **kwargs)
        record = state.peek(self, state.SchedulerState)
        if record is not None and record.paced:
            pacing.end_thinkers(self, record.paced, outputs)
        failed = record.failed if record is not None else []
        if failed:
            record.failed = []
            from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs

            for request in failed:
                outputs.setdefault(request.client_index, EngineCoreOutputs()).outputs.append(EngineCoreOutput(
                    request_id=request.request_id, new_token_ids=[],
                    finish_reason=request.get_finished_reason()))
        return outputs

    return wrapper


def _fail_unassembled(sched: Any, groups: dict[str, list[Any]], status: Any) -> None:
    """Fail a group whose workers have not all reached this scheduler within
    ``admission.GROUP_ASSEMBLY_SECONDS`` of its arrival (they never will: nothing waits forever).
    Its requests end with an error (HTTP 500); the cause goes to the engine's log."""
    now = time.time()
    for key, reqs in list(groups.items()):
        # Only a group never admitted (all waiting) can lack a worker for good; once admitted,
        # a group that lost a worker has only seen it finish. Cheap tests first: this runs
        # every step for every running group.
        if any(r.status != status.WAITING for r in reqs):
            continue
        waited = now - min(r.arrival_time for r in reqs)
        workers = stamp_of(reqs[0].sampling_params).flag.workers
        if len(reqs) == workers or waited <= admission.GROUP_ASSEMBLY_SECONDS:
            continue
        logger.error("hogwild: group %s failed: only %d of its %d worker requests reached this engine in "
                     "%.0f s (with data parallel, were they placed on different engines?)",
                     key, len(reqs), workers, waited)
        del groups[key]
        failing = state.of(sched, state.SchedulerState).failing
        failing.add(key)
        try:
            sched.finish_requests([r.request_id for r in reqs], status.FINISHED_ERROR)
        finally:
            failing.discard(key)
        state.of(sched, state.SchedulerState).failed.extend(reqs)


@dataclass
class _Admission:
    """This step's decisions, by group key: ``whole`` groups start in this step; ``joining``
    ones start their other workers beside worker 0's last chunk. ``hold``: workers 0
    (request id) leading their group, that must not prefill past the shared prompt (its
    length) this step. ``held``: waiting requests that stay waiting."""

    whole: list[str] = field(default_factory=list)
    joining: list[str] = field(default_factory=list)
    hold: dict[str, int] = field(default_factory=dict)
    held: list[Any] = field(default_factory=list)
    starting: list[Any] = field(default_factory=list)  # waiting requests scheduled first, in the order decided


def _leading(reqs: list[Any], waiting_status: Any) -> bool:
    """Worker 0 of this group (reqs in worker order) runs alone, its prompt not done (a
    think-while-answering writer waits with its prompt's last token, its thinker running)."""
    first = reqs[0]
    return (first.status != waiting_status and first.num_computed_tokens < first.num_prompt_tokens
            and all(r.status == waiting_status for r in reqs[1:]))


def _admit(sched: Any, groups: dict[str, list[Any]], waiting_status: Any) -> _Admission:
    """Which waiting groups start now, lead or join (in arrival order), and which requests wait."""
    # Groups not yet started (a waiting worker, or a prompt not done), in worker order.
    for key, reqs in groups.items():
        if any(r.status == waiting_status or r.num_computed_tokens < r.num_prompt_tokens for r in reqs):
            reqs.sort(key=lambda r: stamp_of(r.sampling_params).worker)
    candidates = sorted(
        (key for key, reqs in groups.items()
         if all(r.status == waiting_status for r in reqs) or _leading(reqs, waiting_status)),
        key=lambda key: min(r.arrival_time for r in groups[key]),
    )
    plan, blocked = _Admission(), False
    if not candidates:  # every group running (a decode step): nothing to decide
        return plan
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
    for key in candidates:
        reqs = groups[key]
        stamp = stamp_of(reqs[0].sampling_params)
        complete = len(reqs) == stamp.flag.workers
        demand = GroupDemand(tuple(r.num_prompt_tokens for r in reqs), reqs[0].max_tokens,
                             shared=prompt_tails(stamp.prompt_len, stamp.flag.workers)[0])
        if _leading(reqs, waiting_status):
            if not blocked and capacity.join(demand, reqs[0].num_computed_tokens):
                plan.joining.append(key)
                plan.starting.extend(reqs[1:])
            else:
                blocked = True
                plan.hold[reqs[0].request_id] = demand.shared
                plan.held.extend(reqs[1:])
        elif not blocked and complete and capacity.take(demand):
            plan.whole.append(key)
            plan.starting.extend(reqs)
        elif not blocked and complete and capacity.lead(demand):
            plan.starting.append(reqs[0])
            plan.hold[reqs[0].request_id] = demand.shared
            plan.held.extend(reqs[1:])
            blocked = True  # first come, first served among groups
        else:
            blocked = blocked or complete
            plan.held.extend(reqs)
    return plan


def _check_whole(output: Any, plan: _Admission, groups: dict[str, list[Any]], caps: dict[str, int]) -> None:
    """A group starts whole or not at all: anything else is a bug, never silent."""
    scheduled = output.num_scheduled_tokens

    def fail(key: str, what: str) -> None:
        raise RuntimeError(f"hogwild: group {key} {what}")

    def prompt_end(r: Any) -> int:  # where a starting worker's prompt is computed to (a waiting writer:
        return min(r.num_prompt_tokens, caps.get(r.request_id, r.num_prompt_tokens))  # all but its last token)

    def whole_prompt(r: Any) -> bool:  # scheduled, its prompt computed by the end of the step (a
        return r.request_id in scheduled and r.num_computed_tokens == prompt_end(r)  # hit, then the rest)

    for key in plan.whole:
        for r in groups[key]:
            if not whole_prompt(r):
                fail(key, f"was only partly admitted (request {r.request_id})")
    for key in plan.joining:
        if groups[key][0].num_computed_tokens != prompt_end(groups[key][0]):
            fail(key, "started its workers before worker 0's prompt was done")
        for r in groups[key][1:]:
            if not whole_prompt(r):
                fail(key, f"was only partly admitted (request {r.request_id})")
    for key in (k for k in groups if groups[k][0].request_id in plan.hold):  # leading, or led and waiting
        first = groups[key][0]
        if first.num_computed_tokens > plan.hold[first.request_id]:
            fail(key, "prefilled worker 0 past the shared prompt before its workers joined")
        if any(r.request_id in scheduled for r in groups[key][1:]):
            fail(key, "started a worker before the group joined")
    preempted = output.preempted_req_ids or ()
    for key, reqs in groups.items():
        if any(r.request_id in preempted for r in reqs):
            raise RuntimeError(f"hogwild: a worker of group {key} was preempted")
