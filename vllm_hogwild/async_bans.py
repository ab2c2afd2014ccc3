"""Think while answering: what each stream may not write, as the protocol's processor applies it.

A stream that writes its view's framing (a note, the thoughts heading) or a chat control token
(another turn's start) reads to the other stream, and to itself, as the structure of its view.
So each sampled token is barred from completing any of those texts (``async_prompts.banned_texts``,
by ``bans.py``'s rule), and
the template's special tokens are barred outright, all but the request's stop tokens: a stream
ends at its end of turn (the writer's answer, the thinker's thoughts), which no ban holds back.

``StreamBans.step`` is ``protocol.GroupProtocol.step``'s interface (the logits processor and the
oracle drive either alike); it only bans, never forces. Pure Python.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

from vllm_hogwild.bans import Bans
from vllm_hogwild.protocol import Action


class StreamBans:
    """The bans of one think-while-answering group, step by step."""

    def __init__(self, bans: Bans, decode: Callable[[int], str], stop_tokens: Iterable[int]) -> None:
        self.bans = bans
        self.stop_tokens = frozenset(stop_tokens)
        self._decode = decode
        self._tails: dict[int, str] = {}
        self._seen: dict[int, int] = {}

    def step(self, outputs: Mapping[int, Sequence[int]], ended: Iterable[int] = (),
             wants_stop: bool = False) -> dict[int, Action]:
        """Each running worker's bans after what it has written (``outputs``: its tokens so far)."""
        actions = {}
        for w, tokens in outputs.items():
            seen = self._seen.get(w, 0)
            tail = self._tails.get(w, "") + "".join(self._decode(t) for t in tokens[seen:])
            self._tails[w], self._seen[w] = tail[-max(self.bans.longest, 1):], len(tokens)
            actions[w] = Action(ban=self.bans.of(tail) - self.stop_tokens)
        return actions
