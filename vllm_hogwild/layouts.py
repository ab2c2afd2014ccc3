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

LAYOUTS = ("contiguous", "interleaved", "combined")  # what ``hogwild_layout`` may name
ASYNC_LAYOUT = "async"  # think while answering (``hogwild_async``), chosen by its own flag
HISTORY_LAYOUTS = ("interleaved", "combined")  # the layouts whose views hold the committed steps


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
        self.history_at: int | None = None  # where the shared history sits (not copied in)

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


def _contiguous(state: GroupState, viewer: int) -> _ViewBuilder:
    """``[prompt][every other worker's whole stream][own stream]``."""
    view = _ViewBuilder()
    _prompt(state, viewer, view)
    order = [w for w in range(len(state.workers)) if w != viewer] + [viewer]
    for w in order:
        worker = state.workers[w]
        view.add_span(state.framing.get(f"workspace:{w}"))
        view.add(w, worker.stream_start, worker.length)
    return view


def shared_history(state: GroupState) -> list[Fragment]:
    """The committed steps as fragments from view offset ``prompt_len`` on: the part of
    the interleaved and combined views that every worker sees alike.

    The list is kept across steps and extended as steps commit (its last fragment may
    grow); no fragment of a view merges with them, so that the planner can take them once
    for the whole group (``split_views``)."""
    cache = state._history_view
    if cache is None or cache.history is not state.history or cache.spans > len(state.history):
        cache = state._history_view = _HistoryView(_ViewBuilder(state.prompt_len), state.history)
    for span in state.history[cache.spans:]:
        cache.builder.add(span.worker, span.start, span.end)
    cache.spans = len(state.history)
    return cache.builder.fragments


def _history(state: GroupState, view: _ViewBuilder) -> None:
    """Places the shared history after the prompt: its place is recorded, its fragments are
    not copied (a long run's history holds thousands); nothing after it merges into the
    fragments before it."""
    assert view.offset == state.prompt_len, "history follows the prompt"
    history = shared_history(state)
    if history:
        view.history_at = len(view.fragments)
        view.offset = history[-1].offset + history[-1].end - history[-1].start
        view.sealed = len(view.fragments)


def _interleaved(state: GroupState, viewer: int) -> _ViewBuilder:
    """``[prompt][committed steps, in commit order][own current step]``."""
    view = _ViewBuilder()
    _prompt(state, viewer, view)
    _history(state, view)
    view.add_span(state.framing.get("own"))
    own = state.workers[viewer]
    view.add(viewer, own.committed, own.length)
    return view


def _combined(state: GroupState, viewer: int) -> _ViewBuilder:
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
    return view


def _async(state: GroupState, viewer: int) -> _ViewBuilder:
    """Think while answering (``async_prompts.py``): ``[prompt][own intro][the other's stream]
    [own split][own stream]``, where a worker's first text is its intro, its split and its
    opening (framing spans ``intro:<w>`` and ``split:<w>`` in its own request) and its stream is
    its opening and what it writes. Each worker's tokens only as far as they are written (the
    writer's last prompt token waits until it first writes)."""
    view = _ViewBuilder()
    _prompt(state, viewer, view)
    other = 1 - viewer

    def add(worker: int, start: int, end: int) -> None:
        view.add(worker, start, min(end, state.workers[worker].length))

    own_intro, own_split = state.framing[f"intro:{viewer}"], state.framing[f"split:{viewer}"]
    add(viewer, own_intro.start, own_intro.end)
    add(other, state.framing[f"split:{other}"].end, state.workers[other].length)
    add(viewer, own_split.start, own_split.end)
    add(viewer, own_split.end, state.workers[viewer].length)
    return view


def _whole(state: GroupState, view: _ViewBuilder) -> list[Fragment]:
    if view.history_at is None:
        return view.fragments
    at = view.history_at
    return view.fragments[:at] + shared_history(state) + view.fragments[at:]


def contiguous(state: GroupState, viewer: int) -> list[Fragment]:
    """``[prompt][every other worker's whole stream][own stream]``."""
    return _contiguous(state, viewer).fragments


def interleaved(state: GroupState, viewer: int) -> list[Fragment]:
    """``[prompt][committed steps, in commit order][own current step]``."""
    return _whole(state, _interleaved(state, viewer))


def combined(state: GroupState, viewer: int) -> list[Fragment]:
    """``[prompt][history][other workers' current steps][own current step]``."""
    return _whole(state, _combined(state, viewer))


_BY_NAME = {"contiguous": _contiguous, "interleaved": _interleaved, "combined": _combined, ASYNC_LAYOUT: _async}


def _builders(layout: str, state: GroupState) -> list[_ViewBuilder]:
    try:
        build = _BY_NAME[layout]
    except KeyError:
        raise ValueError(
            f"hogwild_layout: unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}"
        ) from None
    return [build(state, w) for w in range(len(state.workers))]


def views(layout: str, state: GroupState) -> list[list[Fragment]]:
    """Every worker's view under ``layout``, in worker order."""
    return [_whole(state, view) for view in _builders(layout, state)]


def split_views(layout: str, state: GroupState) -> list[tuple[list[Fragment], list[Fragment]]]:
    """Every worker's view without the shared history (``shared_history``, which sits between
    the two parts): the fragments before it and after it (all of them before it, where the
    view holds no history). What the planner hands over each step: the history goes once per
    group, so a step's views cost the same however long it has grown."""
    out = []
    for view in _builders(layout, state):
        at = len(view.fragments) if view.history_at is None else view.history_at
        out.append((view.fragments[:at], view.fragments[at:]))
    return out


def view_position(fragments: list[Fragment], worker: int, home: int) -> int:
    """View position of ``worker``'s token at ``home`` in a view (its query rows)."""
    for f in fragments:
        if f.source == worker and f.start <= home < f.end:
            return home + f.shift
    raise ValueError(f"token {home} of worker {worker} is not in this view")


def view_length(fragments: list[Fragment]) -> int:
    """Number of tokens in a view."""
    return sum(f.end - f.start for f in fragments)
