"""Data parallel: every worker of a group on one engine.

Patches ``DPLBAsyncMPClient.get_core_engine_for_request``.
"""

from __future__ import annotations

import time

from vllm_hogwild import admission
from vllm_hogwild.hooks import state
from vllm_hogwild.hooks.patching import group_of, wrap
from vllm_hogwild.worker_requests import stamp_of


def install() -> None:
    """Data parallel: all W worker requests of a group go to one engine.

    vLLM's load balancer (``DPLBAsyncMPClient.get_core_engine_for_request``) places each
    request of a fan-out on its own, so a group's workers could land on different engines,
    where admission would wait for the rest of the group. The first worker of a group is
    placed by vLLM's own balancing; the others get its rank as ``data_parallel_rank``
    (a rank the user gave is already on every worker, as vLLM copies it from the parent).
    """
    from vllm.v1.engine.core_client import DPLBAsyncMPClient

    def get_core_engine_for_request(original):
        def wrapper(self, request):
            group = group_of(request)
            if group is None or request.data_parallel_rank is not None:
                return original(self, request)
            placed = state.of(self, state.ClientState).placed
            now = time.monotonic()
            for key in [k for k, (_, _, at) in placed.items() if now - at > admission.GROUP_ASSEMBLY_SECONDS]:
                del placed[key]  # a fan-out that failed half-way
            if group in placed:
                rank, left, at = placed.pop(group)
                if left > 1:
                    placed[group] = (rank, left - 1, at)
                request.data_parallel_rank = rank
                return original(self, request)
            engine = original(self, request)
            workers = stamp_of(request.sampling_params).flag.workers
            if workers > 1:
                placed[group] = (self.core_engines.index(engine), workers - 1, now)
            return engine

        return wrapper

    wrap(DPLBAsyncMPClient, "get_core_engine_for_request", get_core_engine_for_request)
