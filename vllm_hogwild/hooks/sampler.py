"""Sampler: the protocol's forced and greedy tokens, as a logits processor.

Patches nothing: vLLM loads ``HogwildLogitsProcessor`` through the ``vllm.logits_processors``
entry point.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from vllm.v1.sample.logits_processor import LogitsProcessor

from vllm_hogwild import runtime
from vllm_hogwild.hooks.patching import stop_tokens
from vllm_hogwild.protocol import GroupProtocol
from vllm_hogwild.worker_requests import stamp_of


class HogwildLogitsProcessor(LogitsProcessor):
    """Applies the protocol's per-step ``Action``s (``protocol.py``) to the logits rows of
    hogwild workers; every other row is left alone. Loaded in every engine through the
    ``vllm.logits_processors`` entry point.

    ``worker_steps`` and ``forced_steps`` count, since the engine started, the protocol
    workers' sampled rows and those whose token was forced (benchmarks read them).

    A forced text's tokens after the first (``Action.then``) wait in ``take_then`` for the
    model runner's hook, which appends them to the worker's output right after sampling."""

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        self.worker_steps = 0
        self.forced_steps = 0
        self._model_config = vllm_config.model_config
        self._rows: dict[int, tuple[str, int, list[int]]] = {}  # batch index -> (group, worker, outputs)
        self._groups: dict[str, GroupProtocol] = {}
        self._ended: dict[str, set[int]] = defaultdict(set)
        self._decode = None
        self._encode = None
        self._then: dict[int, tuple[int, ...]] = {}  # batch index -> forced tokens after the sampled one
        config = vllm_config.scheduler_config
        # The runner's hook appends them where it has this step's tokens on the host: not
        # with async scheduling.
        self._whole_texts = not getattr(config, "async_scheduling", False)

    def is_argmax_invariant(self) -> bool:
        return False

    def take_then(self) -> dict[int, tuple[int, ...]]:
        """This step's forced tokens after the sampled one, by batch index (then forgotten)."""
        then, self._then = self._then, {}
        return then

    def state(self) -> dict[str, int]:
        """What it holds: protocol groups, the batch rows it follows, workers it saw end."""
        return {"groups": len(self._groups), "rows": len(self._rows), "ended": len(self._ended)}

    def update_state(self, batch_update: Any) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            row = self._rows.pop(index, None)
            if row is not None:
                self._ended[row[0]].add(row[1])
        for index, params, _, output_ids in batch_update.added:
            self._rows.pop(index, None)
            stamp = stamp_of(params)
            config = stamp.flag.protocol if stamp is not None else None
            if config is not None:
                key = stamp.group
                self._rows[index] = (key, stamp.worker, output_ids)
                if key not in self._groups:
                    self._groups[key] = self._protocol(config, params)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self._rows.pop(a, None), self._rows.pop(b, None)
            if row_a is not None:
                self._rows[b] = row_a
            if row_b is not None and direction.name == "SWAP":
                self._rows[a] = row_b
        live = {group for group, _, _ in self._rows.values()}
        for group in list(self._groups):
            if group not in live:
                del self._groups[group]
                self._ended.pop(group, None)

    def _protocol(self, config: Any, params: Any) -> GroupProtocol:
        if self._decode is None:
            self._decode = runtime.token_texts(self._model_config)
            self._encode = runtime.encoder(self._model_config)
        return GroupProtocol(config, self._encode, self._decode, stop_tokens(params), params.max_tokens,
                             whole_texts=self._whole_texts and params.logprobs is None)

    def apply(self, logits: Any) -> Any:
        self._then = {}
        if not self._rows:
            return logits
        by_group: dict[str, dict[int, int]] = defaultdict(dict)
        discarded = runtime.discarded_rows()
        for index, (group, worker, _) in self._rows.items():
            # A prompt chunk's sample is thrown away: the protocol must not see it (its
            # logits could even "want" a stop).
            if discarded is None or not discarded[index]:
                by_group[group][worker] = index
        for group, rows in by_group.items():
            protocol = self._groups[group]
            outputs = {w: self._rows[i][2] for w, i in rows.items()}
            wants_stop = 0 in rows and int(logits[rows[0]].argmax()) in protocol.stop_tokens
            actions = protocol.step(outputs, self._ended[group], wants_stop)
            self.worker_steps += len(actions)
            self.forced_steps += sum(action.force is not None for action in actions.values())
            for w, action in actions.items():
                if action.then:
                    self._then[rows[w]] = action.then
                row = logits[rows[w]]
                if action.ban:
                    row[list(action.ban)] = float("-inf")
                keep = action.force if action.force is not None else int(row.argmax()) if action.greedy else None
                if keep is not None:
                    row.fill_(float("-inf"))
                    row[keep] = 0.0
        return logits


def hogwild_processors(runner: Any) -> list[HogwildLogitsProcessor]:
    """The model runner's hogwild logits processors (vLLM builds one per runner)."""
    return [p for p in runner.input_batch.logitsprocs.all if isinstance(p, HogwildLogitsProcessor)]
