"""The protocol's logits processor for vLLM 0.32's V1 model runner: rows are batch indices,
kept in step by the runner's ``BatchUpdate``s (added, removed, moved)."""

from __future__ import annotations

from typing import Any

from vllm.v1.sample.logits_processor import LogitsProcessor

from vllm_hogwild import runtime
from vllm_hogwild.hooks.sampler import ProtocolRows


class HogwildLogitsProcessor(ProtocolRows, LogitsProcessor):
    """``ProtocolRows`` keyed by batch index; each row's output list is the runner's own
    (``BatchUpdate.added`` hands it over live)."""

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        ProtocolRows.__init__(self, vllm_config)
        self._outputs: dict[int, list[int]] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: Any) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.remove(index)
            self._outputs.pop(index, None)
        for index, params, _, output_ids in batch_update.added:
            self._outputs.pop(index, None)
            if self.add(index, params):
                self._outputs[index] = output_ids
        for a, b, direction in batch_update.moved:
            for table in (self.rows, self._outputs):
                row_a, row_b = table.pop(a, None), table.pop(b, None)
                if row_a is not None:
                    table[b] = row_a
                if row_b is not None and direction.name == "SWAP":
                    table[a] = row_b
        self.forget_ended_groups()

    def apply(self, logits: Any) -> Any:
        self._then = {}
        if not self.rows:
            return logits
        discarded = runtime.discarded_rows()
        rows = {i: i for i in self.rows if discarded is None or not discarded[i]}
        return self.step(logits, rows, self._outputs.__getitem__)


def hogwild_processors(runner: Any) -> list[HogwildLogitsProcessor]:
    return [p for p in runner.input_batch.logitsprocs.all if isinstance(p, HogwildLogitsProcessor)]
