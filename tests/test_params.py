"""The hogwild flag: defaults, and errors that name the field and the allowed values."""

from __future__ import annotations

import pytest

from vllm_hogwild.admission import Capacity, GroupDemand
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
