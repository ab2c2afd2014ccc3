"""Sampler: the protocol's forced and greedy tokens, and think while answering's bans, as a logits processor.

Patches nothing: vLLM loads ``HogwildLogitsProcessor`` through the ``vllm.logits_processors``
entry point. Each vLLM release has its own logits processor interface: vLLM 0.32's V1 model
runner (``sampler_v1``) and Model Runner V2 of 0.34 (``sampler_v2``) track batch rows
differently; what the protocol does with a step's rows is here, once (``ProtocolRows``).
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from typing import Any

from vllm_hogwild import async_prompts, prompts, runtime
from vllm_hogwild.async_bans import StreamBans
from vllm_hogwild.hooks.patching import stop_tokens
from vllm_hogwild.protocol import GroupProtocol
from vllm_hogwild.worker_requests import stamp_of


class ProtocolRows:
    """Applies the protocol's per-step ``Action``s (``protocol.py``), or think while answering's
    bans (``async_bans.py``, the same interface), to the logits rows of hogwild workers; every
    other row is left alone.

    A release's processor keeps ``rows`` (its own row key -> (group, worker)) in step with the
    runner's batch and calls ``step`` with this step's logits rows. ``worker_steps`` and
    ``forced_steps`` count, since the engine started, the protocol workers' sampled rows and
    those whose token was forced (benchmarks read them). A forced text's tokens after the
    first (``Action.then``) wait in ``take_then`` for the model runner's hook, which appends
    them to the worker's output right after sampling."""

    def __init__(self, vllm_config: Any) -> None:
        self.worker_steps = 0
        self.forced_steps = 0
        self._model_config = vllm_config.model_config
        self.rows: dict[Any, tuple[str, int]] = {}  # row key -> (group, worker)
        self._groups: dict[str, GroupProtocol] = {}
        self._ended: dict[str, set[int]] = defaultdict(set)
        self._decode = None
        self._encode = None
        self._then: dict[int, tuple[int, ...]] = {}  # batch index -> forced tokens after the sampled one
        # The runner's hook appends them where it has this step's tokens on the host: not
        # with async scheduling.
        self._whole_texts = not getattr(vllm_config.scheduler_config, "async_scheduling", False)

    def take_then(self) -> dict[int, tuple[int, ...]]:
        """This step's forced tokens after the sampled one, by batch index (then forgotten)."""
        then, self._then = self._then, {}
        return then

    def state(self) -> dict[str, int]:
        """What it holds: protocol groups, the batch rows it follows, workers it saw end."""
        return {"groups": len(self._groups), "rows": len(self.rows), "ended": len(self._ended)}

    def add(self, key: Any, params: Any) -> bool:
        """A request entered the batch at ``key``; whether it is a protocol worker."""
        self.rows.pop(key, None)
        stamp = stamp_of(params)
        config = stamp.flag.protocol if stamp is not None else None
        if config is None and (stamp is None or not stamp.flag.is_async):
            return False
        self.rows[key] = (stamp.group, stamp.worker)
        if stamp.group not in self._groups:
            self._groups[stamp.group] = self._protocol(config, params) if config is not None else \
                self._stream_bans(params)
        return True

    def remove(self, key: Any) -> None:
        """The request at ``key`` left the batch (finished or preempted): its worker ended."""
        row = self.rows.pop(key, None)
        if row is not None:
            self._ended[row[0]].add(row[1])

    def forget_ended_groups(self) -> None:
        live = {group for group, _ in self.rows.values()}
        for group in list(self._groups):
            if group not in live:
                del self._groups[group]
                self._ended.pop(group, None)

    def _protocol(self, config: Any, params: Any) -> GroupProtocol:
        self._codecs()
        return GroupProtocol(config, self._encode, self._decode, stop_tokens(params), params.max_tokens,
                             whole_texts=self._whole_texts and params.logprobs is None,
                             bans=runtime.bans(self._model_config, tuple(prompts.banned_texts(config.names))))

    def _stream_bans(self, params: Any) -> StreamBans:
        self._codecs()
        return StreamBans(runtime.bans(self._model_config, tuple(async_prompts.banned_texts())), self._decode,
                          stop_tokens(params))

    def _codecs(self) -> None:
        if self._decode is None:
            self._decode = runtime.token_texts(self._model_config)
            self._encode = runtime.encoder(self._model_config)

    def step(self, logits: Any, batch_rows: dict[Any, int], outputs: Any) -> Any:
        """``batch_rows``: row key -> logits row of this step's sampled, kept rows (a prompt
        chunk's sample is thrown away: the protocol must not see it; its logits could even
        "want" a stop). ``outputs(key)``: the worker's output tokens so far."""
        self._then = {}
        by_group: dict[str, dict[int, Any]] = defaultdict(dict)
        for key, index in batch_rows.items():
            group, worker = self.rows[key]
            by_group[group][worker] = key
        for group, keys in by_group.items():
            protocol = self._groups[group]
            rows = {w: batch_rows[k] for w, k in keys.items()}
            wants_stop = 0 in rows and int(logits[rows[0]].argmax()) in protocol.stop_tokens
            actions = protocol.step({w: outputs(k) for w, k in keys.items()}, self._ended[group], wants_stop)
            self.worker_steps += len(actions)
            self.forced_steps += sum(action.force is not None for action in actions.values())
            for w, action in actions.items():
                if action.then:
                    self._then[rows[w]] = action.then
                row = logits[rows[w]]
                if action.ban:  # a tokenizer may count tokens past the model's logits (added tokens)
                    row[[t for t in action.ban if t < row.shape[0]]] = float("-inf")
                keep = action.force if action.force is not None else int(row.argmax()) if action.greedy else None
                if keep is not None:
                    row.fill_(float("-inf"))
                    row[keep] = 0.0
        return logits


def _adapter() -> Any:
    from vllm_hogwild import releases

    return importlib.import_module(releases.adapter("sampler"))


def hogwild_processors(runner: Any) -> list[Any]:
    """The model runner's hogwild logits processors (vLLM builds one per runner)."""
    return _adapter().hogwild_processors(runner)


def __getattr__(name: str) -> Any:
    # The entry point names one class; which one is the installed vLLM's.
    if name == "HogwildLogitsProcessor":
        return _adapter().HogwildLogitsProcessor
    raise AttributeError(name)
