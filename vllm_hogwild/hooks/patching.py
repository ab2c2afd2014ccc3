"""What every hook module shares: how a vLLM method is wrapped, and how a request is read."""

from __future__ import annotations

from typing import Any, Callable

from vllm_hogwild import worker_requests


def wrap(cls: type, name: str, make: Callable[[Callable], Callable]) -> None:
    """Replace ``cls.name`` by ``make(original)``."""
    setattr(cls, name, make(getattr(cls, name)))


def group_of(request: Any) -> str | None:
    """The group of a worker request (vLLM's ``Request`` or ``EngineCoreRequest``), or None."""
    return worker_requests.group_of(request.sampling_params)


def stop_tokens(sp: Any) -> set[int]:
    """The tokens that end a request (vLLM's stop check), so that forcing one stops a worker."""
    eos = {sp.eos_token_id} if sp.eos_token_id is not None else set()
    return eos | set(sp.stop_token_ids or ())
