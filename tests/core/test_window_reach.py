"""Sliding windows in a group (``window_reach.py``): a token called unreachable is never again
within the window of a running worker's next query, in any later view, in every layout (with
the protocol's framing and the think-while-answering sections); and the rule does free the
settled tokens far behind every view."""

from __future__ import annotations

import random

import pytest

from vllm_hogwild import window_reach
from vllm_hogwild.group import GroupTracker
from vllm_hogwild.layouts import ASYNC_LAYOUT, LAYOUTS, view_length
from vllm_hogwild.steps import BoundaryRule
from vllm_hogwild.worker_requests import spans, stream_starts

WORDS = ["a", " b", " c", ".", " d", "\n\n", " 12"]


def _framing(layout: str, workers: int) -> list[tuple[str, list[int]]]:
    """Framing blocks of worker 0's request, as the protocol's (token ids do not matter here)."""
    if layout == "contiguous":
        return [(f"workspace:{w}", [0] * 3) for w in range(workers)]
    if layout == "interleaved":
        return [("history", [0] * 2), ("own", [0] * 2)]
    return [("history", [0] * 2), ("others", [0] * 2), ("marker", [0]), ("own", [0] * 3)]


def _group(layout: str, workers: int, rng: random.Random, framed: bool) -> GroupTracker:
    prompt_len = rng.randint(2, 30)
    framing = _framing(layout, workers) if framed and layout != ASYNC_LAYOUT else []
    sections = [[("intro", 3), ("split", 2), ("opening", 2)] for _ in range(workers)] if layout == ASYNC_LAYOUT else []
    starts = stream_starts(prompt_len, framing, workers)
    return GroupTracker(layout, BoundaryRule(), prompt_len, starts, spans(prompt_len, framing, sections, workers))


def _run(layout: str, workers: int, window: int, seed: int, framed: bool, steps: int = 150):
    """A random group step by step: each step frees what ``unreachable`` says, then checks every
    token freed so far against each running worker's view. Returns the tokens freed."""
    rng = random.Random(seed)
    tracker = _group(layout, workers, rng, framed)
    state = tracker.state
    lengths = [w.stream_start for w in state.workers]  # the prompt (and framing) computed
    running = set(range(workers))
    freed: list[set[int]] = [set() for _ in range(workers)]
    for _ in range(steps):
        views = tracker.views(lengths)
        history = tracker.shared_history()
        split = [(before, history, after) for before, after in tracker.split_views(lengths)]
        for w in running:
            end = view_length(views[w])
            for f in views[w]:
                for home in range(f.start, f.end):
                    if home in freed[f.source]:
                        assert end - (home + f.shift) >= window, (layout, w, f.source, home)
        for w, ranges in enumerate(window_reach.unreachable(layout, state, split, sorted(running), window)):
            for start, end in ranges:
                freed[w].update(range(start, end))
        # The step: some running workers write one token, or a few (a forced text); steps commit.
        texts = {}
        for w in sorted(running):
            if rng.random() < 0.7:
                texts[w] = [rng.choice(WORDS) for _ in range(rng.choice([1, 1, 1, 3]))]
                lengths[w] += len(texts[w])
        tracker.commit_written(texts)
        if len(running) > 1 and rng.random() < 0.01:
            running.discard(rng.choice(sorted(running)))
    return freed, tracker


@pytest.mark.parametrize("layout", LAYOUTS + (ASYNC_LAYOUT,))
@pytest.mark.parametrize("framed", [False, True])
def test_a_freed_token_is_never_again_within_a_running_window(layout, framed):
    for seed in range(12):
        workers = 2 if layout == ASYNC_LAYOUT else 1 + seed % 4
        _run(layout, workers, window=8 + 5 * (seed % 5), seed=seed, framed=framed)


@pytest.mark.parametrize("layout", LAYOUTS + (ASYNC_LAYOUT,))
def test_long_groups_free_most_of_what_is_far_behind(layout):
    """The rule is not empty: with a short window, most of a long group's settled tokens go."""
    freed, tracker = _run(layout, 2, window=8, seed=3, framed=False, steps=400)
    held = sum(w.length for w in tracker.state.workers)
    assert sum(len(f) for f in freed) > held // 3, (layout, [len(f) for f in freed], held)


def test_unsettled_tokens_are_kept():
    """A current step is not settled in combined: it stays however far behind it sits, and goes
    once it commits."""
    tracker = GroupTracker("combined", BoundaryRule(), 4, stream_starts(4, [], 2))
    lengths = [4 + 40, 1 + 3]  # worker 0 wrote 40 tokens of a step that has not ended
    tracker.commit_written({0: ["a"] * 40, 1: ["b"] * 3})
    ranges = window_reach.unreachable("combined", tracker.state, [[v] for v in tracker.views(lengths)], [0, 1], window=4)
    assert ranges == [[(0, 4)], [(0, 1)]], ranges  # the prompt and each worker's copy of its last token
    tracker.commit_written({0: [".\n\n"]})
    lengths[0] += 1
    ranges = window_reach.unreachable("combined", tracker.state, [[v] for v in tracker.views(lengths)], [0, 1], window=4)
    assert ranges == [[(0, 45)], [(0, 1)]], ranges  # the whole step, committed (homes 4-44)
    assert window_reach.unreachable("combined", tracker.state, [[v] for v in tracker.views(lengths)], [0], window=4)[0] == [(0, 45)]


def test_whole_blocks():
    assert window_reach.whole_blocks([(0, 31), (33, 100)], 16) == [(0, 1), (3, 6)]
    assert window_reach.whole_blocks([(0, 32), (32, 64)], 16) == [(0, 4)]
    assert window_reach.whole_blocks([(5, 20)], 16) == []
