"""What a worker may not write: the view's framing, the other workers' headers, the template's control tokens.

A real instruct model reads the framing of its view (the section headings, each step's
``**Name [n]:**`` header, once a ``<...>`` that cut off a step in progress) as text to continue, and
copies it into its own stream: its step then reads to the others as framing, and the group
derails (Qwen2.5-Coder-1.5B-Instruct did it in every worker text of a GSM8K run; SmolLM2 never
did). So, as AsyncReasoning does for its markers, each sampled token is barred from completing
any of these texts (``prompts.banned_texts``): a banned text never appears in a worker's own
sampled text, whatever the tokenizer splits it into. The protocol's forced texts (headers, the
redundancy question, the closing sentence) are not sampled and are unaffected.

The rule, per sampled token ``t`` and banned text ``S``, given the worker's text so far (its
tail): ``t`` is banned if ``S`` occurs in ``tail + t`` but not in ``tail``, that is, if ``t``
contains ``S``, or if the tail ends with ``S[:k]`` and ``t`` starts with ``S[k:]``. Tokens whose
text contains ``S`` are found once per vocabulary; those that start with a given text by
binary search over the vocabulary's texts, sorted. Special tokens (the chat template's turn
markers, the stop tokens among them) are banned outright: a worker that must stop has its
stop token forced, which no ban holds back.

Pure Python: the vocabulary comes in as each token's text.
"""

from __future__ import annotations

import bisect
from typing import Iterable, Sequence


class Bans:
    """The tokens a worker may not sample next, from its text so far."""

    def __init__(self, texts: Iterable[str], vocabulary: Sequence[str], special: Iterable[int] = ()) -> None:
        self.texts = tuple(dict.fromkeys(t for t in texts if t))
        self._sorted = sorted((text, token) for token, text in enumerate(vocabulary) if text)
        self._keys = [text for text, _ in self._sorted]
        contains = {token for token, text in enumerate(vocabulary) if any(s in text for s in self.texts)}
        self.always = frozenset(contains | set(special))
        self.longest = max((len(s) for s in self.texts), default=0)

    def starting_with(self, prefix: str) -> list[int]:
        """Tokens whose text starts with ``prefix``."""
        lo = bisect.bisect_left(self._keys, prefix)
        hi = bisect.bisect_left(self._keys, prefix + "\U0010ffff")
        return [token for _, token in self._sorted[lo:hi]]

    def of(self, tail: str) -> frozenset[int]:
        """The tokens barred after a text that ends with ``tail`` (only its last
        ``longest - 1`` characters matter)."""
        tail = tail[-self.longest:] if self.longest else ""
        found: set[int] = set()
        for s in self.texts:
            for k in range(1, len(s)):
                if tail.endswith(s[:k]):
                    found.update(self.starting_with(s[k:]))
        return self.always | found if found else self.always


def vocabulary_of(tokenizer) -> tuple[list[str], list[int]]:
    """Each token's text (as the protocol decodes one token) and the special tokens' ids, of a
    Hugging Face tokenizer."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    special = set(tokenizer.all_special_ids)
    special.update(i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special)
    return texts, sorted(special)
