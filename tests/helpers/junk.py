"""Junk for every hogwild field, shared by the offline fuzz (test_fuzz.py) and the HTTP one
(test_server.py)."""

from __future__ import annotations

import random

from vllm_hogwild.params import FIELDS

JUNK = [None, float("nan"), float("inf"), -float("inf"), -1, 0, 1, 3, 2.5, 10**30, -(10**30), True, "", "  ",
        "true", "2", "x" * 5000, "ü🙂\u202e", {"a": 1}, [], [1, 2], ["Alice", "Alice"], ["A", "B"], ["A", "B", "C"],
        ["<eos>", "<bos>"], [["nested"], "B"], "combined", "\n\n"]
# Fields an error may name: ours, and vLLM's own (it refuses integers beyond 64 bits in
# extra_args itself, naming extra_args).
FIELDS_NAMED = set(FIELDS) | {"n", "max_tokens", "prompt", "ignore_eos", "extra_args"}


def bad_input_cases(seed: int) -> list[dict]:
    rng = random.Random(seed)
    cases = [{"hogwild_workers": 2, key: value} for key in FIELDS for value in JUNK]
    cases += [{"hogwild_workers": value} for value in JUNK]
    cases += [{"hogwild_workers": 2, "hogwild_protocol": True, key: value}
              for key in ("hogwild_names", "hogwild_preset", "hogwild_check_tokens", "hogwild_answer_tokens")
              for value in rng.sample(JUNK, 8)]
    cases += [{"hogwild_workers": 2, "hogwild_nonsense": 1}, {"hogwild_workers": 2, "hogwild_Layout": "combined"}]
    return cases
