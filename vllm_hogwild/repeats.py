"""What a worker may not copy: a long run of tokens from a finished step, its own or another's.

Greedy decoding on a real instruct model loops over the view's repeated structure: on
Qwen2.5-Coder-1.5B-Instruct (GSM8K problems 0-15, W=2, greedy) 297 of 385 steps repeated an
earlier step of their worker word for word, and the groups answered 3 of 16 where the model
alone answered 8. Every step opens with a header of the same shape, so once one step has been
copied the copy is the likeliest continuation of every later header. A step that repeats a
finished step tells the others nothing, so the protocol bars the copy itself, like the
no-repeat n-gram rule of sequence generation, over steps: a worker may repeat a phrase, a number
or a formula; it may not write again ``length`` tokens that a finished step (anyone's) or its own
current step already holds (SmolLM2 looped inside one step, writing one heading over and over).

The rule, per worker and sampled token ``t``, given the sampled tokens of the worker's current
step ``s``: ``t`` is banned if ``s[-(length - 1):] + [t]`` occurs in a finished step or in ``s``.
Forced tokens (headers, the redundancy question) are in no step. Pure Python.
"""

from __future__ import annotations

from typing import Sequence


class RepeatGuard:
    """The runs of ``length`` tokens of a group's finished steps, and of each worker's current one."""

    def __init__(self, length: int, workers: int) -> None:
        if length < 2:
            raise ValueError(f"a repeat guard needs runs of at least 2 tokens, got {length}")
        self.length = length
        self._finished: dict[tuple[int, ...], set[int]] = {}
        self._steps: list[list[int]] = [[] for _ in range(workers)]
        self._current: list[dict[tuple[int, ...], set[int]]] = [{} for _ in range(workers)]

    def add(self, worker: int, token: int) -> None:
        """A token ``worker`` sampled in its current step."""
        step = self._steps[worker]
        step.append(token)
        if len(step) >= self.length:
            self._current[worker].setdefault(tuple(step[-self.length:-1]), set()).add(token)

    def end_step(self, worker: int) -> None:
        """``worker``'s current step is finished: its runs are barred to every worker."""
        for head, tokens in self._current[worker].items():
            self._finished.setdefault(head, set()).update(tokens)
        self._steps[worker], self._current[worker] = [], {}

    def banned(self, worker: int) -> frozenset[int]:
        """The tokens that would make the end of ``worker``'s current step a copy of ``length``
        tokens of a finished step or of that step itself."""
        step = self._steps[worker]
        if len(step) < self.length - 1:
            return frozenset()
        head = tuple(step[len(step) - self.length + 1:])
        return frozenset(self._finished.get(head, set()) | self._current[worker].get(head, set()))
