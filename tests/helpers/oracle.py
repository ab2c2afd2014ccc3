"""The recompute oracle (docs/design.md, section 4), independent of vLLM and of the fragment op.

A hogwild group is simulated step by step with the transformers model itself, all workers
in layer lockstep (as vLLM runs them: every layer writes the step's keys before any
attention reads them): each step's new tokens of every worker go through the model as one
sequence, whose attention is the oracle's own (registered with transformers as an
attention function). The model runs at position 0, so its RoPE turns nothing and the
attention gets each token's raw key, kept once as computed in its own worker's view. It
then writes every view out as a plain sequence with ordinary positions: each key turned at
its position in that view, the query at its own (with the model's own rotary module and
rotation), a plain causal mask, and the layer's sliding window, soft cap and sinks as the
family's own attention applies them, over view positions. Everything else (norms, MLPs and
experts, embedding scales, logit soft caps) is the family's own code. Views come from the
same pure layouts the plugin uses (the layouts have their own tests). With the
collaboration protocol, the same pure ``GroupProtocol`` decides forced and greedy tokens
from the oracle's own logits and outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vllm_hogwild.async_pacing import Pacing
from vllm_hogwild.async_prompts import THINKER, WRITER
from vllm_hogwild.group import GroupTracker
from vllm_hogwild.layouts import ASYNC_LAYOUT
from vllm_hogwild.protocol import Action, GroupProtocol
from vllm_hogwild.steps import BoundaryRule
from vllm_hogwild.worker_requests import spans, stream_starts, worker_prompt


ATTENTION = "hogwild_oracle"  # the name the oracle's attention is registered under
_running: list = []  # the oracle whose step is in the model's forward (attention calls back into it)


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None,
               softcap=None, s_aux=None, **kwargs):
    return _running[-1].attention(module, query, key, value, scaling, sliding_window, softcap, s_aux), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, _attention)


@dataclass
class WorkerRun:
    tokens: list[int]  # the worker's request: its prompt part, then generated tokens
    generated: list[int] = field(default_factory=list)
    logprobs: list[torch.Tensor | None] = field(default_factory=list)  # per generated token, [vocab];
    # None for a forced text's tokens after its first (written without logits of their own)
    finished: bool = False
    scales: list[float] = field(default_factory=list)  # per step with logits, the largest |logit|
    steps: list[int] = field(default_factory=list)  # per generated token, the engine step that sampled it


class Oracle:
    def __init__(self, model, decode, layout: str, rule: BoundaryRule, prompt: list[int],
                 prefixes: list[list[int]], max_tokens: int, stop: set[int],
                 framing: list[tuple[str, list[int]]] = (), protocol: GroupProtocol | None = None,
                 follow: list[list[int]] | None = None, sections=()) -> None:
        """``follow``: each worker's tokens to take instead of the oracle's own greedy choice
        (another run's, whose every step the oracle then scores: ``runs[w].logprobs``).
        ``sections``: the parts of each worker's first text (``worker_requests.Sections``); with
        the async layout, the writer writes when the same ``Pacing`` the scheduler runs says so."""
        _register()
        self.model = model.eval()
        self.follow = follow
        self.decode = decode
        self.max_tokens = max_tokens
        self.stop = stop
        self.protocol = protocol
        workers = len(prefixes)
        self.runs = [WorkerRun(worker_prompt(prompt, framing, prefixes, w)) for w in range(workers)]
        starts = stream_starts(len(prompt), framing, workers)
        self.tracker = GroupTracker(layout, rule, len(prompt), starts, spans(len(prompt), framing, sections, workers))
        self.pacing = Pacing(rule) if layout == ASYNC_LAYOUT else None
        self.paced = [0] * workers  # generated tokens fed to the pacing
        self.waits = 0  # steps the writer waited
        self.prompt_lens = [len(r.tokens) for r in self.runs]
        layers = model.config.num_hidden_layers
        self.keys = [[dict() for _ in range(layers)] for _ in range(workers)]  # raw keys by home pos
        self.values = [[dict() for _ in range(layers)] for _ in range(workers)]
        self.written = [0] * workers
        self.steps = 0  # engine steps: every running worker computes its new tokens, then samples

    def run(self) -> list[WorkerRun]:
        while not all(r.finished for r in self.runs):
            self.step()
        return self.runs

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        texts = {}
        for w, r in enumerate(self.runs):
            start = self.tracker.scanned(w)
            if self.written[w] > start:
                texts[w] = [self.decode(t) for t in r.tokens[start:self.written[w]]]
        self.tracker.commit_written(texts)
        feed = {w: list(range(self.written[w], len(r.tokens)))
                for w, r in enumerate(self.runs) if not r.finished}
        if self.pacing is not None:
            self._pace(feed)
        lengths = [self.written[w] + len(feed.get(w, ())) for w in range(len(self.runs))]
        views = self.tracker.views(lengths)
        order = [(w, p) for w, pos in feed.items() for p in pos]
        ids = torch.tensor([[self.runs[w].tokens[p] for w, p in order]])
        self._step = (order, views)
        _running.append(self)
        usual = self.model.config._attn_implementation  # the model may be shared: lent for this step only
        self.model.set_attn_implementation(ATTENTION)
        try:
            out = self.model(input_ids=ids, position_ids=torch.zeros_like(ids), use_cache=False).logits[0]
        finally:
            self.model.set_attn_implementation(usual)
            _running.pop()
        ends = {w: i for i, (w, _) in enumerate(order)}  # each worker's last new token
        for w, pos in feed.items():
            self.written[w] = pos[-1] + 1
        # A prompt computed short of its end (a waiting writer's) samples nothing: vLLM discards it.
        feed = {w: pos for w, pos in feed.items() if pos[-1] + 1 == len(self.runs[w].tokens)}
        logits = {w: out[ends[w]] for w in feed}
        actions = self._actions(logits)
        for w, pos in feed.items():
            run = self.runs[w]
            token = self._choose(logits[w], actions.get(w)) if self.follow is None \
                else self.follow[w][len(run.generated)]
            run.logprobs.append(torch.log_softmax(logits[w].double(), -1))
            run.scales.append(float(logits[w].abs().max()))
            # A forced text's other tokens follow in this step (no logits of their own); the
            # next step computes them all, as vLLM does a chunk.
            for t in [token, *(actions[w].then if w in actions else ())]:
                if len(run.generated) > len(run.logprobs) - 1:
                    run.logprobs.append(None)
                run.generated.append(t)
                run.steps.append(self.steps)
                run.tokens.append(t)
                if t in self.stop or len(run.generated) >= self.max_tokens:
                    run.finished = True
                    break
        if self.pacing is not None and self.runs[WRITER].finished:
            self.runs[THINKER].finished = True  # the answer is done: the thoughts end with it

    def _pace(self, feed: dict[int, list[int]]) -> None:
        """The writer's tokens this step, as the scheduler's pacing caps them (``hooks/pacing.py``):
        none while it waits, and before it first writes, its prompt less its last token."""
        new = []
        for w in (WRITER, THINKER):
            generated = self.runs[w].generated
            new.append([self.decode(t) for t in generated[self.paced[w]:]])
            self.paced[w] = len(generated)
        if self.pacing.update(new[WRITER], new[THINKER], self.runs[THINKER].finished) or WRITER not in feed:
            return
        self.waits += 1
        cap = max(self.written[WRITER], self.prompt_lens[WRITER] - 1)
        feed[WRITER] = [p for p in feed[WRITER] if p < cap]
        if not feed[WRITER]:
            del feed[WRITER]

    def _actions(self, logits: dict[int, torch.Tensor]) -> dict[int, Action]:
        if self.protocol is None:
            return {}
        outputs = {w: self.runs[w].generated for w in logits}
        ended = {w for w, r in enumerate(self.runs) if r.finished}
        wants_stop = 0 in logits and int(logits[0].argmax()) in self.protocol.stop_tokens
        return self.protocol.step(outputs, ended, wants_stop)

    @staticmethod
    def _choose(logits: torch.Tensor, action: Action | None) -> int:
        """Greedy decoding under the protocol's action (the tests sample at temperature 0)."""
        if action is None:
            return int(logits.argmax())
        if action.force is not None:
            return action.force
        masked = logits.clone()
        masked[[t for t in action.ban if t < masked.shape[0]]] = float("-inf")
        return int(masked.argmax())

    def attention(self, module, query, key, value, scaling, window, softcap, sinks) -> torch.Tensor:
        """One layer's attention for the step's tokens (``query [1, Hq, N, D]``; keys and values
        ``[1, Hkv, N, D]``, at position 0: unturned), in the family's output layout ``[1, N, Hq, D]``."""
        order, views = self._step
        layer = module.layer_idx
        for i, (w, p) in enumerate(order):
            self.keys[w][layer][p] = key[0, :, i]
            self.values[w][layer][p] = value[0, :, i]
        out = torch.empty(1, len(order), query.shape[1], query.shape[3], dtype=query.dtype)
        for w in dict.fromkeys(w for w, _ in order):
            rows = [i for i, (x, _) in enumerate(order) if x == w]
            pos = [order[i][1] for i in rows]
            out[0, rows] = self._attend(module, query[0, :, rows].transpose(0, 1), views[w], w, pos, layer,
                                        scaling, window, softcap, sinks)
        return out

    def _turn(self, module, x: torch.Tensor, positions: list[int]) -> torch.Tensor:
        """``x [n, H, D]`` (unturned) turned at ``positions`` by the model's own rotary module and
        the family's own rotation (its cos/sin over those at position 0: the unturned inputs
        already carry the scaling that YaRN's holds)."""
        import inspect
        import sys

        rotary = self.model.model.rotary_emb
        extra = {"layer_type": module.layer_type} if "layer_type" in inspect.signature(rotary.forward).parameters \
            else {}
        xs = x.transpose(0, 1)[None]  # [1, H, n, D]
        cos, sin = rotary(xs, torch.tensor([positions]), **extra)
        base, _ = rotary(xs, torch.zeros(1, 1, dtype=torch.long), **extra)
        apply = sys.modules[type(module).__module__].apply_rotary_pos_emb
        turned, _ = apply(xs, xs, cos / base, sin / base)
        return turned[0].transpose(0, 1)

    def _attend(self, module, q, view, worker, pos, layer, scaling, window, softcap, sinks):
        keys, values, kpos = [], [], []
        for f in view:
            for h in range(f.start, f.end):
                keys.append(self.keys[f.source][layer][h])
                values.append(self.values[f.source][layer][h])
                kpos.append(h + f.shift)
        qpos = [next(p + f.shift for f in view if f.source == worker and f.start <= p < f.end) for p in pos]
        k = self._turn(module, torch.stack(keys), kpos)
        qr = self._turn(module, q, qpos)
        v = torch.stack(values)
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        scores = torch.einsum("qhd,khd->hqk", qr, k) * scaling
        if softcap:
            scores = torch.tanh(scores / softcap) * softcap
        kp, qp = torch.tensor(kpos)[None, :], torch.tensor(qpos)[:, None]
        mask = (kp > qp) | ((kp <= qp - window) if window else False)
        scores = scores.masked_fill(mask[None], float("-inf"))
        if sinks is not None:  # one more logit per head in the denominator, with no value
            scores = torch.cat([scores, sinks.to(scores.dtype)[:, None, None].expand(-1, len(pos), 1)], dim=-1)
        probs = torch.softmax(scores, -1)[..., : len(kpos)]
        return torch.einsum("hqk,khd->qhd", probs.to(v.dtype), v)
