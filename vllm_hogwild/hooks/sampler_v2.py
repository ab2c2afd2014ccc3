"""The protocol's logits processor for Model Runner V2 (vLLM 0.34): rows are request slots.

vLLM's GPU runner loads it from the ``vllm.logits_processors`` entry point (V2 interface);
the standalone CPU runner takes no custom processors, so ``model_runner_v2`` adds it to that
runner's sampler. A slot's request enters through ``add_request``; the runner adapter tells
it when one leaves (``remove``: V2 processors are not told). The processor reads each
worker's tokens off the runner's request state (host tensors on the CPU runner).
"""

from __future__ import annotations

from typing import Any

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
        self._outputs: dict[int, list[int]] = {}  # slot -> the worker's output tokens so far

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """The hogwild field is validated by the frontend hook (``check_request``)."""

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        self._outputs.pop(req_idx, None)
        if not self.add(req_idx, sampling_params):
            return False
        self._outputs[req_idx] = []
        return True

    def remove(self, key: Any) -> None:
        super().remove(key)
        self._outputs.pop(key, None)

    def _output(self, slot: int) -> list[int]:
        out = self._outputs[slot]
        start = int(host(self._state.prompt_len)[slot]) + len(out)
        end = int(host(self._state.total_len)[slot])
        if end > start:
            out.extend(host(self._state.all_token_ids)[slot, start:end].tolist())
        return out

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
        return self.step(logits, rows, self._output)


def hogwild_processors(runner: Any) -> list[HogwildLogitsProcessor]:
    sampler = getattr(runner, "sampler", None)
    return [p for p in getattr(sampler, "logits_processors", ()) if isinstance(p, HogwildLogitsProcessor)]
