"""Model runner: worker requests are registered with the planner, which the attention backends ask for views.

Patches ``GPUModelRunner._update_states``.
"""

from __future__ import annotations

from vllm_hogwild import runtime
from vllm_hogwild.hooks.patching import wrap
from vllm_hogwild.worker_requests import stamp_of


def install() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    def update_states(original):
        def wrapper(self, scheduler_output):
            result = original(self, scheduler_output)
            runtime.set_runner(self)
            for new in scheduler_output.scheduled_new_reqs:
                stamp = stamp_of(new.sampling_params)
                if stamp is not None:
                    runtime.planner(self).add(new.req_id, stamp, self.requests[new.req_id])
            if scheduler_output.finished_req_ids and getattr(self, "_hogwild_planner", None) is not None:
                self._hogwild_planner.finish(list(scheduler_output.finished_req_ids))
            return result

        return wrapper

    wrap(GPUModelRunner, "_update_states", update_states)
