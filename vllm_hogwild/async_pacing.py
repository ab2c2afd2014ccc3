"""Think while answering: when the writer writes and when it waits for the thoughts.

The writer (worker 0) starts waiting, and waits again at the end of each of its paragraphs;
it writes again once the thoughts are ahead of it: the thinker (worker 1) has finished a
paragraph since the writer stopped, or written ``lead_tokens`` tokens since (thoughts with no
paragraph break), or ended its thoughts (from then on the writer writes alone). Paragraph ends
are the group's step boundary rule (``steps.py``).

AsyncReasoning asks the thinker itself (a yes/no question on its view, every 20 tokens and at
each of its paragraph ends) whether the thoughts are ahead; this rule reads only the texts.
Pure Python: the scheduler hook and the recompute oracle drive it alike, once per engine step,
before the step, with the tokens sampled since the last one.
"""

from __future__ import annotations

from typing import Iterable

from vllm_hogwild.steps import BoundaryRule, StepScanner

LEAD_TOKENS = 48


class Pacing:
    """Whether a group's writer writes in the coming engine step."""

    def __init__(self, rule: BoundaryRule, lead_tokens: int = LEAD_TOKENS) -> None:
        self._writer = StepScanner(rule)
        self._thinker = StepScanner(rule)
        self.lead_tokens = lead_tokens
        self.writing = False
        self.thinker_done = False
        self._paragraphs = 0  # the thinker's paragraphs finished since the writer stopped
        self._tokens = 0  # the thinker's tokens since the writer stopped

    def update(self, writer: Iterable[str], thinker: Iterable[str], thinker_done: bool) -> bool:
        """Feed the texts of the tokens each worker sampled since the last call, and whether the
        thinker has ended; returns whether the writer writes in the coming step. The thoughts are
        read first: a paragraph of thoughts that ends in the same step as the writer's paragraph
        was not ahead of it."""
        for text in thinker:
            self._tokens += 1
            self._paragraphs += self._thinker.ends_step(text)
        for text in writer:
            if self._writer.ends_step(text):
                self.writing, self._paragraphs, self._tokens = False, 0, 0
        self.thinker_done = self.thinker_done or thinker_done
        if self.thinker_done or self._paragraphs > 0 or self._tokens >= self.lead_tokens:
            self.writing = True
        return self.writing
