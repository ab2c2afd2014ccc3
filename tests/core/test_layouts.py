"""Layouts and step boundaries, against views written out by hand."""

from __future__ import annotations

import pytest

from vllm_hogwild.group import GroupTracker
from vllm_hogwild.layouts import Fragment as F
from vllm_hogwild.layouts import Span, split_views, view_length, view_position, views
from vllm_hogwild.steps import BoundaryRule, StepScanner


def tracker(layout: str, prompt: int = 5, workers: int = 2, **kw) -> GroupTracker:
    return GroupTracker(layout, BoundaryRule("|", sentence=False), prompt, [prompt] + [1] * (workers - 1), **kw)


def test_contiguous_places_every_other_stream_then_own():
    t = tracker("contiguous", workers=3)
    # worker 0 holds prompt [0,5) and its stream [5,8); workers 1, 2 hold the prompt's
    # last token at 0 and their streams [1,3) and [1,5).
    v = t.views([8, 3, 5])
    assert v[0] == [F(0, 0, 5, 0), F(1, 1, 3, 5), F(2, 1, 5, 7), F(0, 5, 8, 11)]
    assert v[1] == [F(0, 0, 4, 0), F(1, 0, 1, 4), F(0, 5, 8, 5), F(2, 1, 5, 8), F(1, 1, 3, 12)]
    assert v[2] == [F(0, 0, 4, 0), F(2, 0, 1, 4), F(0, 5, 8, 5), F(1, 1, 3, 8), F(2, 1, 5, 10)]
    assert [view_length(x) for x in v] == [14, 14, 14]


def test_interleaved_sees_history_and_own_step_only():
    t = tracker("interleaved")
    t.views([8, 4])
    # worker 0 wrote "a|b" at [5,8): step [5,7) commits; worker 1 wrote "x" [1,2), "|" at 2.
    t.commit_written({0: ["a", "|", "b"], 1: ["x", "|", "y"]})
    v = t.views([9, 5])
    # Runs that continue each other merge (worker 0's prompt and its copy of the last
    # prompt token), but never across the ends of the history, which every view shares.
    assert v[0] == [F(0, 0, 5, 0), F(0, 5, 7, 5), F(1, 1, 3, 7), F(0, 7, 9, 9)]
    assert v[1] == [F(0, 0, 4, 0), F(1, 0, 1, 4), F(0, 5, 7, 5), F(1, 1, 3, 7), F(1, 3, 5, 9)]
    history = t.shared_history()
    assert history == [F(0, 5, 7, 5), F(1, 1, 3, 7)]
    assert t.split_views([9, 5])[1] == ([F(0, 0, 4, 0), F(1, 0, 1, 4)], [F(1, 3, 5, 9)])


def test_combined_adds_others_current_steps_before_own():
    t = tracker("combined", workers=3)
    t.commit_written({1: ["p", "|"]})
    v = t.views([7, 4, 2])
    # history: worker 1's [1,3); current steps: w0 [5,7), w1 [3,4), w2 [1,2)
    assert v[2] == [F(0, 0, 4, 0), F(2, 0, 1, 4), F(1, 1, 3, 5), F(0, 5, 7, 7), F(1, 3, 4, 9), F(2, 1, 2, 10)]
    assert view_position(v[2], 2, 1) == 10
    assert v[1][-2:] == [F(2, 1, 2, 9), F(1, 3, 4, 10)]  # own current step comes last


def test_commit_order_is_step_then_worker():
    t = tracker("interleaved")
    t.commit_written({1: ["|"], 0: ["|"]})
    t.commit_written({0: ["|"]})
    assert [(s.worker, s.start, s.end) for s in t.state.history] == [(0, 5, 6), (1, 1, 2), (0, 6, 7)]


def test_framing_blocks_are_fragments():
    framing = {"others": Span(0, 5, 7), "marker": Span(0, 7, 8), "own": Span(0, 8, 9)}
    t = GroupTracker("combined", BoundaryRule(), 5, [9, 1], framing=framing)
    v = t.views([11, 3])
    # prompt, "others" heading, worker 0's current step, marker + "own" heading, own step
    assert v[1] == [F(0, 0, 4, 0), F(1, 0, 1, 4), F(0, 5, 7, 5), F(0, 9, 11, 7), F(0, 7, 9, 9),
                    F(1, 1, 3, 11)]


def test_unknown_layout_names_the_allowed_ones():
    with pytest.raises(ValueError, match="contiguous, interleaved, combined"):
        views("diagonal", tracker("combined").state)


@pytest.mark.parametrize("texts,expected", [
    (["It works.", "\n\n", "Next"], [False, True, False]),
    (["no sentence", "\n\n"], [False, False]),
    (["Done.\n", "\nMore"], [False, True]),  # the break spans two tokens
    (["```", "x = 1.", "\n\n"], [False, False, False]),  # inside a code block
    (["```", "x.", "```", " ok.", "\n\n"], [False, False, False, False, True]),
])
def test_paper_boundary(texts, expected):
    scanner = StepScanner(BoundaryRule())
    assert [scanner.ends_step(t) for t in texts] == expected


@pytest.mark.parametrize("layout", ["interleaved", "combined"])
def test_history_kept_across_steps_equals_views_built_afresh(layout):
    """The committed steps are merged into fragments once and extended as steps commit:
    every step's views equal those of a fresh state holding the same history."""
    import copy
    import random

    rng = random.Random(0)
    t = tracker(layout, workers=3)
    lengths = [5, 1, 1]
    for _ in range(60):
        texts = {}
        for w in range(3):
            step = [rng.choice(["a", "b", "|"]) for _ in range(rng.randint(0, 3))]
            texts[w] = step
            lengths[w] += len(step)
        t.commit_written(texts)
        kept = t.views(lengths)
        fresh = copy.copy(t.state)
        fresh.history = list(t.state.history)
        fresh._history_view = None
        assert kept == views(layout, fresh)
        history = t.shared_history()
        assert [before + history + after for before, after in split_views(layout, t.state)] == kept
    assert len(t.state.history) > 20
