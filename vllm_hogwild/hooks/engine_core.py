"""Engine core: each child of the fan-out becomes its worker's request.

Patches ``EngineCore.preprocess_add_request``.
"""

from __future__ import annotations

from vllm_hogwild.hooks.patching import wrap
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
