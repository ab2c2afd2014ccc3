"""The hogwild flag: defaults, and errors that name the field and the allowed values."""

from __future__ import annotations

import pytest

from vllm_hogwild.admission import Capacity, GroupDemand, check_lengths
from vllm_hogwild.params import HogwildParams, parse
from vllm_hogwild.steps import BoundaryRule


def test_defaults():
    assert parse({"hogwild_workers": 3}) == HogwildParams(3, "combined", BoundaryRule("\n\n", True), ())


def test_all_fields():
    p = parse({"hogwild_workers": "2", "hogwild_layout": "interleaved", "hogwild_boundary": "\n",
               "hogwild_boundary_sentence": 0, "hogwild_prefixes": ["A:", "B:"], "other": 1})
    assert p == HogwildParams(2, "interleaved", BoundaryRule("\n", False), ("A:", "B:"))


@pytest.mark.parametrize("args,match", [
    ({"hogwild_workers": 0}, r"hogwild_workers: expected an int in 1\.\.16"),
    ({"hogwild_workers": 17}, r"hogwild_workers: expected an int in 1\.\.16"),
    ({"hogwild_workers": 2.5}, "hogwild_workers"),
    ({"hogwild_workers": True}, "hogwild_workers"),
    ({"hogwild_layout": "combined"}, "hogwild_workers: required"),
    ({"hogwild_workers": 2, "hogwild_layout": "zigzag"}, "allowed: contiguous, interleaved, combined"),
    ({"hogwild_workers": 2, "hogwild_wrokers": 2}, "hogwild_wrokers: unknown hogwild field.*allowed"),
    ({"hogwild_workers": 2, "hogwild_boundary": ""}, "hogwild_boundary"),
    ({"hogwild_workers": 2, "hogwild_boundary_sentence": "maybe"}, "hogwild_boundary_sentence"),
    ({"hogwild_workers": 2, "hogwild_prefixes": ["A"]}, "hogwild_prefixes: expected 2 strings"),
    ({"hogwild_workers": 2, "hogwild_prefixes": "A"}, "hogwild_prefixes"),
])
def test_bad_flags(args, match):
    with pytest.raises(ValueError, match=match):
        parse(args)


def test_admission_takes_whole_groups_only():
    cap = Capacity(tokens=100, seats=8, free_blocks=10, unreserved_blocks=20, block_size=32)
    assert cap.take(GroupDemand((40, 2, 2), max_tokens=60))  # prompts 2+1+1 blocks, worst 4+2+2
    assert (cap.tokens, cap.seats, cap.free_blocks, cap.unreserved_blocks) == (56, 5, 6, 12)
    assert not cap.take(GroupDemand((10,) * 4, max_tokens=100))  # worst 4 x 4 > 12 unreserved
    assert (cap.tokens, cap.seats, cap.free_blocks, cap.unreserved_blocks) == (56, 5, 6, 12)
    assert cap.take(GroupDemand((10,) * 4, max_tokens=60))  # worst 4 x 3 = 12 fits


def test_a_group_too_long_for_one_step_leads_then_joins():
    # Worker 0's prompt 200 (199 shared), three others of 5: 215 tokens, more than 100.
    group = GroupDemand((200, 5, 5, 5), max_tokens=20, shared=199)
    cap = Capacity(tokens=100, seats=8, free_blocks=20, unreserved_blocks=40, block_size=32)
    assert not cap.take(group)
    assert cap.lead(group)  # charged in full: 4 seats, 7+1+1+1 prompt blocks, 7+1+1+1 worst
    assert (cap.tokens, cap.seats, cap.free_blocks, cap.unreserved_blocks) == (0, 4, 10, 30)
    assert not cap.lead(group)  # no budget left this step
    # Later, worker 0 has 150 tokens (its running need, 50, is outside `tokens`): the others
    # join if their 15 tokens, 3 seats and 3 + (7 - 5) blocks are there; nothing reserved again.
    cap = Capacity(tokens=15, seats=3, free_blocks=5, unreserved_blocks=0, block_size=32)
    assert cap.join(group, led=150)
    assert (cap.tokens, cap.seats, cap.free_blocks, cap.unreserved_blocks) == (0, 0, 0, 0)
    assert not Capacity(tokens=14, seats=3, free_blocks=5, unreserved_blocks=0, block_size=32).join(group, 150)
    assert not Capacity(tokens=15, seats=2, free_blocks=5, unreserved_blocks=0, block_size=32).join(group, 150)
    # A one-token prompt has nothing to lead with.
    assert not Capacity(tokens=100, seats=8, free_blocks=20, unreserved_blocks=40, block_size=32).lead(
        GroupDemand((1, 5), max_tokens=20, shared=0))


def test_lengths_refuse_only_what_no_step_can_start():
    # A prompt of 1000 with a step of 64 is fine: it prefills in chunks.
    assert check_lengths(4096, 64, 100, prompt_len=1000, prefix_lens=[3, 3, 3], framing_len=0) == 100
    # The step the workers start in: the prompt's last token, framing 20, prefixes 9, 2 more tails.
    assert check_lengths(4096, 32, 100, prompt_len=1000, prefix_lens=[3, 3, 3], framing_len=20) == 100
    with pytest.raises(ValueError, match=r"hogwild_prefixes: .*\(33 tokens\), more than max_num_batched_tokens=32"):
        check_lengths(4096, 32, 100, prompt_len=1000, prefix_lens=[4, 3, 3], framing_len=20)
    with pytest.raises(ValueError, match=r"max_tokens: 3 workers x max_tokens=2000 .* allowed: max_tokens <= 1029"):
        check_lengths(4096, 64, 2000, prompt_len=1000, prefix_lens=[3, 3, 3], framing_len=0)
