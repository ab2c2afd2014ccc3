"""Engine core: each child of the fan-out becomes its worker's request; the plugin's state on request.

Patches ``EngineCore.preprocess_add_request``. Adds the engine-core utility ``hogwild_state``
(vLLM's clients call any engine-core method by name: ``call_utility_async``), which the
server's ``GET /hogwild/state`` reads.
"""

from __future__ import annotations

from typing import Any

from vllm_hogwild.hooks import state
from vllm_hogwild.hooks.patching import group_of, wrap
from vllm_hogwild.worker_requests import stamp_of, worker_prompt


def install() -> None:
    from vllm.v1.engine.core import EngineCore

    def preprocess_add_request(original):
        def wrapper(self, request):
            stamp = stamp_of(request.sampling_params)
            if stamp is not None:
                shared = request.prompt_token_ids[: stamp.prompt_len]
                request.prompt_token_ids = worker_prompt(shared, stamp.framing, stamp.prefix_ids, stamp.worker)
            return original(self, request)

        return wrapper

    wrap(EngineCore, "preprocess_add_request", preprocess_add_request)
    EngineCore.hogwild_state = hogwild_state


def hogwild_state(self) -> dict[str, Any]:
    """What the plugin holds in this engine, as counts (all 0 when no group is live): the
    scheduler's groups and bookkeeping, then each worker's planner and protocol."""
    sched = self.scheduler
    live = {group_of(r) for r in sched.requests.values()} - {None}
    held = state.peek(sched, state.SchedulerState) or state.SchedulerState()
    scheduler = {"groups": len(live),
                 "ended_workers_held": sum(len(v) for v in held.ended.values()),
                 "failing": len(held.failing),
                 "failed_unreported": len(held.failed),
                 "paced_groups": len(held.paced),
                 "windowed_groups": len(getattr(state.peek(sched.kv_cache_manager.coordinator,
                                                           state.CoordinatorState), "reach", {}))}
    return {"scheduler": scheduler, "workers": self.collective_rpc(worker_state)}


def worker_state(worker: Any) -> dict[str, Any]:
    """One worker's planner and protocol state (run on the worker by ``collective_rpc``)."""
    from vllm_hogwild.hooks.sampler import hogwild_processors

    runner = getattr(worker, "worker", worker).model_runner
    planner = getattr(state.peek(runner, state.RunnerState), "planner", None)
    protocol: dict[str, int] = {}
    for p in hogwild_processors(runner):
        for k, v in p.state().items():
            protocol[k] = protocol.get(k, 0) + v
    return {"planner": planner.state() if planner is not None else {}, "protocol": protocol}
