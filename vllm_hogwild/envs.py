"""Every environment variable the plugin reads, in one place (as vLLM's ``vllm/envs.py``).

Each is read when it is used, not at import, so a test or a launcher may set it late; a
value that does not parse is an error naming the variable and what it takes. The README's
table of variables lists exactly these (a test holds it to that). Pure Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from hogwild_kernels import isa


@dataclass(frozen=True)
class Variable:
    """``parse`` turns the text into the value or raises ``ValueError`` saying what it takes;
    ``default`` is the text used when the variable is unset (``None``: the value is ``None``)."""

    name: str
    default: str | None
    parse: Callable[[str], object]


def _one_of(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return text
    return parse


def _at_least_zero(what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value >= 0:
            raise ValueError(f"expected {what}, 0 or more")
        return value
    return parse


CPU_OPS = ("native", "torch")

GROUP_ASSEMBLY_SECONDS = Variable("VLLM_HOGWILD_GROUP_ASSEMBLY_SECONDS", "60", _at_least_zero("seconds"))
ENGINE_TIMEOUT_SECONDS = Variable("VLLM_HOGWILD_ENGINE_TIMEOUT_SECONDS", "60", _at_least_zero("seconds"))
CPU_PACKED_GIB = Variable("VLLM_HOGWILD_CPU_PACKED_GIB", None, _at_least_zero("a size in GiB"))
CPU_OP = Variable("VLLM_HOGWILD_CPU_OP", "native", _one_of(*CPU_OPS))
CPU_ISA = Variable("VLLM_HOGWILD_CPU_ISA", "native", _one_of(*isa.LEVELS))
MODELS = Variable("VLLM_HOGWILD_MODELS", None, str)
ANY_VLLM = Variable("VLLM_HOGWILD_ANY_VLLM", "0", lambda text: text == "1")

VARIABLES = (GROUP_ASSEMBLY_SECONDS, ENGINE_TIMEOUT_SECONDS, CPU_PACKED_GIB, CPU_OP, CPU_ISA, MODELS, ANY_VLLM)


def get(variable: Variable):
    """The variable's value now (its default where unset or empty)."""
    text = os.environ.get(variable.name) or variable.default
    if text is None:
        return None
    try:
        return variable.parse(text)
    except ValueError as e:
        raise ValueError(f"{variable.name}={text!r}: {e}") from None
