"""bfloat16 and float16: hogwild groups in the dtype the user runs, held to the same-dtype
oracle (``runs.assert_within_noise`` states the rule), and every engine setting either runs
or is refused at the request, never inside an engine step."""

from __future__ import annotations

import pytest

from tests.helpers import python_at_root
from tests.helpers.engines import engine
from tests.helpers.runs import assert_within_noise, outcome, prompt_ids, same_dtype_run
from vllm_hogwild import support
from vllm_hogwild import envs

LAYOUTS = ("contiguous", "interleaved", "combined")
FAMILIES = ("llama", "qwen2", "qwen3", "llama3-scaled")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_groups_equal_the_same_dtype_oracle(dtype, family):
    """Every layout, W = 1..4, on each family, in each half-precision dtype."""
    for layout in LAYOUTS:
        for workers in (1, 2, 3, 4):
            out, runs = same_dtype_run(family, dtype, workers, layout)
            parted = assert_within_noise(out, runs, dtype)
            if parted:
                print(f"{dtype} {family} W={workers} {layout}: first parts from the oracle's choice at "
                      f"(worker, step, gap) {parted[0]}")


def test_the_pytorch_op_in_bfloat16(monkeypatch):
    from vllm_hogwild import cpu_backend

    monkeypatch.setenv(envs.CPU_OP.name, "torch")
    cpu_backend.fragment_op.cache_clear()
    try:
        assert_within_noise(*same_dtype_run("qwen3", "bfloat16", 3, "combined"), "bfloat16")
    finally:
        monkeypatch.delenv(envs.CPU_OP.name)
        cpu_backend.fragment_op.cache_clear()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_one_worker_equals_a_plain_request_of_the_same_dtype(dtype):
    """W=1 runs the fragment op where a plain request runs vLLM's own attention: the same
    tokens, logprobs within the dtype's noise (both sum in float32, in other orders)."""
    from tests.helpers.runs import assert_one_worker_is_plain, noise

    assert_one_worker_is_plain(engine("qwen3", dtype=dtype), prompt_ids("qwen3"), 16,
                               lambda _: noise(dtype, 2, 8.0))


# Engine settings: dtype x block size x head size x KV cache dtype. The suite starts one
# engine per row, chosen so that every value of every axis occurs;
# benchmarks/end_to_end/support_walk.py walks the whole product with the same ``outcome``.
SETTINGS = [
    # (dtype, block_size, head_size, kv_cache_dtype)
    ("float32", 16, 64, "auto"),  # vLLM's CPU attention refuses block size 16 at start-up
    ("float32", 64, 80, "auto"),  # vec16: a head size that is not a multiple of 32
    ("bfloat16", 32, 96, "auto"),
    ("bfloat16", 128, 64, "fp8"),
    ("float16", 128, 128, "auto"),
    ("float16", 32, 80, "fp8"),  # vLLM refuses fp8 with such a head size
]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(map(str, s)))
def test_engine_settings_run_or_are_refused_at_the_request(setting):
    from vllm_hogwild import vllm_cpu

    dtype, block_size, head_size, kv = setting
    # vLLM starts no engine with an fp8 cache on x86 without AVX-512 or AMX (vllm_cpu.fp8_kv_cache).
    fp8_engine = vllm_cpu.fp8_kv_cache(vllm_cpu.this_cpu())
    expect = "no engine" if block_size % 32 or (kv != "auto" and (head_size % 32 or not fp8_engine)) else \
        "refused" if kv != "auto" else "runs"
    assert outcome(*setting) == expect


def test_refusals_name_the_setting():
    """The pure rule over the settings the frontend reads (what no engine here can show: the
    layouts of other CPUs, several RoPEs, RoPE types that are not linear)."""
    ok = support.EngineFacts("cpu", "bfloat16", "auto", "vec", ("default",))
    assert support.refusal(ok) is None
    for dtype in support.DTYPES:
        assert support.refusal(support.EngineFacts("cpu", dtype, "auto", "vec16", ("yarn",))) is None
    assert support.refusal(support.EngineFacts("cpu", "bfloat16", "auto", "amx", ("llama3",))) is None
    # Gemma 3 (two RoPEs, windowed and full layers) with the hybrid KV cache manager off;
    # Mistral (every layer windowed) with it on: one block table either way.
    assert support.refusal(support.EngineFacts("cuda", "bfloat16", "auto", None, ("default", "linear"),
                                               mixed_windows=True, hybrid_kv_cache=False, attention_backend="CUSTOM")) is None
    assert support.refusal(support.EngineFacts("cpu", "bfloat16", "auto", "vec", ("default",),
                                               mixed_windows=False, hybrid_kv_cache=True)) is None
    cases = {
        "dtype float32, bfloat16, float16": support.EngineFacts("cpu", "float64", "auto", "vec", ("default",)),
        "--kv-cache-dtype auto": support.EngineFacts("cuda", "bfloat16", "fp8_e4m3", None, ("default",),
                                                      attention_backend="CUSTOM"),
        "layouts vec, vec16, amx (x86); this server's is 'neon'": support.EngineFacts(
            "cpu", "bfloat16", "auto", "neon", ("default",)),
        "no rotary position embedding": support.EngineFacts("cpu", "float32", "auto", "vec", ()),
        "this model's is longrope": support.EngineFacts("cpu", "float32", "auto", "vec", ("longrope",)),
        "this model's is default with mrope_section": support.EngineFacts("cpu", "float32", "auto", "vec",
                                                                          ("default",), ("mrope_section",)),
        "start the server with --disable-hybrid-kv-cache-manager": support.EngineFacts(
            "cpu", "bfloat16", "auto", "vec", ("yarn",), mixed_windows=True, hybrid_kv_cache=True),
        "chunked local attention (attention_chunk_size=8192)": support.EngineFacts(
            "cuda", "bfloat16", "auto", None, ("llama3",), chunked_attention=8192, attention_backend="CUSTOM"),
        # What the engine must be for the hooks (the frontend reads it from vLLM's config).
        "needs synchronous scheduling; start vLLM with --no-async-scheduling": support.EngineFacts(
            "cpu", "bfloat16", "auto", "vec", ("default",), async_scheduling=True),
        "not supported with speculative decoding": support.EngineFacts(
            "cpu", "bfloat16", "auto", "vec", ("default",), speculative=True),
        "on CUDA, start vLLM with --attention-backend CUSTOM (the plugin's Triton backend); this engine uses "
        "the default backend": support.EngineFacts("cuda", "bfloat16", "auto", None, ("default",)),
        "this engine uses TRITON_ATTN": support.EngineFacts("cuda", "bfloat16", "auto", None, ("default",),
                                                            attention_backend="TRITON_ATTN"),
        "needs the V1 model runner (VLLM_USE_V2_MODEL_RUNNER=0)": support.EngineFacts(
            "cuda", "bfloat16", "auto", None, ("default",), attention_backend="CUSTOM", v2_runner_chosen=True),
        # A runner the hooks do not drive (a platform plugin's own, say).
        "model runners V1, standalone CPU, V2 GPU; this server runs the TPU runner": support.EngineFacts(
            "tpu", "bfloat16", "auto", None, ("default",), runner="TPU"),
    }
    for runner in ("standalone CPU", "V2 GPU"):
        assert support.refusal(support.EngineFacts("cpu", "bfloat16", "auto", "vec", ("default",),
                                                   runner=runner)) is None
    cuda_longrope = support.EngineFacts("cuda", "bfloat16", "auto", None, ("default", "longrope"),
                                        attention_backend="CUSTOM")  # one kind of layer's RoPE is enough
    for words, facts in [*cases.items(), ("this model's is longrope", cuda_longrope)]:
        why = support.refusal(facts)
        assert why is not None and why.startswith("hogwild_workers: ") and words in why, (words, why)
    assert support.rope_types({"rope_type": "llama3", "factor": 8.0}) == (("llama3",), ())
    assert support.rope_types({"full_attention": {"rope_type": "default"},
                               "sliding_attention": {"rope_type": "linear"}}) == (("default", "linear"), ())
    assert support.rope_types({"rope_type": "default", "mrope_section": [16, 24, 24]}) == (("default",),
                                                                                           ("mrope_section",))
    assert support.rope_types(None) == ((), ())
    assert support.mixed_windows(128, ["sliding_attention", "full_attention"])
    assert not support.mixed_windows(4096, None) and not support.mixed_windows(None, ["full_attention"] * 2)
    assert not support.mixed_windows(512, ["sliding_attention"] * 4)


AMX_ENGINE = """
import json, sys
from tests import conftest
import torch
torch.cpu._is_amx_tile_supported = lambda: True  # vLLM then lays a bfloat16 cache out for AMX tiles
from vllm import LLM, SamplingParams, TokensPrompt
from tests.helpers.engines import model_path, output_dict
from tests.helpers.runs import group_params, prompt_ids
llm = LLM(model=model_path("llama-h64"), dtype="bfloat16", enforce_eager=True, block_size=32, max_model_len=1024,
          kv_cache_memory_bytes=64 * 2**20, max_num_seqs=16, seed=0)  # no plain warm-up request
layers = llm.llm_engine.model_executor.driver_worker.worker.model_runner.compilation_config.static_forward_context
isa = sorted({{layer.isa for layer in layers.values()}})
outs = [output_dict(llm.generate([TokensPrompt(prompt_token_ids=prompt_ids("llama-h64"))],
                                 SamplingParams(**group_params(3, layout, 16)), use_tqdm=False)[0])
        for layout in ("contiguous", "interleaved", "combined")]
json.dump({{"isa": isa, "outs": outs}}, open(sys.argv[1], "w"))
"""


def test_groups_over_the_amx_layout(tmp_path):
    """The amx layout end to end: vLLM told this CPU has AMX tiles lays out its bfloat16 cache
    for them, with its own writer; groups of 3 in every layout read it, equal to the bfloat16
    oracle. In a process of its own, where only hogwild rows run: this CPU lacks the tiles
    that vLLM's own amx attention needs for a plain request (it dies of SIGILL)."""
    import json

    from tests.helpers.runs import same_dtype_oracle
    from vllm_hogwild import vllm_cpu

    cpu = vllm_cpu.this_cpu()
    if not vllm_cpu.vllm_writes_amx(cpu):
        pytest.skip(f"vLLM's {vllm_cpu.vllm_kernel_build(cpu)} kernels (this CPU's) have no amx layout (no writer, "
                    "no packed weights): test_cpu_native.test_the_amx_layout reads one laid out by the tests")

    script, results = tmp_path / "amx.py", tmp_path / "amx.json"
    script.write_text(AMX_ENGINE.format())
    run = python_at_root([str(script), str(results)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    found = json.loads(results.read_text())
    assert found["isa"] == ["amx"]
    for layout, out in zip(("contiguous", "interleaved", "combined"), found["outs"]):
        for o in out["outputs"]:
            o["logprobs"] = [{int(t): lp for t, lp in step.items()} for step in o["logprobs"]]
        runs = same_dtype_oracle("llama-h64", "bfloat16", 3, layout, 16, [o["token_ids"] for o in out["outputs"]])
        assert_within_noise(out, runs, "bfloat16")
