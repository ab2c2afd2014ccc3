"""The protocol's logits processor for Model Runner V2 (vLLM 0.34): rows are request slots.

vLLM's GPU runner loads it from the ``vllm.logits_processors`` entry point (V2 interface);
the standalone CPU runner takes no custom processors, so ``model_runner_v2`` adds it to that
runner's sampler. A slot's request enters through ``add_request``; the runner adapter tells
it when one leaves (``remove``: V2 processors are not told) and where each worker's output
tokens are (``read_outputs``: host lists, so a step reads no device memory but the logits).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor

from vllm_hogwild.hooks.sampler import ProtocolRows


def host(x: Any) -> np.ndarray:
    """A runner buffer's host array (the CPU runner's plain tensors; the GPU runner's host copies)."""
    found = getattr(x, "np", None)
    if found is not None:
        return found
    cpu = getattr(x, "cpu", None)
    return (cpu if cpu is not None and not callable(cpu) else x).numpy()


class HogwildLogitsProcessor(ProtocolRows, LogitsProcessor):
    """``ProtocolRows`` keyed by request slot; a step's rows are its batch positions."""

    def __init__(self, vllm_config: Any, req_states: Any) -> None:
        ProtocolRows.__init__(self, vllm_config)
        self._state = req_states
        self._outputs: Callable[[int], list[int]] | None = None

    def read_outputs(self, outputs: Callable[[int], list[int]]) -> None:
        """Where a slot's output tokens so far are: the runner hook's host lists (``model_runner_v2``)."""
        self._outputs = outputs

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """The hogwild field is validated by the frontend hook (``check_request``)."""

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        return self.add(req_idx, sampling_params)

    def apply(self, logits: Any, ctx: Any) -> Any:
        self._then = {}
        if not self.rows:
            return logits
        prefill_len = host(self._state.prefill_len)
        rows = {}
        for b, (slot, seq_len) in enumerate(zip(ctx.idx_mapping_np.tolist(), ctx.seq_lens_upper_bound_np.tolist())):
            # A row short of its prefill is a chunk whose sample is thrown away.
            if slot in self.rows and seq_len >= prefill_len[slot]:
                rows[slot] = b
        return self.step(logits, rows, self._outputs)


def hogwild_processors(runner: Any) -> list[HogwildLogitsProcessor]:
    sampler = getattr(runner, "sampler", None)
    return [p for p in getattr(sampler, "logits_processors", ()) if isinstance(p, HogwildLogitsProcessor)]
