"""A hogwild group registered with a bare planner: no vLLM engine, no model.

The requests hold what the planner reads of vLLM's request state; a step appends one
token id per worker, ``END`` (its text ends a step) or ``WORD`` (it does not)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm_hogwild.params import parse
from vllm_hogwild.planner import Planner
from vllm_hogwild.worker_requests import WorkerStamp

END, WORD = 1, 2


@dataclass
class Request:
    """The fields of vLLM's request state that the planner reads."""

    prompt_token_ids: list[int]
    output_token_ids: list[int] = field(default_factory=list)
    block_ids: tuple[list[int], ...] = ([0],)


def planned_group(workers: int, layout: str, prompt: int, boundary: str = "|") -> tuple[Planner, dict[str, Request]]:
    """A planner holding one group ``"g"`` of W workers ``w0..``; worker 0's request holds
    the prompt, the others a copy of its last token (each its own block)."""
    planner = Planner(lambda t: boundary if t == END else " word")
    requests = {}
    flag = parse({"hogwild_workers": workers, "hogwild_layout": layout, "hogwild_boundary": boundary,
                 "hogwild_boundary_sentence": False})
    for w in range(workers):
        requests[f"w{w}"] = Request([WORD] * (prompt if w == 0 else 1), block_ids=([w],))
        planner.add(f"w{w}", WorkerStamp("g", w, flag, prompt, ((),) * workers), requests[f"w{w}"])
    return planner, requests
