"""The hogwild flag: flat keys of ``SamplingParams.extra_args`` (HTTP: ``vllm_xargs``).

Flat string / number / list values only, because that is all ``vllm_xargs`` carries;
the same keys offline and online. Pure Python: validation happens in the frontend,
before anything is scheduled, and every error names the field and the allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from vllm_hogwild.layouts import LAYOUTS
from vllm_hogwild.steps import BoundaryRule

PREFIX = "hogwild_"
MAX_WORKERS = 16

# Keys the plugin itself stamps on each worker's request (never user input).
WORKER_KEY = "_hogwild_worker"
GROUP_KEY = "_hogwild_group"
PREFIX_IDS_KEY = "_hogwild_prefix_ids"
PROMPT_LEN_KEY = "_hogwild_prompt_len"

FIELDS = {
    "hogwild_workers": "int in 1..16 (required: turns hogwild on)",
    "hogwild_layout": f"one of {', '.join(LAYOUTS)} (default combined)",
    "hogwild_boundary": 'non-empty string that can end a step (default "\\n\\n")',
    "hogwild_boundary_sentence": "bool: a step ends only after a sentence (default true)",
    "hogwild_prefixes": "list of W strings, each worker's first text (default none)",
}


@dataclass(frozen=True)
class HogwildParams:
    """A validated hogwild request."""

    workers: int
    layout: str = "combined"
    boundary: BoundaryRule = BoundaryRule()
    prefixes: tuple[str, ...] = ()


def is_hogwild(extra_args: Mapping[str, Any] | None) -> bool:
    """True if the request asks for hogwild (any user key with the prefix)."""
    return bool(extra_args) and any(k.startswith(PREFIX) for k in extra_args)


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise ValueError(f"{key}: expected a bool (true/false), got {value!r}")


def parse(extra_args: Mapping[str, Any]) -> HogwildParams:
    """Validate the user's hogwild keys; raises ValueError naming the bad field."""
    keys = {k: v for k, v in extra_args.items() if k.startswith(PREFIX)}
    unknown = sorted(set(keys) - set(FIELDS))
    if unknown:
        raise ValueError(
            f"unknown hogwild field(s) {', '.join(unknown)}; allowed: "
            + "; ".join(f"{k} ({v})" for k, v in FIELDS.items())
        )
    if "hogwild_workers" not in keys:
        raise ValueError(f"hogwild_workers is required: {FIELDS['hogwild_workers']}")
    workers = keys["hogwild_workers"]
    if isinstance(workers, bool) or not isinstance(workers, int):
        if isinstance(workers, str) and workers.isdigit():
            workers = int(workers)
        else:
            raise ValueError(f"hogwild_workers: expected an int in 1..{MAX_WORKERS}, got {workers!r}")
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"hogwild_workers: expected an int in 1..{MAX_WORKERS}, got {workers}")
    layout = keys.get("hogwild_layout", "combined")
    if layout not in LAYOUTS:
        raise ValueError(f"hogwild_layout: got {layout!r}; allowed: {', '.join(LAYOUTS)}")
    marker = keys.get("hogwild_boundary", "\n\n")
    if not isinstance(marker, str) or not marker:
        raise ValueError(f"hogwild_boundary: expected a non-empty string, got {marker!r}")
    sentence = _bool("hogwild_boundary_sentence", keys.get("hogwild_boundary_sentence", True))
    prefixes = keys.get("hogwild_prefixes", [])
    if not isinstance(prefixes, (list, tuple)) or not all(isinstance(p, str) for p in prefixes):
        raise ValueError(f"hogwild_prefixes: expected a list of {workers} strings, got {prefixes!r}")
    if prefixes and len(prefixes) != workers:
        raise ValueError(
            f"hogwild_prefixes: expected {workers} strings (one per worker), got {len(prefixes)}"
        )
    return HogwildParams(workers, layout, BoundaryRule(marker, sentence), tuple(prefixes))
