"""The collaboration protocol as a per-step decision: which token each worker must emit.

Pure Python. The sampler hook (a logits processor) and the recompute oracle in the tests
drive one ``GroupProtocol`` per group the same way: once per engine step, before
sampling, with every running worker's output tokens so far. It answers, per worker,
an ``Action``: sample freely, emit a forced text (step headers, the redundancy
question, the closing sentence) or a stop token, or take the argmax (the final answer).
A forced text is written in one engine step: its first token takes the sample's place and
the rest follow it into the stream (the engine computes them all in the next step, as a
chunk), unless the group asks for one token per step (``whole_texts=False``: with
logprobs, which forced tokens after the first do not have). Forced tokens are ordinary
outputs of the worker, so they enter its stream and the shared cache like sampled ones.

A sampled token never completes a text of the view's framing or another worker's header
(``bans.py``, with ``bans`` given): the forced texts are the only framing in a worker's stream.
Nor does it write again ``repeat_tokens`` tokens of a finished step or of its own step (``repeats.py``).

Who answers: worker 0. No worker stops on its own while the group works: every worker's
stop tokens are banned. An instruct model takes the end of a sentence for the end of its
turn: with workers 1..W-1 free to stop, Qwen 1.5B's groups of 4 all ended after the forced
opening of step 1 (5 of 5 served at temperature 0.6), and so did 2 of 100 greedy groups of
2, answering with nothing worked out. When a stop token is worker 0's top choice after it
has finished a step of its own, the answer starts instead. The answer also starts at the
token budget, when a finished step holds a complete ``\\boxed{...}``, or when any worker
ends (aborted, or at its own token limit); the other workers are then stopped, and worker 0
writes the closing sentence and decodes the answer greedily.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from vllm_hogwild import prompts
from vllm_hogwild.bans import Bans
from vllm_hogwild.repeats import RepeatGuard
from vllm_hogwild.steps import BoundaryRule, StepScanner


REPEAT_TOKENS = 8


@dataclass(frozen=True)
class ProtocolConfig:
    """``check_tokens``: a worker's tokens between redundancy questions (0: never).
    ``answer_tokens``: most tokens of the final answer after ``\\boxed{``.
    ``repeat_tokens``: the shortest run of tokens copied from a finished step that a worker may
    not sample (``repeats.py``; 0: copies allowed)."""

    names: tuple[str, ...]
    rule: BoundaryRule = BoundaryRule()
    check_tokens: int = 1024
    answer_tokens: int = 16
    repeat_tokens: int = REPEAT_TOKENS


@dataclass(frozen=True)
class Action:
    """What a worker's next token must be: ``force`` it (then the tokens of ``then`` in
    the same engine step), or the (``greedy``) argmax or a sample among all tokens but
    ``ban``."""

    force: int | None = None
    then: tuple[int, ...] = ()
    greedy: bool = False
    ban: frozenset[int] = frozenset()


FREE = Action()


@dataclass
class _Worker:
    name: str
    scanner: StepScanner
    step: int = 1
    seen: int = 0  # output tokens observed so far
    issued: int = 0  # forced tokens issued, not yet observed
    since_check: int = 0
    step_text: str = ""
    tail: str = ""  # the end of everything the worker wrote, forced texts too (for the bans)
    queue: list[int] = field(default_factory=list)


class GroupProtocol:
    """The protocol state of one hogwild group."""

    def __init__(self, config: ProtocolConfig, encode: Callable[[str], list[int]],
                 decode: Callable[[int], str], stop_tokens: Iterable[int], max_tokens: int,
                 whole_texts: bool = True, bans: Bans | None = None) -> None:
        self.config = config
        self.bans = bans
        self.whole_texts = whole_texts
        self._encode = encode
        self._decode = decode
        self.stop_tokens = frozenset(stop_tokens)
        if not self.stop_tokens:
            raise ValueError("the hogwild protocol needs a stop token (an EOS the request does not ignore)")
        self._stop = min(self.stop_tokens)
        self._closing = encode(prompts.CLOSING)
        self.max_tokens = max_tokens
        self.workers = [_Worker(n, StepScanner(config.rule)) for n in config.names]
        self.phase = "work"  # then "answer" (worker 0 answers) or "over" (no answer possible)
        self._answer = ""
        self._answer_tokens = 0
        self._boxed_step = False  # a finished step holds a complete boxed answer
        self._repeats = RepeatGuard(config.repeat_tokens, len(config.names)) if config.repeat_tokens else None

    @staticmethod
    def reserve(config: ProtocolConfig, closing_tokens: int) -> int:
        """Output tokens worker 0 keeps for the closing sentence, the answer and a stop token."""
        return closing_tokens + config.answer_tokens + 1

    @staticmethod
    def least_max_tokens(config: ProtocolConfig, closing_tokens: int) -> int:
        """The smallest ``max_tokens`` a protocol request may ask for: the reserve and one
        token of work."""
        return GroupProtocol.reserve(config, closing_tokens) + 1

    def step(self, outputs: Mapping[int, Sequence[int]], ended: Iterable[int] = (),
             wants_stop: bool = False) -> dict[int, Action]:
        """Observe the running workers' outputs, then say what each must emit now.

        ``ended``: workers that have finished (any reason); ``wants_stop``: worker 0's top
        choice this step is a stop token (heard once worker 0 has finished a step).
        """
        for w, tokens in outputs.items():
            self._observe(w, tokens)
        ended = set(ended)
        if self.phase == "work":
            w0 = outputs.get(0)
            # Worker 0's queued text counts as written: a header never eats into the reserve.
            budget = w0 is not None and (len(w0) + len(self.workers[0].queue)
                                         + self.reserve(self.config, len(self._closing)) >= self.max_tokens)
            if 0 in ended:
                self.phase = "over"
            elif ended or budget or self._boxed_step or (
                    wants_stop and not self.workers[0].queue and self.workers[0].step > 1):
                self._start_answer()
        return {w: self._action(w) for w in outputs}

    def _start_answer(self) -> None:
        self.phase = "answer"
        self.workers[0].queue = list(self._closing)

    def _observe(self, w: int, tokens: Sequence[int]) -> None:
        worker = self.workers[w]
        for token in tokens[worker.seen:]:
            worker.seen += 1
            worker.since_check += 1
            text = self._decode(token)
            worker.tail = (worker.tail + text)[-128:]
            forced = worker.issued > 0
            worker.issued -= forced
            if self.phase == "answer" and w == 0 and not worker.queue and not forced:
                self._answer += text
                self._answer_tokens += 1
                continue
            ends = worker.scanner.ends_step(text)
            worker.step_text += text
            if not forced and self._repeats is not None:
                self._repeats.add(w, token)
            if ends and not forced and not worker.queue and self.phase == "work":
                self._end_step(w, worker)

    def _end_step(self, w: int, worker: _Worker) -> None:
        if prompts.boxed(worker.step_text) is not None:
            self._boxed_step = True
        worker.step_text = ""
        if self._repeats is not None:
            self._repeats.end_step(w)
        worker.step += 1
        text = prompts.step_header(worker.name, worker.step)
        check = self.config.check_tokens
        if check and worker.since_check >= check:
            text += prompts.REDUNDANCY_CHECK
            worker.since_check = 0
        worker.queue = self._encode(text)

    def _action(self, w: int) -> Action:
        worker = self.workers[w]
        if (self.phase != "work" and w != 0) or self.phase == "over":
            return self._force(worker, self._stop)
        if worker.queue:
            if not self.whole_texts:
                return self._force(worker, worker.queue.pop(0))
            text, worker.queue = worker.queue, []
            return self._force(worker, text[0], tuple(text[1:]))
        banned = self.stop_tokens | (self.bans.of(worker.tail) if self.bans is not None else frozenset())
        if self._repeats is not None and self.phase == "work":
            banned |= self._repeats.banned(w)
        if self.phase == "answer":
            done = prompts.answer_closed(self._answer) or self._answer_tokens >= self.config.answer_tokens
            return self._force(worker, self._stop) if done else Action(greedy=True, ban=banned)
        return Action(ban=banned)

    @staticmethod
    def _force(worker: _Worker, token: int, then: tuple[int, ...] = ()) -> Action:
        worker.issued += 1 + len(then)
        return Action(force=token, then=then)
