"""Random paged caches and a float64 oracle that re-rotates keys (the naive way)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from hogwild_kernels.reference import gather_keys
from hogwild_kernels.rotary import rotate
from hogwild_kernels.table import SeqView
from vllm_hogwild import layouts

# The unit roundoff of each dtype (half an ulp, relative): 2^-p for p significant bits.
# bfloat16 keeps 8, float16 11. The op sums in float32 (float64 for float64) and rounds its
# output to the dtype once, so against a float64 reference over the same (already rounded)
# inputs it owes |out - ref| <= u |ref| + e, e the float32 sums' error (atol, as float32's).
OUTPUT_ROUNDOFF = {torch.float64: 0.0, torch.float32: 0.0, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


@dataclass
class PagedCache:
    key: torch.Tensor  # [blocks, block_size, Hkv, D], rotated at home positions
    value: torch.Tensor
    block_table: torch.Tensor  # [rows, max_blocks]


def random_cache(lengths: list[int], block_size: int, kv_heads: int, head_dim: int,
                 dtype=torch.float32, gen: torch.Generator | None = None) -> PagedCache:
    """Requests of the given lengths scattered over shuffled physical blocks."""
    need = [-(-n // block_size) for n in lengths]
    total = sum(need) + 3
    perm = torch.randperm(total, generator=gen).tolist()
    width = max(need + [1])
    table = torch.zeros(len(lengths), width, dtype=torch.int32)
    for row, k in enumerate(need):
        table[row, :k] = torch.tensor(perm[:k], dtype=torch.int32)
        perm = perm[k:]
    key = torch.randn(total, block_size, kv_heads, head_dim, generator=gen).to(dtype)
    value = torch.randn(total, block_size, kv_heads, head_dim, generator=gen).to(dtype)
    return PagedCache(key, value, table)


def naive_attention(q: torch.Tensor, cache: PagedCache, views: list[SeqView], inv_freq: torch.Tensor,
                    is_neox: bool, scale: float, window: int = 0, softcap: float = 0.0,
                    sinks: torch.Tensor | None = None, dots: torch.dtype | None = None) -> torch.Tensor:
    """Float64: move every key to its view position, the query to its own, then softmax
    (over the ``window`` last view positions, scores soft-capped, a sink logit per head:
    as Mistral, Gemma 2 and gpt-oss write them, here on a view). ``dots``: the dtype of the
    op's dot products where it is not the inputs' (bfloat16 dots): the scaled query, turned
    to each fragment's place as the op turns it, is rounded to it before its dots with the
    keys where they were written."""
    out = torch.zeros(q.shape, dtype=torch.float64)
    group = q.shape[1] // cache.key.shape[2]
    row = 0
    for v in views:
        keys, vals, kpos, home_keys = [], [], [], []
        for src, start, end, offset in v.all_fragments():
            k = gather_keys(cache.key, cache.block_table[src], start, end).double()
            keys.append(rotate(k, torch.full((end - start, 1), offset - start), inv_freq, is_neox))
            home_keys.append(k.repeat_interleave(group, 1))
            vals.append(gather_keys(cache.value, cache.block_table[src], start, end).double())
            kpos.append(torch.arange(offset, offset + end - start))
        k = torch.cat(keys).repeat_interleave(group, 1)
        val = torch.cat(vals).repeat_interleave(group, 1)
        kp = torch.cat(kpos)
        for i in range(v.num_rows):
            home, view = v.first_home + i, v.view_positions[i]
            if dots is None:
                qi = rotate(q[row + i].double(), torch.tensor([[view - home]]), inv_freq, is_neox)
                s = torch.einsum("hd,nhd->hn", qi, k) * scale
            else:
                s = torch.cat([torch.einsum("hd,nhd->hn", rotate(
                    q[row + i].double() * scale, torch.tensor([[(view - home) - (offset - start)]]), inv_freq,
                    is_neox).to(dots).double(), kh) for kh, (_, start, _, offset) in zip(home_keys, v.all_fragments())],
                    dim=1)
            if softcap:
                s = torch.tanh(s / softcap) * softcap
            hidden = (kp > view) | ((kp <= view - window) if window else False)
            s = s.masked_fill(hidden[None, :], float("-inf"))
            if sinks is not None:
                s = torch.cat([s, sinks.double()[:, None]], dim=1)
            p = torch.softmax(s, -1)[:, : kp.numel()]
            out[row + i] = torch.einsum("hn,nhd->hd", p, val)
        row += v.num_rows
    return out


def inv_freq_for(rotary_dim: int, base: float = 10000.0) -> torch.Tensor:
    return 1.0 / base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim)


def random_views(rng: random.Random, groups: int, workers: int, block_size: int,
                 max_len: int, decode: bool, shared: bool = False) -> tuple[list[int], list[SeqView]]:
    """Groups of workers over requests of random lengths, with random fragment views.

    Every worker's view holds random (possibly empty, mid-block) runs of the group's
    requests, then its own last tokens as query rows (decode: one row; else several).
    ``shared``: every view of a group starts with the same runs at the same offsets (a
    committed history), many of them a few tokens long.
    """
    lengths: list[int] = []
    views: list[SeqView] = []
    for g in range(groups):
        base = len(lengths)
        lens = [rng.randint(1, max_len) for _ in range(workers)]
        lengths += lens
        history, history_len = [], 0
        for _ in range(rng.randint(3, 12) if shared else 0):
            src = rng.randrange(workers)
            a = rng.randint(0, lens[src] - 1)
            b = min(lens[src] - 1, a + rng.choice([0, 1, 2, 5, 20]))
            history.append((base + src, a, b, history_len))
            history_len += b - a
        for w in range(workers):
            frags, offset = list(history), history_len
            for _ in range(rng.randint(0, 4)):
                src = base + rng.randrange(workers)
                a = rng.randint(0, lens[src - base])
                b = rng.randint(a, lens[src - base])
                if src == base + w:
                    b = min(b, lens[w] - 1)
                    a = min(a, b)
                frags.append((src, a, b, offset))
                offset += b - a
            rows = 1 if decode else rng.randint(1, min(lens[w], 9))
            own_start = rng.randint(0, lens[w] - rows)
            frags.append((base + w, own_start, lens[w], offset + rng.randint(0, 5)))
            _, a, _, o = frags[-1]
            pos = [lens[w] - rows + i - a + o for i in range(rows)]
            views.append(SeqView(g, w, rows, lens[w] - rows, frags, pos))
    return lengths, views


def layout_views(workers: int, context: int, layout: str, step_tokens: int = 20) -> tuple[list[int], list[SeqView]]:
    """Request lengths and the W views of one decode step of a group over ``context``
    tokens, as the plugin's layouts build them: contiguous (a long prompt, then every
    worker's stream), or combined / interleaved (a 256-token prompt, then a history of
    ``step_tokens``-token steps of all workers, each worker's last step still open).
    Request 0 holds the prompt then worker 0's stream; request w, its copy of the
    prompt's last token then its stream."""
    if layout == "contiguous":
        stream = min(512, context // (2 * workers))
        prompt = context - workers * stream - (workers - 1)  # C tokens in all
        generated = [stream] * workers
        history = []
    else:
        prompt = 256
        generated = [(context - prompt) // workers] * workers
        history = []  # committed steps, round robin; each worker's last step still open
        for i in range(sum(g // step_tokens - 1 for g in generated)):
            w = i % workers
            start = (prompt if w == 0 else 1) + (i // workers) * step_tokens
            history.append(layouts.Span(w, start, start + step_tokens))
    stream_start = [prompt] + [1] * (workers - 1)
    lengths = [s + g for s, g in zip(stream_start, generated)]
    committed = [s + (g // step_tokens - 1) * step_tokens for s, g in zip(stream_start, generated)]
    state = layouts.GroupState(prompt, [layouts.WorkerState(prompt - 1 if w == 0 else 0, stream_start[w], lengths[w],
                                                            committed[w] if history else -1)
                                        for w in range(workers)], history)
    views = []
    for w, fragments in enumerate(layouts.views(layout, state)):
        home = lengths[w] - 1
        frags = [(f.source, f.start, f.end, f.offset) for f in fragments]
        views.append(SeqView(0, w, 1, home, frags, [layouts.view_position(fragments, w, home)]))
    return lengths, views


@dataclass
class Packed:
    """Views whose committed history is read from a packed store (``vllm_hogwild.packing``):
    the packed run is row ``run_row`` of ``block_table`` (store blocks), the rest of the
    history and the other fragments as before; ``orders`` fill the store."""

    views: list[SeqView]
    block_table: torch.Tensor
    run_row: int
    orders: list
    packed: object  # the group's PackedHistory


def packed_views(views: list[SeqView], block_table: torch.Tensor, prompt: int, block_size: int, blocks: int,
                 steps: int = 1) -> Packed:
    """``views`` (of one group, the history among their fragments: ``layout_views``) with the
    history packed into a pool of ``blocks`` blocks, in ``steps`` steps of a growing history."""
    import numpy as np

    from vllm_hogwild.packing import BlockPool, PackedHistory

    common = set(views[0].fragments).intersection(*(set(v.fragments) for v in views[1:]))
    history = np.array(sorted((f for f in common if f[3] >= prompt), key=lambda f: f[3]), dtype=np.int64).T
    packed, pool = PackedHistory(block_size), BlockPool(blocks)
    orders = [packed.advance(history[:, : history.shape[1] * (k + 1) // steps], prompt, pool) for k in range(steps)]
    run_row = block_table.shape[0]
    table = torch.zeros(run_row + 1, max(block_table.shape[1], len(packed.blocks)), dtype=block_table.dtype)
    table[:run_row, : block_table.shape[1]] = block_table
    table[run_row, : len(packed.blocks)] = torch.tensor(packed.blocks, dtype=block_table.dtype)
    rest = packed.rest(history, prompt)
    shared = tuple(np.concatenate([[x], r]) for x, r in zip((run_row, 0, packed.packed, prompt), rest))
    in_history = {tuple(f) for f in history.T.tolist()}
    return Packed([SeqView(v.group, v.worker, v.num_rows, v.first_home, [f for f in v.fragments if f not in in_history],
                           v.view_positions, shared) for v in views], table, run_row, orders, packed)


def _blocks_like(cache: torch.Tensor, blocks: int, dtype: torch.dtype) -> torch.Tensor:
    """NaN blocks of ``dtype`` shaped like ``cache``'s, laid out in memory as it is (vLLM's CPU
    keys are dimension-major within a block: the op's fast path wants the store so too)."""
    order = sorted(range(4), key=lambda d: -cache.stride(d))  # outermost dimension first
    shape = [blocks, *cache.shape[1:]]
    base = torch.full([shape[d] for d in order], float("nan"), dtype=dtype)
    return base.permute([order.index(d) for d in range(4)])


def fill_store(p: Packed, keys: torch.Tensor, values: torch.Tensor, inv_freq: torch.Tensor, is_neox: bool,
               blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A store of ``blocks`` blocks shaped like ``keys`` (NaN where nothing is copied), filled
    by ``p.orders`` from the caches, as the CPU backend fills it before attention."""
    import numpy as np

    from hogwild_kernels import cpu_native

    compute = cpu_native.compute_dtype(keys.dtype)  # the store's dtype
    store = tuple(_blocks_like(c, blocks, compute) for c in (keys, values))
    for order in p.orders:
        copies = cpu_native.prepare_copies(order.worker, order.home, np.full(len(order), p.run_row), order.index,
                                           order.turn, p.block_table, keys.shape[1], inv_freq, is_neox,
                                           keys.shape[-1], compute)
        cpu_native.pack(keys, values, store, copies)
    return store
