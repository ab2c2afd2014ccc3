"""The planner hands each worker's view over in two parts: the group's shared history as
arrays (one object for the group, brought up to date each step) and the rest. Together
they must be exactly the layouts' views, step after step, as steps commit, fragments
grow and workers finish."""

from __future__ import annotations

import random
from dataclasses import fields

import pytest

from hogwild_kernels import SeqView
from tests.helpers.planned import END, WORD, planned_group


def _whole_views(plan) -> list[list[tuple[int, int, int, int]]]:
    """Each sequence's whole view, as the fragment table takes it (a SeqPlan has a SeqView's fields)."""
    return [SeqView(**{f.name: getattr(seq, f.name) for f in fields(seq)}).all_fragments() for seq in plan.seqs]


@pytest.mark.parametrize("layout", ["interleaved", "combined", "contiguous"])
def test_views_handed_over_equal_the_layouts(layout):
    workers = 3
    planner, requests = planned_group(workers, layout, prompt=7)
    tracker = planner._groups["g"].tracker
    rng = random.Random(0)
    running = list(requests)
    grew = 0
    for step in range(60):
        if step == 40:  # a worker ends; its blocks stay visible through an extra row
            planner.finish(["w2"])
            running.remove("w2")
        rows = [(rid, 1, len(requests[rid].prompt_token_ids) + len(requests[rid].output_token_ids) + 1)
                for rid in running]
        last = tracker.shared_history()[-1:] if layout != "contiguous" else []
        plan = planner.plan(rows)
        history = tracker.shared_history()
        grew += bool(last and history[-1] is not last[0] and history[-1].start == last[0].start)
        if step > 0:  # from the first decode step on, the history is handed over as arrays
            assert (plan.seqs[0].shared is not None) == bool(history)
        source_row = {w: i for i, w in enumerate(int(rid[1]) for rid in running)}
        source_row.update({w: len(running) + k for k, w in enumerate(w for w in range(workers)
                                                                          if f"w{w}" not in running)})
        lengths = [max(tracker.state.workers[w].length, 0) for w in range(workers)]
        expect = [sorted((source_row[f.source], f.start, f.end, f.offset) for f in view)
                  for w, view in enumerate(tracker.views(lengths)) if f"w{w}" in running]
        assert [sorted(v) for v in _whole_views(plan)] == expect
        assert all(s.shared is plan.seqs[0].shared for s in plan.seqs)  # one object per group
        for rid in running:
            # Worker 0 alone ends steps for a while (its history fragment grows), then all do.
            ends = rng.random() < (0.3 if rid == "w0" or step > 20 else 0.0)
            requests[rid].output_token_ids.append(END if ends else WORD)
    if layout != "contiguous":
        assert len(tracker.state.history) > 10 and grew > 0
