"""A hogwild group over time: which tokens are written, which steps are committed.

Pure Python. The model-runner hook (and the recompute oracle in the tests) drive it the same
way, once per engine step:

1. ``commit_written(texts)``: the texts of tokens whose keys were written by the
   previous steps; a step that ends among them joins the shared history (commit order:
   step order, then worker order within a step). A step committed now is seen as
   history from this step on; while being written it was the worker's current step.
2. ``views(lengths)``: each worker's view for this step, where ``lengths`` counts the
   tokens of each request with keys in the cache once this step has written its own
   (``split_views``: the same without the shared history, which the planner takes once).
"""

from __future__ import annotations

from vllm_hogwild import layouts
from vllm_hogwild.layouts import Fragment, GroupState, Span, WorkerState
from vllm_hogwild.steps import BoundaryRule, StepScanner
from vllm_hogwild.worker_requests import prompt_tails


class GroupTracker:
    """State of one hogwild group, advanced step by step."""

    def __init__(
        self,
        layout: str,
        rule: BoundaryRule,
        prompt_len: int,
        stream_starts: list[int],
        framing: dict[str, Span] | None = None,
    ) -> None:
        if prompt_len < 1:
            raise ValueError("a hogwild prompt needs at least one token")
        self.layout = layout
        tails = prompt_tails(prompt_len, len(stream_starts))
        self.state = GroupState(
            prompt_len,
            [WorkerState(t, s, s) for t, s in zip(tails, stream_starts)],
            framing=dict(framing or {}),
        )
        self._scanners = [StepScanner(rule) for _ in stream_starts]
        self._scanned = list(stream_starts)

    @property
    def num_workers(self) -> int:
        return len(self.state.workers)

    def scanned(self, worker: int) -> int:
        """Home position of the next token of ``worker`` that ``commit_written`` expects."""
        return self._scanned[worker]

    def commit_written(self, texts: dict[int, list[str]]) -> None:
        """Feed the texts of tokens written since the last call (from ``scanned(w)`` on)."""
        for w in sorted(texts):
            worker = self.state.workers[w]
            for text in texts[w]:
                pos = self._scanned[w]
                self._scanned[w] += 1
                if self._scanners[w].ends_step(text):
                    self.state.history.append(Span(w, worker.committed, pos + 1))
                    worker.committed = pos + 1

    def shared_history(self) -> list[Fragment]:
        """The fragments that every view holds alike (``layouts.shared_history``); empty
        for the layouts whose views do not show the history (contiguous, async)."""
        return layouts.shared_history(self.state) if self.layout in layouts.HISTORY_LAYOUTS else []

    def views(self, lengths: list[int]) -> list[list[Fragment]]:
        """Every worker's view once this step's tokens are written."""
        self._written(lengths)
        return layouts.views(self.layout, self.state)

    def split_views(self, lengths: list[int]) -> list[tuple[list[Fragment], list[Fragment]]]:
        """``views`` without the shared history: each view's fragments before it and after it
        (``layouts.split_views``)."""
        self._written(lengths)
        return layouts.split_views(self.layout, self.state)

    def _written(self, lengths: list[int]) -> None:
        for worker, length in zip(self.state.workers, lengths):
            worker.length = max(length, worker.committed)
