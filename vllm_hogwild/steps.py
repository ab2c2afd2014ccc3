"""Step boundaries: when a worker's current step ends and joins the shared history.

The paper's rule (docs/design.md, section 3): a step ends at a token that contains a paragraph
break when the text before the break ends a sentence and no code or math block is open.
Pure Python: it sees token texts, never a tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

SENTENCE_ENDS = ".!?:;"


@dataclass(frozen=True)
class BoundaryRule:
    """``marker``: the text that can end a step; ``sentence``: also require a sentence end
    (and no open ```` ``` ```` or ``$$`` block) right before it."""

    marker: str = "\n\n"
    sentence: bool = True


@dataclass
class StepScanner:
    """Scans one worker's tokens in order and says which of them end a step."""

    rule: BoundaryRule
    _tail: str = ""
    _fences: int = 0
    _math: int = 0

    def ends_step(self, text: str) -> bool:
        """Feed the next token's text; True if the step ends with this token."""
        marker = self.rule.marker
        joined = self._tail + text
        # Only a marker that ends inside this token counts: earlier ones were seen.
        at = joined.find(marker, max(0, len(self._tail) - len(marker) + 1))
        ends = False
        if at >= 0:
            head = text[: max(0, at - len(self._tail))]
            open_block = (self._fences + head.count("```")) % 2 or (
                self._math + head.count("$$")
            ) % 2
            ends = not self.rule.sentence or (
                not open_block and self._closes_sentence(joined[:at])
            )
        self._fences += text.count("```")
        self._math += text.count("$$")
        self._tail = joined[-64:]
        return ends

    @staticmethod
    def _closes_sentence(before: str) -> bool:
        stripped = before.rstrip(" \t*_")
        return bool(stripped) and stripped[-1] in SENTENCE_ENDS
