"""The CUDA attention backend: vLLM's Triton backend with hogwild rows served by our kernel.

Registered as ``--attention-backend CUSTOM`` (vLLM's hook for third-party backends).
Ordinary rows run through vLLM's own Triton attention, unchanged; the rows of hogwild
workers are then recomputed by ``hogwild_kernels.triton_op`` over their views, reading
the same paged cache in place. Keys and values are written by vLLM's own cache update.
The per-step fragment table changes every step, so full CUDA graphs are off for this
backend (vLLM falls back to piecewise graphs, with attention eager).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vllm.v1.attention.backend import AttentionCGSupport
from vllm.v1.attention.backends.triton_attn import (
    TritonAttentionBackend,
    TritonAttentionImpl,
    TritonAttentionMetadata,
    TritonAttentionMetadataBuilder,
)

from hogwild_kernels import FragmentTable, build, triton_op
from vllm_hogwild import runtime
from vllm_hogwild.attention import HogwildForward, step_rows


@dataclass
class HogwildLaunch:
    """Per-step inputs of the Triton fragment kernel, shared by every layer (on the GPU)."""

    table: FragmentTable
    launch: triton_op.LaunchPlan
    block_table: torch.Tensor
    all_rows: bool
    keys: torch.Tensor | None = None  # triton_op.map_shared_keys, by the first layer of the step


class HogwildTritonMetadataBuilder(TritonAttentionMetadataBuilder):
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.NEVER

    def build(self, common_prefix_len, common_attn_metadata, fast_build: bool = False) -> TritonAttentionMetadata:
        meta = super().build(common_prefix_len, common_attn_metadata, fast_build)
        plan = runtime.step_plan(common_attn_metadata)
        meta.hogwild = None
        if plan is not None:
            common = common_attn_metadata
            step = step_rows(plan, common.query_start_loc_cpu.tolist(), common.block_table_tensor,
                             common.num_reqs, common.num_actual_tokens)
            # Planned on the host, then moved in two copies (the launch plan reads the table).
            table = build(step.views)
            launch = triton_op.plan(table, self.num_heads_q // self.num_heads_kv, row_index=step.rows)
            meta.hogwild = HogwildLaunch(table.to(self.device), launch.to(self.device),
                                         step.block_table.to(self.device), step.all_rows)
        return meta


class HogwildTritonImpl(HogwildForward, TritonAttentionImpl):
    _inv_freq: torch.Tensor | None = None  # this layer's RoPE frequencies, on the GPU

    def _hogwild(self, layer, query, kv_cache, hogwild, output_scale, output) -> None:
        if self.kv_cache_dtype != "auto" or output_scale is not None:
            raise NotImplementedError("hogwild on CUDA needs an unquantized KV cache and output "
                                      f"(kv_cache_dtype={self.kv_cache_dtype!r})")
        key_cache, value_cache = triton_op.vllm_caches(kv_cache, self.head_size)
        layers = runtime.layers()
        kind = layers.kinds[layer.layer_name]
        rotary = layers.rotaries[kind.rotary]
        if self._inv_freq is None:  # on the GPU once: a copy from host memory would wait for the GPU every layer
            self._inv_freq = rotary.inv_freq.to(query.device, torch.float32)
        if hogwild.keys is None:  # once per step: every layer's cache has the same blocks
            hogwild.keys = triton_op.map_shared_keys(hogwild.table, hogwild.launch, hogwild.block_table,
                                                     key_cache.shape[1])
        # The kernel reads the batch's hogwild rows of `query` and writes them into `output`
        # in place (the launch plan knows where they sit). The layer's window, soft cap and
        # sinks are the kernel's arguments: one launch plan serves every kind of layer.
        triton_op.fragment_attention(query, key_cache, value_cache, hogwild.block_table, hogwild.table,
                                     self._inv_freq, rotary.is_neox, self.scale, out=output, launch=hogwild.launch,
                                     keys=hogwild.keys, window=kind.window, softcap=self.logits_soft_cap or 0.0,
                                     sinks=self.sinks)


class HogwildTritonBackend(TritonAttentionBackend):
    """vLLM's Triton attention with hogwild rows served by the fragment kernel."""

    @staticmethod
    def get_name() -> str:
        return "CUSTOM"

    @staticmethod
    def get_builder_cls():
        return HogwildTritonMetadataBuilder

    @staticmethod
    def get_impl_cls():
        return HogwildTritonImpl
