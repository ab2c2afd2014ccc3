"""What hogwild requires of an engine and can run on it: the one place the CLI, the frontend
and the backends ask. Decided before a request is scheduled.

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
- RoPE: its angle linear in the position (the extra rotation of a query by ``d`` positions
  is then a rotation by ``d`` times the frequencies); one per layer, so models whose layers
  use different bases (Gemma 3) run.
- Sliding windows (Mistral, Gemma 2/3, gpt-oss), soft-capped scores (Gemma 2) and attention
  sinks (gpt-oss) run, each layer as vLLM runs it. A model that mixes windowed and full
  layers needs vLLM's hybrid KV cache manager off (``--disable-hybrid-kv-cache-manager``):
  with it on, the two kinds of layers keep separate block tables, which the plugin's views
  do not map (with it off, every layer keeps every block, and windowed layers still compute
  only their window). Chunked local attention (Llama 4) is not read.
- Model runners: vLLM 0.32's V1 runner (CPU and GPU) and vLLM 0.34's Model Runner V2 (its
  standalone CPU runner and its GPU runner) are hooked; another runner is refused. On vLLM 0.32
  with CUDA the V1 runner is the default the plugin sets (``V1_RUNNER``).
- Scheduling: synchronous (the planner and the protocol read each step's sampled tokens before
  the next is scheduled); no speculative decoding (draft tokens would enter the shared cache).
- On CUDA, the plugin's attention backend (``--attention-backend CUSTOM``).

``serve_options`` says which of these ``vllm-hogwild serve`` adds to vLLM's command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

DTYPES = ("float32", "bfloat16", "float16")
KV_CACHE_DTYPES = ("auto",)
CPU_LAYOUTS = ("vec", "vec16", "amx")
# vLLM's RoPE variants whose cos/sin table is cos(p * f), sin(p * f) (times a constant).
LINEAR_ROPES = ("default", "linear", "llama3", "ntk", "dynamic", "yarn")

# The model runners the hooks drive (``hooks/model_runner_v1``, ``hooks/model_runner_v2``).
RUNNERS = ("V1", "standalone CPU", "V2 GPU")
# vLLM 0.32's switch to its V1 runner (the hooks' on 0.32), set by the plugin unless the user did.
V1_RUNNER = ("VLLM_USE_V2_MODEL_RUNNER", "0")
# The attention backend vLLM registers the plugin's CUDA backend as.
CUDA_BACKEND = "CUSTOM"

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
    mixed_windows: bool = False  # the model has windowed and full attention layers (gpt-oss, Gemma 2/3)
    hybrid_kv_cache: bool = False  # vLLM's hybrid KV cache manager is on (block tables per kind of layer)
    chunked_attention: int | None = None  # Llama 4's chunked local attention: tokens a chunk
    runner: str = "V1"  # the engine's model runner: "V1" (vLLM 0.32), "standalone CPU", "V2 GPU" (0.34)
    async_scheduling: bool = False  # vLLM schedules a step before the last one's tokens are known
    speculative: bool = False  # a speculative decoding config is set
    attention_backend: str | None = None  # on CUDA, the backend vLLM was started with (None: its default)
    v2_runner_chosen: bool = False  # vLLM 0.32 with its Model Runner V2 chosen (VLLM_USE_V2_MODEL_RUNNER=1)


def mixed_windows(sliding_window: Any, layer_types: Any) -> bool:
    """Whether a Hugging Face text config with these fields mixes windowed and full layers
    (``layer_types`` lists each layer's; without it a window is every layer's)."""
    kinds = set(layer_types or ())
    return bool(sliding_window) and "sliding_attention" in kinds and len(kinds) > 1


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
    if facts.async_scheduling:
        return (f"{FIELD}: needs synchronous scheduling; start vLLM with "
                "--no-async-scheduling (LLM(..., async_scheduling=False))")
    if facts.speculative:
        return (f"{FIELD}: not supported with speculative decoding (vLLM then loads "
                "no logits-processor plugins, and draft tokens would enter the shared cache)")
    if facts.platform == "cuda" and facts.attention_backend != CUDA_BACKEND:
        return (f"{FIELD}: on CUDA, start vLLM with --attention-backend {CUDA_BACKEND} "
                "(the plugin's Triton backend); this engine uses "
                f"{facts.attention_backend or 'the default backend'}")
    if facts.platform == "cuda" and facts.v2_runner_chosen:
        return f"{FIELD}: on vLLM 0.32 needs the V1 model runner ({V1_RUNNER[0]}={V1_RUNNER[1]})"
    if facts.runner not in RUNNERS:
        return (f"{FIELD}: hogwild hooks vLLM's model runners {', '.join(RUNNERS)}; this server runs the "
                f"{facts.runner} runner")
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
    other = [r for r in facts.ropes if r not in LINEAR_ROPES]
    if other or facts.extra_rope_parts:
        what = ", ".join(other or facts.ropes) + "".join(f" with {p}" for p in facts.extra_rope_parts)
        return (f"{FIELD}: hogwild supports RoPE types {', '.join(LINEAR_ROPES)} (an angle linear in the "
                f"position); this model's is {what}")
    if facts.mixed_windows and facts.hybrid_kv_cache:
        return (f"{FIELD}: this model mixes sliding-window and full attention layers, and this server runs "
                "vLLM's hybrid KV cache manager, which gives them separate block tables; start the server with "
                "--disable-hybrid-kv-cache-manager to run hogwild on it")
    if facts.chunked_attention:
        return (f"{FIELD}: chunked local attention (attention_chunk_size={facts.chunked_attention}) is not "
                "supported")
    return None


def serve_options(platform: str, given: set[str], mixes_windows: bool) -> list[tuple[list[str], str | None]]:
    """What ``vllm-hogwild serve`` adds to vLLM's options for hogwild to run, each unless the user
    gave that option in either form (``given``: the options on the command line), with the reason
    it says on stderr (None: added silently, as vLLM's own default on CPU)."""
    added: list[tuple[list[str], str | None]] = []
    hybrid = {"--disable-hybrid-kv-cache-manager", "--no-disable-hybrid-kv-cache-manager"}
    if mixes_windows and not given & hybrid:
        added.append((["--disable-hybrid-kv-cache-manager"], "the model mixes sliding-window and full attention "
                      "layers; hogwild maps one block table per request"))
    if platform == "cuda":
        if not given & {"--attention-backend", "--attention-config"}:
            added.append((["--attention-backend", CUDA_BACKEND], None))
        if not given & {"--async-scheduling", "--no-async-scheduling"}:
            added.append((["--no-async-scheduling"], None))
    return added
