"""The worker requests of one group: what each one holds (the one rule, used everywhere).

Worker 0's request holds the shared prompt, then the framing blocks (the layout's
headings, protocol only), then its prefix. Every other worker's request holds its own copy
of the prompt's last token, then its prefix: the prompt is computed once, by worker 0, and
the copy gives each worker a query row for its first token. The frontend builds the
requests by this rule, the engine core rewrites each child's prompt by it, the planner and
the group tracker read positions by it, and the test oracle builds its runs by it.

Each worker request carries a ``WorkerStamp``: its group, its index, and the request's
validated flag, stamped once by the frontend as plain data under ``extra_args[STAMP_KEY]``
(it crosses vLLM's process boundaries) and read back everywhere through ``stamp_of``.

Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from vllm_hogwild.layouts import Span
from vllm_hogwild.params import HogwildParams, from_plain, to_plain

STAMP_KEY = "_hogwild"  # never a user key: those start with "hogwild_"

Framing = Sequence[tuple[str, Sequence[int]]]  # [(block name, its token ids), ...] after the prompt
# Per worker, the named parts of its first text [(name, tokens), ...] in order (think while
# answering: intro, split, opening; async_prompts.SECTIONS), placed apart by its layout.
Sections = Sequence[Sequence[tuple[str, int]]]


def worker_prompt(shared: Sequence[int], framing: Framing, prefixes: Sequence[Sequence[int]],
                  worker: int) -> list[int]:
    """The token ids of ``worker``'s request."""
    own = list(shared) + [t for _, ids in framing for t in ids] if worker == 0 else list(shared[-1:])
    return own + list(prefixes[worker])


def cacheable_tokens(stamp: "WorkerStamp") -> int:
    """How many tokens at the start of a worker's request may be read from and written to
    vLLM's prefix cache: worker 0's shared prompt but its last token, plain causal text whose
    keys depend on no worker (a plain request with the same prompt computes the same keys).
    The last one worker 0 computes in the step its group starts, with the other workers'
    copies of it (``prompt_tails``), so that a hit never takes the group past where it leads
    alone. Nothing after the prompt (the framing, the prefixes and every generated token
    attend to other workers), and nothing of another worker's request (its copy of the
    prompt's last token sits at position 0 of its own request, where a plain request's first
    token would have other keys)."""
    return prompt_tails(stamp.prompt_len, stamp.flag.workers)[0] if stamp.worker == 0 else 0


def spans(prompt_len: int, framing: Framing, sections: Sections, workers: int) -> dict[str, Span]:
    """Where the named blocks sit, by name: worker 0's framing blocks right after the prompt, in
    the given order, and each worker's sections (``<name>:<worker>``) from its stream's start."""
    out, at = {}, prompt_len
    for name, ids in framing:
        out[name] = Span(0, at, at + len(ids))
        at += len(ids)
    for w, (start, parts) in enumerate(zip(stream_starts(prompt_len, framing, workers), sections)):
        for name, count in parts:
            out[f"{name}:{w}"] = Span(w, start, start + count)
            start += count
    return out


def framing_length(framing: Framing) -> int:
    return sum(len(ids) for _, ids in framing)


def prompt_tails(prompt_len: int, workers: int) -> list[int]:
    """Where each worker's copy of the prompt's last token sits in its own request: worker 0
    has the whole prompt, the others only that one token, at position 0."""
    return [prompt_len - 1] + [0] * (workers - 1)


def stream_starts(prompt_len: int, framing: Framing, workers: int) -> list[int]:
    """Where each worker's own stream (its prefix, then its outputs) starts in its request."""
    return [prompt_len + framing_length(framing)] + [1] * (workers - 1)


@dataclass(frozen=True)
class WorkerStamp:
    """What a worker request is: worker ``worker`` of ``group``, under the flag ``flag``."""

    group: str
    worker: int
    flag: HogwildParams
    prompt_len: int  # the shared prompt's tokens (with the protocol: its full prompt)
    prefix_ids: tuple[tuple[int, ...], ...]  # each worker's first text
    framing: tuple[tuple[str, tuple[int, ...]], ...] = ()
    sections: tuple[tuple[tuple[str, int], ...], ...] = ()  # per worker, its first text's parts (Sections)

    def plain(self) -> dict[str, Any]:
        return {"group": self.group, "worker": self.worker, "flag": to_plain(self.flag), "prompt_len": self.prompt_len,
                "prefix_ids": [list(p) for p in self.prefix_ids], "framing": [[n, list(ids)] for n, ids in self.framing],
                "sections": [[[n, c] for n, c in parts] for parts in self.sections]}

    def spans(self) -> dict[str, Span]:
        """Where the group's named blocks sit (``spans``)."""
        return spans(self.prompt_len, self.framing, self.sections, self.flag.workers)


def stamped(extra_args: Mapping[str, Any] | None, stamp: WorkerStamp) -> dict[str, Any]:
    """``extra_args`` with ``stamp`` on it."""
    return {**(extra_args or {}), STAMP_KEY: stamp.plain()}


def group_of(params: Any) -> str | None:
    """A worker request's group, or None (cheap: read for every request at every step)."""
    extra = getattr(params, "extra_args", None)
    plain = extra.get(STAMP_KEY) if extra else None
    return None if plain is None else plain["group"]


# Stamps read back, by the identity of their plain data (held, so the identity stays its own
# while cached): the scheduler's and cache manager's hooks read every worker's stamp at every
# step, and building one from its plain data costs ~3 us. The plain data is never changed once
# stamped; the cache is emptied when it grows past STAMPS_CACHED (finished requests' stamps).
_read: dict[int, tuple[Mapping[str, Any], WorkerStamp]] = {}
STAMPS_CACHED = 4096


def stamp_of(params: Any) -> WorkerStamp | None:
    """The stamp of a request's sampling params (``extra_args``), or None: not a worker."""
    extra = getattr(params, "extra_args", None)
    plain = extra.get(STAMP_KEY) if extra else None
    if plain is None:
        return None
    known = _read.get(id(plain))
    if known is not None and known[0] is plain:
        return known[1]
    stamp = WorkerStamp(str(plain["group"]), int(plain["worker"]), from_plain(plain["flag"]), int(plain["prompt_len"]),
                        tuple(tuple(p) for p in plain["prefix_ids"]),
                        tuple((n, tuple(ids)) for n, ids in plain["framing"]),
                        tuple(tuple((n, int(c)) for n, c in parts) for parts in plain.get("sections", ())))
    if len(_read) >= STAMPS_CACHED:
        _read.clear()
    _read[id(plain)] = (plain, stamp)
    return stamp
