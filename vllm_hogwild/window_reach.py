"""Sliding windows in a group: which cached tokens no worker's view can reach again.

A windowed layer's query at view position ``q`` reads the keys at view positions ``p`` with
``q - p < window``. vLLM frees a plain request's blocks that fall behind its own window. A
group's tokens sit at other positions in other workers' views, so a block may be freed only
when **every running worker's view** places every token of it behind that worker's window,
and will go on doing so.

**The bound.** Call a token *settled* in a layout when, from now on, the tokens after it in
every view can only grow: nothing that sits after it ever moves before it or leaves. Then its
distance to the end of each view never shrinks, and each worker's queries come at the end of
its own view (its own stream is last in every layout), so a settled token that every running
view places ``window`` or more before the view's end stays unreachable for the rest of the
group's life. Which tokens are settled:

- the prompt (worker 0's ``[0, P-1)``, each worker's copy of the last prompt token, seen by its
  own view only): always first in every view;
- ``contiguous`` and ``async``: every token. Their regions keep one order (the prompt, then
  each stream, or each section, in a fixed place) and only grow at their ends;
- ``interleaved`` and ``combined``: a worker's *committed* steps. The shared history only grows
  at its end, and what joins it comes from the current steps, which sit after it. A current
  step is not settled: when another worker's step commits, it leaves from after this one
  (``combined``), and a worker's current step is not in the others' views at all until it
  commits, near their end (``interleaved``). Nor are the framing headings, which have the
  current steps after them.

Freeing by this rule never changes what a view reads: the tokens freed are those the windowed
layers would skip anyway. Pure Python: the scheduler's hook frees by it and the tests check it
against every later view.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from vllm_hogwild.layouts import HISTORY_LAYOUTS, Fragment, GroupState

Ranges = list[tuple[int, int]]  # sorted, disjoint home ranges [start, end)


def settled(layout: str, state: GroupState, worker: int) -> Ranges:
    """The home ranges of ``worker``'s request whose keys are in the cache and settled (module
    docstring)."""
    own = state.workers[worker]
    prompt = [(0, state.prompt_len - 1)] if worker == 0 else []
    tail = [(own.tail, own.tail + 1)]
    if layout in HISTORY_LAYOUTS:
        stream = [(own.stream_start, own.committed)]
    else:
        stream = [(own.tail + 1, own.length)]
    return [(start, min(end, own.length)) for start, end in _union(prompt + tail + stream) if start < own.length]


def reachable(view: Sequence[Sequence[Fragment]], window: int) -> dict[int, Ranges]:
    """Per source worker, the home ranges a view of computed keys reaches within ``window`` of
    its worker's next query, which sits at the view's end or later. ``view``: its fragments in
    view order, in parts (the planner's split views: before the shared history, the history,
    after it); read from the end, as far as the window reaches, so a long history costs nothing."""
    fragments = [f for part in reversed(view) for f in reversed(part)]
    if not fragments:
        return {}
    end = fragments[0].offset + fragments[0].end - fragments[0].start
    first = end - window + 1  # the first view position the next query reaches
    out: dict[int, Ranges] = {}
    for f in fragments:
        if f.offset + f.end - f.start <= first:
            break
        out.setdefault(f.source, []).append((max(f.start, first - f.shift), f.end))
    return {w: _union(r) for w, r in out.items()}


def unreachable(layout: str, state: GroupState, views: Sequence[Sequence[Sequence[Fragment]]],
                running: Iterable[int], window: int) -> list[Ranges]:
    """Per worker, the home ranges of its request that no running worker's view reaches now or
    later: settled, and behind the window in every running view. ``views[w]``: worker ``w``'s
    view of the computed keys (``state``'s lengths), in parts as ``reachable`` takes it."""
    reach = [reachable(views[w], window) for w in running]
    out = []
    for worker in range(len(state.workers)):
        ranges = settled(layout, state, worker)
        for found in reach:
            ranges = _minus(ranges, found.get(worker, []))
        out.append(ranges)
    return out


def whole_blocks(ranges: Ranges, block_size: int) -> list[tuple[int, int]]:
    """The runs of whole blocks ``[first, last)`` inside ``ranges``."""
    out: list[tuple[int, int]] = []
    for start, end in ranges:
        first, last = -(-start // block_size), end // block_size
        if first < last:
            if out and out[-1][1] == first:
                out[-1] = (out[-1][0], last)
            else:
                out.append((first, last))
    return out


def _union(ranges: Iterable[tuple[int, int]]) -> Ranges:
    out: Ranges = []
    for start, end in sorted(r for r in ranges if r[0] < r[1]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _minus(ranges: Ranges, cut: Ranges) -> Ranges:
    """``ranges`` less ``cut`` (both sorted and disjoint)."""
    out: Ranges = []
    for start, end in ranges:
        for c_start, c_end in cut:
            if c_end <= start or c_start >= end:
                continue
            if c_start > start:
                out.append((start, c_start))
            start = max(start, c_end)
            if start >= end:
                break
        if start < end:
            out.append((start, end))
    return out
