"""The CPU attention backend: vLLM's own for ordinary rows, the fragment op for hogwild rows.

It replaces ``CPU_ATTN`` (vLLM accepts no other backend there): ordinary requests
run through vLLM's CPU kernel exactly as without the plugin; rows of hogwild workers are
then recomputed by the fragment op over their views. Keys and values are written by
vLLM's own cache update, once, at each token's home position.

The fragment op is the compiled one (``hogwild_kernels.cpu_native``), or the PyTorch one
(``cpu_op``) where the extension cannot be built or ``VLLM_HOGWILD_CPU_OP=torch`` asks
for it (to compare them).

The compiled op reads each group's committed history from a packed store
(``vllm_hogwild/packing.py``): one per layer, shaped like vLLM's cache, grown as groups take
its blocks, of at most ``VLLM_HOGWILD_CPU_PACKED_GIB`` GiB over all layers (default: a
quarter of the KV cache; 0 turns packing off).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionBackendImpl,
    CPUAttentionMetadata,
    CPUAttentionMetadataBuilder,
)

from hogwild_kernels import build, cpu_native, cpu_op
from vllm_hogwild import envs, runtime
from vllm_hogwild.hooks import state
from vllm_hogwild.attention import HogwildForward, LayerKind, step_rows
from vllm_hogwild.planner import Packing, StepPlan
from vllm_hogwild.support import CPU_LAYOUTS




@functools.cache
def fragment_op():
    """The module of the fragment op this process runs: ``cpu_native`` or ``cpu_op``."""
    choice = envs.get(envs.CPU_OP)
    return cpu_native if choice == "native" and cpu_native.available() else cpu_op


def packing(kv_caches: list[torch.Tensor], block_size: int) -> Packing | None:
    """The packed store's size for the runner's caches (each ``[blocks, ...]``, one per
    layer), or None where 0 GiB are asked. The store is of the op's compute dtype (float32
    for a bfloat16 or float16 cache), so a block of it may take more bytes than the cache's."""
    if not kv_caches:
        return None
    cache_block = kv_caches[0][0].numel() * len(kv_caches)
    block_bytes = cache_block * torch.finfo(cpu_native.compute_dtype(kv_caches[0].dtype)).bits // 8
    gib = envs.get(envs.CPU_PACKED_GIB)
    if gib is not None:
        blocks = int(gib * 2**30 // block_bytes)
    else:  # a quarter of the cache's bytes
        blocks = kv_caches[0].shape[0] * cache_block * kv_caches[0].element_size() // 4 // block_bytes
    return Packing(block_size, blocks) if blocks > 0 else None


@dataclass
class HogwildRows:
    """Per-step inputs of the fragment op, shared by the layers of each kind."""

    prepared: dict[LayerKind, cpu_native.Prepared | cpu_op.Prepared]  # the step's work for fragment_op()
    all_rows: bool  # every token of the batch is a hogwild row
    amx: bool  # the cache is in vLLM's amx layout (cpu_caches)
    copies: dict[int, cpu_native.Copies] | None = None  # into the packed store, before attention; by RoPE
    store_blocks: int = 0  # blocks of the packed store this step reads or writes


def cpu_caches(kv_cache: torch.Tensor, layout: str = "vec") -> tuple[torch.Tensor, torch.Tensor]:
    """Views ``[blocks, block_size, kv_heads, head_dim]`` of vLLM's CPU cache.

    Each (block, head) holds ``block_size * head_dim`` keys, then as many values. In the
    "vec" and "vec16" layouts, keys are stored dimension-major, values token-major; in "amx"
    (``cpu_native.cpp`` says how) neither is a strided view, so only the block and head
    strides of the views returned mean anything, and the op is told (checked against vLLM's
    writer in the tests)."""
    blocks, heads, block_size, two_d = kv_cache.shape
    d = two_d // 2
    region = kv_cache.view(blocks, heads, 2 * block_size * d)
    if layout == "amx":
        keys = region[:, :, : block_size * d].view(blocks, heads, block_size, d).transpose(1, 2)
        values = region[:, :, block_size * d :].view(blocks, heads, block_size, d).transpose(1, 2)
        return keys, values
    keys = region[:, :, : block_size * d].view(blocks, heads, d, block_size).permute(0, 3, 1, 2)
    values = region[:, :, block_size * d :].view(blocks, heads, block_size, d).permute(0, 2, 1, 3)
    return keys, values


class HogwildCPUMetadataBuilder(CPUAttentionMetadataBuilder):
    def build(self, common_prefix_len, common_attn_metadata, fast_build: bool = False) -> CPUAttentionMetadata:
        meta = super().build(common_prefix_len, common_attn_metadata, fast_build)
        plan = runtime.step_plan(common_attn_metadata, packing=self._packing())
        # Unreachable for a request the frontend let through (support.py refuses the rest).
        assert plan is None or self.isa in CPU_LAYOUTS, self.isa
        meta.hogwild = None if plan is None else _rows(plan, common_attn_metadata, self.block_size,
                                                        self.kv_cache_spec.head_size, self.isa == "amx",
                                                        self.layer_names)
        return meta

    def _packing(self) -> Packing | None:
        """The packed store's size, decided once the caches exist (the environment read once);
        None in a step the PyTorch op runs (a benchmark may switch ops between batches)."""
        record = state.of(self, state.BuilderState)
        if not record.packed:
            caches = runtime.kv_caches()
            if not caches:
                return None
            record.packing, record.packed = packing(caches, self.block_size), True
        return record.packing if fragment_op() is cpu_native else None


def _rows(plan: StepPlan, common, block_size: int, head_dim: int, amx: bool, layer_names) -> HogwildRows:
    """The step's work, prepared once for each kind of layer (RoPE, window) among ``layer_names``."""
    step = step_rows(plan, common.query_start_loc_cpu.tolist(), common.block_table_tensor,
                     common.num_reqs, common.num_actual_tokens)
    layers = runtime.layers()
    kinds = sorted({layers.kinds[name] for name in layer_names}, key=lambda k: (k.rotary, k.window))
    if fragment_op() is not cpu_native:
        table = build(step.views)
        prepared = {kind: cpu_op.prepare(table, step.block_table, block_size, layers.rotaries[kind.rotary].inv_freq,
                                         layers.rotaries[kind.rotary].is_neox, head_dim, row_index=step.rows,
                                         window=kind.window) for kind in kinds}
        return HogwildRows(prepared, step.all_rows, amx)
    work_kinds = [cpu_native.WorkKind(layers.rotaries[k.rotary].inv_freq, layers.rotaries[k.rotary].is_neox,
                                      k.window) for k in kinds]
    made = cpu_native.prepare_step(step.views, step.block_table, block_size, work_kinds, head_dim,
                                   row_index=step.rows, stored_from=step.first_packed_row)
    prepared = dict(zip(kinds, made))
    copies = None if step.copies is None else {
        r: cpu_native.prepare_copies(*step.copies, step.block_table, block_size, layers.rotaries[r].inv_freq,
                                     layers.rotaries[r].is_neox, head_dim) for r in {k.rotary for k in kinds}}
    stored = step.block_table[step.first_packed_row:]
    return HogwildRows(prepared, step.all_rows, amx, copies, int(stored.max()) + 1 if stored.numel() else 0)


class HogwildCPUAttentionImpl(HogwildForward, CPUAttentionBackendImpl):
    def _hogwild(self, layer, query, kv_cache, hogwild, output_scale, output) -> None:
        amx = hogwild.amx
        kind, (keys, values), variant = self._layer(layer, kv_cache, amx)
        op = fragment_op()
        if op is not cpu_native:
            op.fragment_attention(query, keys, values, hogwild.prepared[kind], self.scale, out=output, amx=amx,
                                  **variant)
            return
        store = self._store(kv_cache, hogwild.store_blocks)
        if hogwild.copies is not None:
            cpu_native.pack(keys, values, store, hogwild.copies[kind.rotary], amx=amx)
        cpu_native.fragment_attention(query, keys, values, hogwild.prepared[kind], self.scale, out=output,
                                      store=store, amx=amx, **variant)

    def _layer(self, layer, kv_cache: torch.Tensor, amx: bool) -> tuple[LayerKind, tuple, dict]:
        """This layer's kind, ``cpu_caches`` of its cache and its soft cap and sinks (as vLLM's
        own attention takes them; 0, None: none), made once: the cache tensor lives as long
        as the engine, and the lookups and half-dozen view ops cost more per layer and step
        than the op's launch."""
        record = state.of(self, state.LayerState)
        made = record.layer
        if made is None or made[0] is not kv_cache or made[1] != amx:
            made = record.layer = (kv_cache, amx, (
                runtime.layers().kinds[layer.layer_name], cpu_caches(kv_cache, "amx" if amx else "vec"),
                dict(softcap=self.logits_soft_cap or 0.0, sinks=self.sinks)))
        return made[2]

    def _store(self, kv_cache: torch.Tensor, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's packed store, of at least ``blocks`` blocks (the planner bounds them;
        grown 64 blocks at a time, as a group's history takes blocks a few at a time), as
        key and value views (``cpu_caches``, float32, strided; made when it grows)."""
        record = state.of(self, state.LayerState)
        store = record.store
        if store is None or store.shape[0] < blocks:
            grown = kv_cache.new_zeros((-(-blocks // 64) * 64, *kv_cache.shape[1:]),
                                       dtype=cpu_native.compute_dtype(kv_cache.dtype))
            if store is not None:
                grown[: store.shape[0]] = store
            record.store, record.store_views = grown, cpu_caches(grown)
        return record.store_views


class HogwildCPUBackend(CPUAttentionBackend):
    """``CPU_ATTN`` with hogwild rows served by the fragment op."""

    @staticmethod
    def get_builder_cls():
        return HogwildCPUMetadataBuilder

    @staticmethod
    def get_impl_cls():
        return HogwildCPUAttentionImpl

