"""Problems in, answers graded: the pure part of the accuracy benchmark (no vLLM, no torch).

A problem file is JSONL, one object per line, in any of the shapes public math sets use:

* ``{"problem": ..., "answer": ...}`` (this project's own set, ``data/arithmetic50.jsonl``);
* ``{"question": ..., "answer": "... #### 42"}`` (GSM8K: the answer follows ``####``);
* ``{"problem": ..., "solution": "... \\boxed{42} ..."}`` (MATH: the last boxed answer).

Answers are compared after ``normalize``: spaces, ``$``, ``\\text{}``/``\\mathrm{}``, ``\\!``
and thousands commas go, a trailing period or ``.0`` goes, so do a leading ``x =`` and
one trailing unit word after a number (``13 cows``), and a simple fraction
(``\\frac{6}{8}``, ``\\dfrac34``, ``6/8``, ``0.75`` when it is exact) becomes its lowest terms.
Anything else is compared as written, so a wrong normalization can only miss a match that
a human would grant, never grant one that is wrong.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

from vllm_hogwild.prompts import boxed


@dataclass(frozen=True)
class Problem:
    text: str
    answer: str


def _problem(obj: object, where: str) -> Problem:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    text = obj.get("problem", obj.get("question"))
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: needs a non-empty string field 'problem' or 'question'")
    if "answer" in obj:
        answer = obj["answer"]
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"{where}: field 'answer' must be a non-empty string or number")
        if "####" in answer:  # GSM8K: the worked solution, then '#### 42'
            answer = answer.rsplit("####", 1)[1]
        return Problem(text.strip(), answer.strip())
    if isinstance(obj.get("solution"), str):
        answer = boxed(obj["solution"])
        if answer is None:
            raise ValueError(f"{where}: field 'solution' holds no complete \\boxed{{}} answer")
        return Problem(text.strip(), answer)
    raise ValueError(f"{where}: needs a field 'answer', or 'solution' with a \\boxed{{}} answer")


def load_problems(path: str, limit: int | None = None) -> list[Problem]:
    """Every problem of a JSONL file (blank lines skipped); a bad line is an error naming it."""
    problems = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
            problems.append(_problem(obj, where))
    if not problems:
        raise ValueError(f"{path}: holds no problems")
    return problems[:limit] if limit else problems


_DROP = re.compile(r"\\[,!;: ]|\\left|\\right|\\?\$")
_WRAP = re.compile(r"\\(?:text|mathrm|textbf|mathbf)\{([^{}]*)\}")
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{?(-?\d+)\}?\{?(-?\d+)\}?$")
_THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")
_NAMED = re.compile(r"^[a-zA-Z]\s*=\s*(.+)$")  # x = 4
_UNIT = re.compile(r"^(-?[\d.,/]+)\s*(?:\\%|[a-zA-Z]+)$")  # 13 cows, 30 dollars


def normalize(answer: str | None) -> str | None:
    """A canonical form of an answer for comparison (``None`` stays ``None``)."""
    if answer is None:
        return None
    text = _WRAP.sub(r"\1", answer)
    text = _DROP.sub("", text).strip().rstrip(".").strip()
    text = _NAMED.sub(r"\1", text)
    text = _UNIT.sub(r"\1", text).replace(" ", "")
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    fraction = _number(text)
    return text if fraction is None else _canonical(fraction)


def _number(text: str) -> Fraction | None:
    match = _FRAC.match(text)
    if match:
        sign, top, bottom = match.groups()
        return None if int(bottom) == 0 else Fraction(int(sign + top), int(bottom))
    if re.fullmatch(r"-?\d+/-?\d+", text):
        top, bottom = text.split("/")
        return None if int(bottom) == 0 else Fraction(int(top), int(bottom))
    if re.fullmatch(r"-?(\d+\.?\d*|\.\d+)", text):
        return Fraction(text)
    return None


def _canonical(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def is_correct(predicted: str | None, truth: str) -> bool:
    got = normalize(predicted)
    return got is not None and got == normalize(truth)


def majority(answers: list[str | None]) -> str | None:
    """The answer given most often, as normalized (ties: the one given first), as its first
    giver wrote it; ``None`` if no answer was given."""
    given = [(a, normalize(a)) for a in answers if a is not None]
    if not given:
        return None
    counts = Counter(key for _, key in given)
    top = max(counts.values())
    return next(a for a, key in given if counts[key] == top)


def wilson(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z = 1.96)."""
    if total == 0:
        return (0.0, 1.0)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))
