"""What hogwild can run: the engine settings and model features its attention reads, decided
before a request is scheduled.

Pure logic over plain facts (``EngineFacts``, gathered by the frontend from vLLM's config).
A setting outside what is listed here is refused per request, with a message naming the
setting and the values that work (HTTP 400); the engine goes on serving plain requests.
Nothing the plugin cannot run ever reaches an engine step.

- dtypes: float32, bfloat16, float16. The fragment ops sum in float32 and round the output
  to the model's dtype once, as vLLM's own attention does.
- KV cache: unquantized (``auto``). fp8 caches hold scaled 8-bit values that neither op reads.
- CPU cache layouts (vLLM's ``_get_attn_isa`` on x86): ``vec`` and ``vec16`` (head sizes
  that are not multiples of 32), which store keys and values alike, and ``amx`` (bfloat16 on
  CPUs with AMX tiles), which keeps pairs of dimensions and of slots side by side. The
  layouts of other CPUs (``neon`` on Arm, ``vsx``, ``vxe``, ``rvv``) are not read.
- RoPE: one per model, its angle linear in the position (the extra rotation of a query by
  ``d`` positions is then a rotation by ``d`` times the frequencies).
- Full attention: no sliding windows (yet).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

DTYPES = ("float32", "bfloat16", "float16")
KV_CACHE_DTYPES = ("auto",)
CPU_LAYOUTS = ("vec", "vec16", "amx")
# vLLM's RoPE variants whose cos/sin table is cos(p * f), sin(p * f) (times a constant).
LINEAR_ROPES = ("default", "linear", "llama3", "ntk", "dynamic", "yarn")

# The request field the refusals are reported under (they are about the server, not a
# field of the request; turning hogwild off is what the request can change).
FIELD = "hogwild_workers"


@dataclass(frozen=True)
class EngineFacts:
    """What the attention of an engine reads, in plain values."""

    platform: str  # "cpu", "cuda", ... (vLLM's current_platform)
    dtype: str  # the model's dtype: "float32", "bfloat16", ...
    kv_cache_dtype: str  # vLLM's --kv-cache-dtype: "auto", "fp8", ...
    cpu_layout: str | None  # on CPU, vLLM's cache layout for this engine (its attention "ISA")
    ropes: tuple[str, ...]  # the rope_type of each RoPE the model declares, () for none
    extra_rope_parts: tuple[str, ...] = ()  # RoPE parameters no linear variant has (mrope_section, ...)
    sliding_window: int | None = None  # the model's attention window, None for full attention


def rope_types(parameters: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The RoPE types a Hugging Face config's ``rope_parameters`` (or ``rope_scaling``)
    declares, and the keys in it that make a variant non-linear (M-RoPE sections, FoPE).
    Per-layer-type parameters (``{"full_attention": {...}, "sliding_attention": {...}}``)
    declare one RoPE each."""
    if not isinstance(parameters, Mapping):
        return (), ()
    if parameters and all(isinstance(v, Mapping) for v in parameters.values()):
        found = [rope_types(v) for v in parameters.values()]
        return tuple(t for f in found for t in f[0]), tuple(sorted({x for f in found for x in f[1]}))
    kind = parameters.get("rope_type", parameters.get("type", "default"))
    extra = tuple(k for k in ("mrope_section", "use_fope") if parameters.get(k))
    return (str(kind),), extra


def refusal(facts: EngineFacts) -> str | None:
    """Why hogwild cannot run on this engine, naming the setting ("field: ..."), or None."""
    if facts.dtype not in DTYPES:
        return (f"{FIELD}: hogwild runs dtype {', '.join(DTYPES)}; this server runs {facts.dtype} "
                "(start it with --dtype bfloat16, say)")
    if facts.kv_cache_dtype not in KV_CACHE_DTYPES:
        return (f"{FIELD}: hogwild needs an unquantized KV cache (--kv-cache-dtype auto); this server's "
                f"is {facts.kv_cache_dtype}")
    if facts.platform == "cpu" and facts.cpu_layout not in CPU_LAYOUTS:
        return (f"{FIELD}: hogwild on CPU reads vLLM's cache layouts {', '.join(CPU_LAYOUTS)} (x86); this "
                f"server's is {facts.cpu_layout!r}")
    if not facts.ropes:
        return (f"{FIELD}: this model has no rotary position embedding (RoPE); hogwild needs a RoPE model "
                "(Llama, Qwen2, Qwen3, Mistral, ...)")
    if len(facts.ropes) > 1:
        return (f"{FIELD}: hogwild supports one RoPE per model; this model has {len(facts.ropes)} "
                f"({', '.join(facts.ropes)})")
    if facts.ropes[0] not in LINEAR_ROPES or facts.extra_rope_parts:
        what = facts.ropes[0] + "".join(f" with {p}" for p in facts.extra_rope_parts)
        return (f"{FIELD}: hogwild supports RoPE types {', '.join(LINEAR_ROPES)} (an angle linear in the "
                f"position); this model's is {what}")
    if facts.sliding_window is not None:
        return (f"{FIELD}: sliding-window attention models are not supported (this model's window: "
                f"{facts.sliding_window} tokens)")
    return None
