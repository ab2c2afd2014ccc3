"""The recompute oracle (docs/design.md, section 4), independent of vLLM and of the fragment op.

A hogwild group is simulated step by step with the transformers model's own modules,
all workers in layer lockstep (as vLLM runs them: every layer writes the step's keys
before any attention reads them). Each token's raw key and value are kept once, as
computed in its own worker's view; attention writes every view out as a plain sequence
with ordinary positions: each key is rotated (HF's rotary embedding) at its position in
that view, the query at its own, with a plain causal mask. Views come from the same pure
layouts the plugin uses (the layouts have their own tests). With the collaboration
protocol, the same pure ``GroupProtocol`` decides forced and greedy tokens from the
oracle's own logits and outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vllm_hogwild.group import GroupTracker
from vllm_hogwild.planner import framing_spans
from vllm_hogwild.protocol import Action, GroupProtocol
from vllm_hogwild.steps import BoundaryRule
from vllm_hogwild.worker_requests import stream_starts, worker_prompt


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass
class WorkerRun:
    tokens: list[int]  # the worker's request: its prompt part, then generated tokens
    generated: list[int] = field(default_factory=list)
    logprobs: list[torch.Tensor | None] = field(default_factory=list)  # per generated token, [vocab];
    # None for a forced text's tokens after its first (written without logits of their own)
    finished: bool = False
    scales: list[float] = field(default_factory=list)  # per step with logits, the largest |logit|


class Oracle:
    def __init__(self, model, decode, layout: str, rule: BoundaryRule, prompt: list[int],
                 prefixes: list[list[int]], max_tokens: int, stop: set[int],
                 framing: list[tuple[str, list[int]]] = (), protocol: GroupProtocol | None = None,
                 follow: list[list[int]] | None = None) -> None:
        """``follow``: each worker's tokens to take instead of the oracle's own greedy choice
        (another run's, whose every step the oracle then scores: ``runs[w].logprobs``)."""
        self.model = model.eval()
        self.follow = follow
        self.decode = decode
        self.max_tokens = max_tokens
        self.stop = stop
        self.protocol = protocol
        workers = len(prefixes)
        self.runs = [WorkerRun(worker_prompt(prompt, framing, prefixes, w)) for w in range(workers)]
        starts = stream_starts(len(prompt), framing, workers)
        self.tracker = GroupTracker(layout, rule, len(prompt), starts, framing_spans(len(prompt), framing))
        layers = len(model.model.layers)
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
        lengths = [len(r.tokens) if not r.finished else self.written[w] for w, r in enumerate(self.runs)]
        views = self.tracker.views(lengths)
        m = self.model.model
        hidden = {w: m.embed_tokens(torch.tensor([self.runs[w].tokens[p] for p in pos])) for w, pos in feed.items()}
        for li, layer in enumerate(m.layers):
            attn = layer.self_attn
            normed, queries = {}, {}
            for w, pos in feed.items():
                normed[w] = layer.input_layernorm(hidden[w])
                q, k, v = self._qkv(attn, normed[w])
                queries[w] = q
                for i, p in enumerate(pos):
                    self.keys[w][li][p] = k[i]
                    self.values[w][li][p] = v[i]
            for w, pos in feed.items():
                out = self._attend(attn, queries[w], views[w], w, pos, li)
                h = hidden[w] + attn.o_proj(out)
                hidden[w] = h + layer.mlp(layer.post_attention_layernorm(h))
        logits = {w: self.model.lm_head(m.norm(hidden[w][-1:]))[0] for w in feed}
        actions = self._actions(logits)
        for w, pos in feed.items():
            run = self.runs[w]
            self.written[w] = len(run.tokens)
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
                run.tokens.append(t)
                if t in self.stop or len(run.generated) >= self.max_tokens:
                    run.finished = True
                    break

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
        masked[list(action.ban)] = float("-inf")
        return int(masked.argmax())

    @staticmethod
    def _qkv(attn, x):
        n = x.shape[0]
        q = attn.q_proj(x).view(n, -1, attn.head_dim)
        k = attn.k_proj(x).view(n, -1, attn.head_dim)
        v = attn.v_proj(x).view(n, -1, attn.head_dim)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        return q, k, v

    def _rope(self, x: torch.Tensor, positions: list[int]) -> torch.Tensor:
        cos, sin = self.model.model.rotary_emb(x, torch.tensor([positions]))
        cos, sin = cos[0][:, None, :].to(x.dtype), sin[0][:, None, :].to(x.dtype)
        return x * cos + _rotate_half(x) * sin

    def _attend(self, attn, q, view, worker, pos, li):
        keys, values, kpos = [], [], []
        for f in view:
            for h in range(f.start, f.end):
                keys.append(self.keys[f.source][li][h])
                values.append(self.values[f.source][li][h])
                kpos.append(h + f.shift)
        qpos = [next(p + f.shift for f in view if f.source == worker and f.start <= p < f.end) for p in pos]
        k = self._rope(torch.stack(keys), kpos)
        qr = self._rope(q, qpos)
        v = torch.stack(values)
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        scores = torch.einsum("qhd,khd->hqk", qr, k) * attn.scaling
        mask = torch.tensor(kpos)[None, :] > torch.tensor(qpos)[:, None]
        probs = torch.softmax(scores.masked_fill(mask[None], float("-inf")), -1)
        return torch.einsum("hqk,khd->qhd", probs, v).reshape(q.shape[0], -1)
