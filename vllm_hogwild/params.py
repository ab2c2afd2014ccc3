"""The hogwild flag: flat keys of ``SamplingParams.extra_args`` (HTTP: ``vllm_xargs``).

Flat string / number / list values only, because that is all ``vllm_xargs`` carries;
the same keys offline and online. Pure Python: validation happens in the frontend,
before anything is scheduled, and every error names the field and the allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from vllm_hogwild.layouts import ASYNC_LAYOUT, LAYOUTS
from vllm_hogwild.prompts import NAMES, PRESETS
from vllm_hogwild.protocol import REPEAT_TOKENS, ProtocolConfig
from vllm_hogwild.steps import BoundaryRule

PREFIX = "hogwild_"
MAX_WORKERS = 16

FIELDS = {
    "hogwild_workers": "int in 1..16 (required: turns hogwild on)",
    "hogwild_layout": f"one of {', '.join(LAYOUTS)} (default combined)",
    "hogwild_boundary": 'non-empty string that can end a step (default "\\n\\n")',
    "hogwild_boundary_sentence": "bool: a step ends only after a sentence (default true)",
    "hogwild_prefixes": "list of W strings, each worker's first text (default none; not with the protocol)",
    "hogwild_protocol": "bool: run the collaboration protocol (instruction, step headers, "
                        "redundancy checks, final \\boxed{} answer; default false)",
    "hogwild_names": "list of W distinct worker names (protocol only; default Alice, Bob, ...)",
    "hogwild_preset": f"chat format, one of auto, {', '.join(PRESETS)} (protocol only; default auto)",
    "hogwild_check_tokens": "int >= 0: a worker's tokens between redundancy checks, 0 = never "
                            "(protocol only; default 1024)",
    "hogwild_answer_tokens": "int in 1..256: most tokens of the final answer (protocol only; default 16)",
    "hogwild_repeat_tokens": f"0 or an int in 2..4096: the shortest run of a finished step's tokens a worker may "
                             f"not copy, 0 = copies allowed (protocol only; default {REPEAT_TOKENS})",
    "hogwild_async": "bool: think while answering, worker 0 writes the answer while worker 1 thinks "
                     "(hogwild_workers=2; not with hogwild_layout, hogwild_prefixes or the protocol; default false)",
}
PROTOCOL_FIELDS = ("hogwild_names", "hogwild_preset", "hogwild_check_tokens", "hogwild_answer_tokens",
                   "hogwild_repeat_tokens")


@dataclass(frozen=True)
class HogwildParams:
    """A validated hogwild request."""

    workers: int
    layout: str = "combined"
    boundary: BoundaryRule = BoundaryRule()
    prefixes: tuple[str, ...] = ()
    protocol: ProtocolConfig | None = None
    preset: str = "auto"

    @property
    def is_async(self) -> bool:
        """Think while answering (``hogwild_async``): worker 0 writes, worker 1 thinks."""
        return self.layout == ASYNC_LAYOUT


def is_hogwild(extra_args: Mapping[str, Any] | None) -> bool:
    """True if the request asks for hogwild (any user key with the prefix)."""
    return bool(extra_args) and any(k.startswith(PREFIX) for k in extra_args)


def field_of(error: Exception) -> str | None:
    """The request field a validation message is about (messages start with ``field:``)."""
    head = str(error).split(":")[0]
    return head if head.isidentifier() else None


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise ValueError(f"{key}: expected a bool (true/false), got {value!r}")


def _int(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key}: expected an int in {low}..{high}, got {value!r}")
    return value


def _choice(key: str, value: Any, allowed: list[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{key}: got {value!r}; allowed: {', '.join(allowed)}")
    return value


def _strings(key: str, value: Any, count: int) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
        raise ValueError(f"{key}: expected a list of {count} strings, got {value!r}")
    if len(value) != count:
        raise ValueError(f"{key}: expected {count} strings (one per worker), got {len(value)}")
    return tuple(value)


def _protocol(keys: Mapping[str, Any], workers: int, rule: BoundaryRule) -> tuple[ProtocolConfig | None, str]:
    if not _bool("hogwild_protocol", keys.get("hogwild_protocol", False)):
        given = [k for k in PROTOCOL_FIELDS if k in keys]
        if given:
            raise ValueError(f"{given[0]}: only with hogwild_protocol=true")
        return None, "auto"
    if "hogwild_prefixes" in keys:
        raise ValueError("hogwild_prefixes: not with hogwild_protocol=true (the protocol writes each "
                         "worker's first text; use hogwild_names to name the workers)")
    names = _strings("hogwild_names", keys.get("hogwild_names", list(NAMES[:workers])), workers)
    if len(set(names)) != workers or not all(n.strip() for n in names):
        raise ValueError(f"hogwild_names: expected {workers} distinct non-empty names, got {list(names)}")
    preset = _choice("hogwild_preset", keys.get("hogwild_preset", "auto"), ["auto", *PRESETS])
    check = _int("hogwild_check_tokens", keys.get("hogwild_check_tokens", 1024), 0, 10**9)
    answer = _int("hogwild_answer_tokens", keys.get("hogwild_answer_tokens", 16), 1, 256)
    repeat = _int("hogwild_repeat_tokens", keys.get("hogwild_repeat_tokens", REPEAT_TOKENS), 0, 4096)
    if repeat == 1:
        raise ValueError("hogwild_repeat_tokens: expected 0 or an int in 2..4096, got 1")
    return ProtocolConfig(names, rule, check, answer, repeat), preset


def _check_async(keys: Mapping[str, Any], workers: int) -> None:
    if workers != 2:
        raise ValueError(f"hogwild_workers: hogwild_async=true takes hogwild_workers=2 (a writer and a "
                         f"thinker), got {workers}")
    for key in ("hogwild_layout", "hogwild_prefixes", "hogwild_protocol", *PROTOCOL_FIELDS):
        if key in keys and not (key == "hogwild_protocol" and not _bool(key, keys[key])):
            raise ValueError(f"{key}: not with hogwild_async=true (its views and texts are its own)")


def parse(extra_args: Mapping[str, Any]) -> HogwildParams:
    """Validate the user's hogwild keys; raises ValueError naming the bad field."""
    keys = {k: v for k, v in extra_args.items() if k.startswith(PREFIX)}
    unknown = sorted(set(keys) - set(FIELDS))
    if unknown:
        raise ValueError(
            f"{unknown[0]}: unknown hogwild field ({', '.join(unknown)}); allowed: "
            + "; ".join(f"{k} ({v})" for k, v in FIELDS.items())
        )
    if "hogwild_workers" not in keys:
        raise ValueError(f"hogwild_workers: required, {FIELDS['hogwild_workers']}")
    workers = _int("hogwild_workers", keys["hogwild_workers"], 1, MAX_WORKERS)
    layout = _choice("hogwild_layout", keys.get("hogwild_layout", "combined"), list(LAYOUTS))
    if _bool("hogwild_async", keys.get("hogwild_async", False)):
        _check_async(keys, workers)
        layout = ASYNC_LAYOUT
    marker = keys.get("hogwild_boundary", "\n\n")
    if not isinstance(marker, str) or not marker:
        raise ValueError(f"hogwild_boundary: expected a non-empty string, got {marker!r}")
    sentence = _bool("hogwild_boundary_sentence", keys.get("hogwild_boundary_sentence", True))
    rule = BoundaryRule(marker, sentence)
    protocol, preset = _protocol(keys, workers, rule)
    prefixes = _strings("hogwild_prefixes", keys["hogwild_prefixes"], workers) if "hogwild_prefixes" in keys else ()
    return HogwildParams(workers, layout, rule, prefixes, protocol, preset)


def to_plain(flag: HogwildParams) -> dict[str, Any]:
    """A validated request as plain data (what crosses vLLM's process boundaries)."""
    protocol = flag.protocol
    return {"workers": flag.workers, "layout": flag.layout, "boundary": flag.boundary.marker,
            "sentence": flag.boundary.sentence, "prefixes": list(flag.prefixes), "preset": flag.preset,
            "protocol": None if protocol is None else {
                "names": list(protocol.names), "check_tokens": protocol.check_tokens,
                "answer_tokens": protocol.answer_tokens, "repeat_tokens": protocol.repeat_tokens}}


def from_plain(plain: Mapping[str, Any]) -> HogwildParams:
    """``to_plain``'s inverse (no validation: the data was validated when it was made)."""
    rule = BoundaryRule(plain["boundary"], plain["sentence"])
    p = plain["protocol"]
    protocol = None if p is None else ProtocolConfig(tuple(p["names"]), rule, p["check_tokens"], p["answer_tokens"],
                                                    p["repeat_tokens"])
    return HogwildParams(plain["workers"], plain["layout"], rule, tuple(plain["prefixes"]), protocol, plain["preset"])
