"""Layouts: who sees which cached tokens, in which order (docs/design.md, section 2).

A layout is a pure function from a group's state to one worker's *view*: an ordered
list of fragments, each a run of one worker's cached tokens (home positions
``[start, end)`` in that worker's request) placed at a view offset. No torch, no vLLM.

Where the tokens live (``worker_requests.py``): worker 0's request holds the shared prompt
``[0, P)``, then the framing blocks, then its own stream. Every other worker's request
starts with its own copy of the prompt's last token (home 0), then its own stream. So
every view begins with worker 0's ``[0, P-1)`` followed by the viewer's own copy of the
last prompt token: the prompt is computed once, and each worker's first query row has a
place in its own view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

LAYOUTS = ("contiguous", "interleaved", "combined")


class Fragment(NamedTuple):
    """Tokens ``[start, end)`` of worker ``source``'s request, placed at view ``offset``.

    A named tuple, not a frozen dataclass: the planner makes a few dozen every step, and a
    frozen dataclass's constructor costs ~1 us each (a tuple's a tenth of that)."""

    source: int
    start: int
    end: int
    offset: int

    @property
    def shift(self) -> int:
        """``D_f``: view position minus home position of every token in the fragment."""
        return self.offset - self.start


@dataclass
class WorkerState:
    """One worker's request as the layouts need it.

    ``tail``: home position of this worker's copy of the prompt's last token.
    ``stream_start``: home position where its own stream (prefix + generated) begins.
    ``length``: tokens of the request whose keys are in the cache, this step's included.
    ``committed``: end of its last committed step (``stream_start`` if none).
    """

    tail: int
    stream_start: int
    length: int
    committed: int = -1

    def __post_init__(self) -> None:
        if self.committed < 0:
            self.committed = self.stream_start


@dataclass(frozen=True)
class Span:
    """A run of one worker's tokens, home positions ``[start, end)``."""

    worker: int
    start: int
    end: int


@dataclass
class GroupState:
    """A hogwild group at one step: the workers and the shared history.

    ``framing`` names blocks of worker 0's request (between the prompt and its stream)
    that the layouts place as headings: ``"others"``, ``"own"``, ``"marker"`` and
    ``"workspace:<i>"``. A layout uses the ones present and skips the others.
    """

    prompt_len: int
    workers: list[WorkerState]
    history: list[Span] = field(default_factory=list)  # append-only: commits are final
    framing: dict[str, Span] = field(default_factory=dict)
    _history_view: _HistoryView | None = field(default=None, repr=False, compare=False)


class _ViewBuilder:
    """Appends spans at increasing view offsets, merging runs that continue each other."""

    def __init__(self, offset: int = 0) -> None:
        self.fragments: list[Fragment] = []
        self.offset = offset
        self.sealed = 0  # fragments before this index are never merged into

    def add(self, worker: int, start: int, end: int) -> None:
        if end <= start:
            return
        last = self.fragments[-1] if len(self.fragments) > self.sealed else None
        if last is not None and last.source == worker and last.end == start:
            self.fragments[-1] = Fragment(worker, last.start, end, last.offset)
        else:
            self.fragments.append(Fragment(worker, start, end, self.offset))
        self.offset += end - start

    def add_span(self, span: Span | None) -> None:
        if span is not None:
            self.add(span.worker, span.start, span.end)


@dataclass
class _HistoryView:
    """The committed steps as fragments from view offset ``prompt_len`` on, where every
    viewer's history starts; extended as steps commit, so a step's views copy them
    instead of re-adding every span (a long run commits thousands of steps)."""

    builder: _ViewBuilder
    history: list[Span]
    spans: int = 0


def _prompt(state: GroupState, viewer: int, view: _ViewBuilder) -> None:
    view.add(0, 0, state.prompt_len - 1)
    tail = state.workers[viewer].tail
    view.add(viewer, tail, tail + 1)


def contiguous(state: GroupState, viewer: int) -> list[Fragment]:
    """``[prompt][every other worker's whole stream][own stream]``."""
    view = _ViewBuilder()
    _prompt(state, viewer, view)
    order = [w for w in range(len(state.workers)) if w != viewer] + [viewer]
    for w in order:
        worker = state.workers[w]
        view.add_span(state.framing.get(f"workspace:{w}"))
        view.add(w, worker.stream_start, worker.length)
    return view.fragments


def shared_history(state: GroupState) -> list[Fragment]:
    """The committed steps as fragments from view offset ``prompt_len`` on: the part of
    the interleaved and combined views that every worker sees alike.

    The list is kept across steps and extended as steps commit (its last fragment may
    grow); every view holds these very Fragment objects, never merged with the fragments
    around them, so that the planner can take them once for the whole group
    (``split_view``)."""
    cache = state._history_view
    if cache is None or cache.history is not state.history or cache.spans > len(state.history):
        cache = state._history_view = _HistoryView(_ViewBuilder(state.prompt_len), state.history)
    for span in state.history[cache.spans:]:
        cache.builder.add(span.worker, span.start, span.end)
    cache.spans = len(state.history)
    return cache.builder.fragments


def _history(state: GroupState, view: _ViewBuilder) -> None:
    assert view.offset == state.prompt_len, "history follows the prompt"
    history = shared_history(state)
    if history:
        view.fragments.extend(history)
        view.offset = history[-1].offset + history[-1].end - history[-1].start
        view.sealed = len(view.fragments)


def interleaved(state: GroupState, viewer: int) -> list[Fragment]:
    """``[prompt][committed steps, in commit order][own current step]``."""
    view = _ViewBuilder()
    _prompt(state, viewer, view)
    _history(state, view)
    view.add_span(state.framing.get("own"))
    own = state.workers[viewer]
    view.add(viewer, own.committed, own.length)
    return view.fragments


def combined(state: GroupState, viewer: int) -> list[Fragment]:
    """``[prompt][history][other workers' current steps][own current step]``."""
    view = _ViewBuilder()
    _prompt(state, viewer, view)
    _history(state, view)
    view.add_span(state.framing.get("others"))
    for w, worker in enumerate(state.workers):
        if w != viewer:
            view.add(w, worker.committed, worker.length)
            view.add_span(state.framing.get("marker"))
    view.add_span(state.framing.get("own"))
    own = state.workers[viewer]
    view.add(viewer, own.committed, own.length)
    return view.fragments


_BY_NAME = {"contiguous": contiguous, "interleaved": interleaved, "combined": combined}


def views(layout: str, state: GroupState) -> list[list[Fragment]]:
    """Every worker's view under ``layout``, in worker order."""
    try:
        build = _BY_NAME[layout]
    except KeyError:
        raise ValueError(
            f"hogwild_layout: unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}"
        ) from None
    return [build(state, w) for w in range(len(state.workers))]


def split_view(fragments: list[Fragment], history: list[Fragment]) -> tuple[list[Fragment], list[Fragment]]:
    """A view without its shared history: the fragments before it and after it."""
    if not history:
        return fragments, []
    for i, f in enumerate(fragments[:3]):  # after the prompt and the viewer's copy of its last token
        if f is history[0]:
            end = i + len(history)
            if fragments[end - 1] is not history[-1]:
                break
            return fragments[:i], fragments[end:]
    raise ValueError("this view does not hold the group's shared history")


def view_position(fragments: list[Fragment], worker: int, home: int) -> int:
    """View position of ``worker``'s token at ``home`` in a view (its query rows)."""
    for f in fragments:
        if f.source == worker and f.start <= home < f.end:
            return home + f.shift
    raise ValueError(f"token {home} of worker {worker} is not in this view")


def view_length(fragments: list[Fragment]) -> int:
    """Number of tokens in a view."""
    return sum(f.end - f.start for f in fragments)
