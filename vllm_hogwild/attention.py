"""What both attention backends share: each layer's RoPE and window, a step's hogwild rows,
and the forward that splits a batch between vLLM's attention and the fragment op.

vLLM's backends see batch rows and block tables, never requests; the planner's
``StepPlan`` says which rows are hogwild workers and what their views are. This module
turns it into the fragment op's inputs: the query row indices, the ``SeqView``s and the
block table extended with rows for finished workers (whose blocks outlive their requests)
and for the groups' packed histories (the CPU path's: blocks of its packed store).

Layers differ in what the op's per-step work list depends on: the RoPE that turns their
queries (Gemma 3's local and global layers have different bases) and their sliding window
(gpt-oss and Gemma alternate windowed and full layers). ``layer_kinds`` reads both off
the model once; a step's work list is prepared once per kind, not per layer. What a layer
adds per call (soft cap, sinks) the backend's impl holds, as vLLM's own does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbeddingBase

from hogwild_kernels import SeqView
from vllm_hogwild.planner import RowCopies, StepPlan


@dataclass(frozen=True)
class Rotary:
    """A RoPE as the extra rotation needs it."""

    inv_freq: torch.Tensor
    is_neox: bool


@dataclass(frozen=True)
class LayerKind:
    """What a layer's step work list depends on: its RoPE (an index into ``Layers.rotaries``)
    and its sliding window (0: full attention)."""

    rotary: int
    window: int


@dataclass(frozen=True)
class Layers:
    """The model's distinct RoPEs and the kind of each attention layer (by vLLM layer name)."""

    rotaries: tuple[Rotary, ...]
    kinds: dict[str, LayerKind]


def layer_kinds(model: torch.nn.Module) -> Layers:
    """Each attention layer's RoPE (the one beside it, in the module that holds it, as every
    vLLM decoder writes them; or the model's only one) and window; frequencies are read off
    vLLM's cos/sin cache, which works for every variant whose angle is linear in the position
    (plain, linear, NTK, Llama-3, YaRN, ...), whatever scaling the cache holds."""
    from vllm.model_executor.layers.attention import Attention

    modules = dict(model.named_modules())
    ropes = list({id(m): m for m in modules.values() if isinstance(m, RotaryEmbeddingBase)}.values())
    if not ropes:
        raise ValueError("hogwild needs a model with rotary position embeddings (RoPE)")
    rotaries: dict[bytes, int] = {}
    found: list[Rotary] = []
    known: dict[int, int] = {}  # id of a RoPE module -> its index (its cos/sin cache read once)

    def index_of(rope: RotaryEmbeddingBase) -> int:
        if id(rope) not in known:
            freq = _inv_freq(rope)
            key = freq.numpy().tobytes() + bytes([rope.is_neox_style])
            if key not in rotaries:
                rotaries[key] = len(found)
                found.append(Rotary(freq, rope.is_neox_style))
            known[id(rope)] = rotaries[key]
        return known[id(rope)]

    kinds = {}
    for name, module in modules.items():
        if not isinstance(module, Attention):
            continue
        parent = modules.get(name.rpartition(".")[0], model)
        beside = [m for m in parent.children() if isinstance(m, RotaryEmbeddingBase)]
        if len(beside) != 1 and len({index_of(r) for r in ropes}) != 1:
            raise NotImplementedError(f"hogwild: cannot tell which RoPE layer {name} uses")
        rope = beside[0] if len(beside) == 1 else ropes[0]
        kinds[module.layer_name] = LayerKind(index_of(rope), module.sliding_window or 0)
    return Layers(tuple(found), kinds)


def _inv_freq(rope: RotaryEmbeddingBase) -> torch.Tensor:
    # The cache as computed (float32), before vLLM rounds it to the model's dtype: bfloat16's
    # 8 bits cannot tell a linear angle from another to the 1e-3 the check asks.
    cache = rope._compute_cos_sin_cache().double().cpu()
    half = cache.shape[1] // 2
    freq = torch.atan2(cache[1, half:], cache[1, :half])
    positions = torch.tensor([2.0, 3.0, 7.0, 31.0]).double()
    expect = torch.cos(positions[:, None] * freq) * cache[1, :half].hypot(cache[1, half:])
    if cache.shape[0] <= 31 or not torch.allclose(cache[positions.long(), :half], expect, atol=1e-3):
        raise NotImplementedError(f"hogwild: RoPE {type(rope).__name__} is not linear in the position")
    return freq.float()


@dataclass
class StepRows:
    """A step's hogwild rows as the fragment op takes them (CPU tensors)."""

    rows: torch.Tensor  # token indices of hogwild query rows, in view order
    views: list[SeqView]
    block_table: torch.Tensor  # the batch's rows, one per finished worker, then the packed runs'
    all_rows: bool  # every token of the batch is a hogwild row
    first_packed_row: int  # block-table rows from here on list blocks of the packed store
    copies: RowCopies | None  # the step's copies into the packed store, all groups together


def step_rows(plan: StepPlan, query_start_loc: list[int], block_table: torch.Tensor,
              num_reqs: int, num_tokens: int) -> StepRows:
    """The fragment op's inputs for ``plan`` over a batch of ``num_reqs`` requests."""
    # The query rows of the plan's batch rows, in plan order (one NumPy pass: a batch of 32
    # groups has 128 of them).
    qsl = np.asarray(query_start_loc, dtype=np.int64)
    batch_rows = np.asarray(plan.batch_rows, dtype=np.int64)
    starts, lengths = qsl[batch_rows], qsl[batch_rows + 1] - qsl[batch_rows]
    total = int(lengths.sum())
    rows = starts if total == lengths.size else (  # a decode step: one row each
        np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(total))
    table = _extended(block_table[:num_reqs], plan.extra_blocks + plan.packed_blocks)
    views = plan.seqs
    copies = tuple(np.concatenate(c) for c in zip(*plan.copies)) if plan.copies else None
    return StepRows(torch.from_numpy(rows), views, table, total == num_tokens, num_reqs + len(plan.extra_blocks),
                    copies)


def _extended(table: torch.Tensor, more: list[list[int]]) -> torch.Tensor:
    """The block table with one row more for each list of block ids in ``more`` (zero-padded,
    and the table too where a list is wider). Laid out in NumPy on the host (a torch op there
    costs ~10 us, a NumPy one ~1 us), moved to the table's device in one copy."""
    if not more:
        return table
    width = max(table.shape[1], max(len(b) for b in more))
    dtype = torch.empty(0, dtype=table.dtype).numpy().dtype
    rows = np.zeros((table.shape[0] * (not table.is_cuda) + len(more), width), dtype=dtype)
    for i, blocks in enumerate(more, start=rows.shape[0] - len(more)):
        rows[i, : len(blocks)] = blocks
    if not table.is_cuda:
        rows[: table.shape[0], : table.shape[1]] = table.numpy()
        return torch.from_numpy(rows)
    extra = torch.from_numpy(rows).pin_memory()  # one asynchronous copy (from pageable memory it would wait)
    padded = torch.zeros(table.shape[0], width, dtype=table.dtype, device=table.device)
    padded[:, : table.shape[1]] = table
    return torch.cat([padded, extra.to(table.device, non_blocking=True)])


class HogwildForward:
    """Mixed into a vLLM attention impl: vLLM's own attention for ordinary rows (skipped
    when every row is a hogwild worker's), then ``_hogwild`` writes the hogwild rows."""

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output,
                output_scale=None, output_block_scale=None) -> torch.Tensor:
        hogwild = getattr(attn_metadata, "hogwild", None)
        if hogwild is None or not hogwild.all_rows:
            super().forward(layer, query, key, value, kv_cache, attn_metadata, output,
                            output_scale, output_block_scale)
        if hogwild is not None:
            self._hogwild(layer, query, kv_cache, hogwild, output_scale,
                          output.view(-1, self.num_heads, self.head_size))
        return output

    def _hogwild(self, layer, query: torch.Tensor, kv_cache: torch.Tensor, hogwild, output_scale,
                 output: torch.Tensor) -> None:
        """Write the step's hogwild rows of ``output [tokens, heads, head_size]`` for ``layer``
        (vLLM's Attention module: its ``layer_name`` says its kind)."""
        raise NotImplementedError
