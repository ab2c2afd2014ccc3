"""What a group's workers did with each other's work, read from their texts (issue 41).

Pure text: no vLLM, no torch. A group's transcript is its workers' texts, each a run of steps
opened by the protocol's headers (``**Alice [2]:**``). The measures answer the questions the
paper's claim rests on: do the workers split the work, build on each other, or redo it?

Time inside a group is read from text length: every worker samples one token per engine step
(a forced text, a header or an opening, takes one step whatever its length), so a step that
starts further into its worker's sampled text than another worker's step ends into its own
was written after that one finished. Characters of sampled text stand in for tokens (the
workers write text of the same kind), so the clock is approximate.

A step's *results* are the numbers it writes that the problem does not hold: the quantities
it derived. Per group:

* ``steps``: sampled steps (the forced opening of step 1 and the closing sentence are not
  steps of their own);
* ``duplicates``: steps with results, every one of them already derived by another worker in
  a step that had finished before this one began: work the group had already done;
* ``empty``: steps that derive no result (talk about the work, or restate the problem);
* ``reacts``: steps that name another worker;
* ``copies``: steps holding a run of ``COPY_WORDS`` words of another worker's finished step;
* ``shared``: of the results any worker derived, the share that more than one worker derived
  (0: the workers split the work, or went different ways; 1: they did the same);
* ``checks``: the redundancy question's answers, ``yes``, ``no`` or anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vllm_hogwild import prompts

COPY_WORDS = 8
NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")
ANSWER = re.compile(re.escape(prompts.REDUNDANCY_CHECK.strip()) + r"\s*([A-Za-z]*)")


@dataclass(frozen=True)
class Step:
    worker: int
    start: int  # characters of sampled text the worker wrote before it: the clock (see above)
    end: int
    text: str


@dataclass
class Reading:
    """One group's measures (see the module's docstring)."""

    steps: int = 0
    empty: int = 0
    duplicates: int = 0
    reacts: int = 0
    copies: int = 0
    results: int = 0  # distinct results of the group
    shared: int = 0  # of which more than one worker derived
    checks: dict[str, int] = field(default_factory=dict)


def numbers(text: str) -> set[str]:
    """The numbers a text writes, as plain decimals (``1,200`` and ``1200.0`` are ``1200``)."""
    out = set()
    for raw in NUMBER.findall(text):
        value = raw.replace(",", "")
        if "." in value:
            value = value.rstrip("0").rstrip(".")
        out.add(value)
    return out


def steps_of(text: str, names: list[str], worker: int) -> list[Step]:
    """Worker ``worker``'s steps, headers and forced texts cut out, with where each sits in its text."""
    name = names[worker]
    text = text.split(prompts.FINAL_HEADING)[0]
    header = re.compile(re.escape(f"**{name} [") + r"\d+\]:\*\*")
    cuts = [m.end() for m in header.finditer(text)]
    ends = [m.start() for m in header.finditer(text)][1:] + [len(text)]
    out, clock = [], 0
    opening = prompts.first_step(names, worker)[len(prompts.step_header(name, 1)):]
    for start, end in zip(cuts, ends):
        body = text[start:end]
        if start == cuts[0] and body.startswith(opening):
            body = body[len(opening):]
        body = body.replace(prompts.REDUNDANCY_CHECK.strip(), " ").strip()
        if body:
            out.append(Step(worker, clock, clock + len(body), body))
            clock += len(body)
    return out


def _words(text: str) -> list[str]:
    return re.findall(r"\S+", text)


def _runs(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + COPY_WORDS]) for i in range(len(words) - COPY_WORDS + 1)}


def read(texts: list[str], names: list[str], problem: str) -> Reading:
    """The measures of one group: ``texts[w]`` is worker ``w``'s output, ``names[w]`` its name."""
    given = numbers(problem)
    steps = [s for w, t in enumerate(texts) for s in steps_of(t, names, w)]
    derived = {id(s): numbers(s.text) - given for s in steps}
    r = Reading(steps=len(steps))
    for s in steps:
        r.empty += not derived[id(s)]
        earlier = [o for o in steps if o.worker != s.worker and o.end <= s.start]
        known = set().union(*(derived[id(o)] for o in earlier)) if earlier else set()
        if derived[id(s)] and derived[id(s)] <= known:
            r.duplicates += 1
        if any(re.search(rf"\b{re.escape(n)}\b", s.text) for w, n in enumerate(names) if w != s.worker):
            r.reacts += 1
        before = set().union(*(_runs(_words(o.text)) for o in earlier))
        if _runs(_words(s.text)) & before:
            r.copies += 1
    by_worker = [set().union(*(derived[id(s)] for s in steps if s.worker == w)) for w in range(len(texts))]
    every = set().union(*by_worker) if by_worker else set()
    r.results = len(every)
    r.shared = sum(sum(x in mine for mine in by_worker) > 1 for x in every)
    for t in texts:
        for answer in ANSWER.findall(t):
            key = answer.lower() if answer.lower() in ("yes", "no") else "other"
            r.checks[key] = r.checks.get(key, 0) + 1
    return r


def summary(readings: list[Reading]) -> dict:
    """Totals over groups, and the share of results shared."""
    steps = sum(r.steps for r in readings)
    results = sum(r.results for r in readings)
    checks: dict[str, int] = {}
    for r in readings:
        for k, v in r.checks.items():
            checks[k] = checks.get(k, 0) + v
    return {"groups": len(readings), "steps": steps, "empty": sum(r.empty for r in readings),
            "duplicates": sum(r.duplicates for r in readings),
            "reacts": sum(r.reacts for r in readings), "copies": sum(r.copies for r in readings),
            "results": results, "shared": sum(r.shared for r in readings),
            "shared_share": sum(r.shared for r in readings) / results if results else 0.0, "checks": checks}
