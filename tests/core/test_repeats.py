"""The repeat guard: no run of ``length`` tokens of a finished step, or of the step being
written, is written again."""

import pytest

from vllm_hogwild.repeats import RepeatGuard


def write(guard: RepeatGuard, worker: int, tokens: list[int], end: bool = False) -> None:
    for t in tokens:
        guard.add(worker, t)
    if end:
        guard.end_step(worker)


def test_a_copy_of_a_finished_step_is_barred_at_its_length_th_token():
    guard = RepeatGuard(4, workers=2)
    write(guard, 0, [1, 2, 3, 4, 5, 6], end=True)
    assert guard.banned(1) == frozenset()
    write(guard, 1, [1, 2])
    assert guard.banned(1) == frozenset()  # shorter than a run: allowed
    write(guard, 1, [3])
    assert guard.banned(1) == {4}  # the other worker's step: barred too
    write(guard, 0, [9, 3, 4, 5])
    assert guard.banned(0) == {6}  # a copy from the middle of a step
    write(guard, 0, [7])
    assert guard.banned(0) == frozenset()


def test_a_loop_inside_the_step_being_written_is_barred():
    guard = RepeatGuard(3, workers=1)
    write(guard, 0, [5, 6, 7, 5])
    assert guard.banned(0) == frozenset()
    write(guard, 0, [6])
    assert guard.banned(0) == {7}


def test_runs_do_not_cross_steps_and_every_finished_step_counts():
    guard = RepeatGuard(3, workers=2)
    write(guard, 0, [1, 2, 3], end=True)
    write(guard, 1, [1, 2, 7], end=True)
    write(guard, 0, [8, 9], end=True)
    write(guard, 1, [1, 2])
    assert guard.banned(1) == {3, 7}
    write(guard, 0, [3, 1])
    assert guard.banned(0) == frozenset()  # the end of one step and the start of the next
    write(guard, 1, [0, 8, 9])
    assert guard.banned(1) == frozenset()  # a step shorter than a run bars nothing


def test_a_run_needs_two_tokens():
    with pytest.raises(ValueError, match="at least 2 tokens, got 1"):
        RepeatGuard(1, workers=1)
