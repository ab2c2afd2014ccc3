"""The CUDA attention backend inside vLLM, on the CPU: vLLM's GPU model runner (vLLM 0.32's V1
runner; on 0.34, Model Runner V2's GPU runner) with ``HogwildTritonBackend``, vLLM's Triton
kernels and ours run by the Triton interpreter, block size 16 (see triton_engine.py). Every
group equals the recompute oracle."""

from __future__ import annotations

import functools
import json
import os
import tempfile

import pytest
import torch

from tests.helpers import python_at_root
from tests.helpers.engines import hf_model
from tests.helpers.runs import (PROBLEM, STEP, assert_matches, assert_within_noise, group_params, long_prompt, oracle_runs,
                                prompt_ids, protocol_flags, protocol_oracle, same_dtype_oracle)
from vllm_hogwild import prompts

pytestmark = pytest.mark.slow

PLAIN = "Check: 2 * 4 + 3 = 11."
PROTOCOL_TOKENS = 50  # the least the protocol takes with 3 answer tokens


def _early_stop(runs) -> int:
    """The earliest token only one worker emits: stopping on it ends that worker early."""
    streams = [r.generated for r in runs]
    return min((s.index(t), t) for s in streams for t in s if sum(t in o for o in streams) == 1)[1]


def _prompt_and_runs(found) -> tuple:
    prompt, oracle = found
    return prompt, oracle.runs


@functools.lru_cache(maxsize=None)
def expected() -> dict:
    """The requests, and what the oracle (or transformers, for a plain request) says they give."""
    stop = (_early_stop(oracle_runs("qwen3", prompt_ids("qwen3"), 3, "combined", 14)),)
    plain_ids = prompt_ids("qwen3", PLAIN)
    with torch.no_grad():
        plain = hf_model("qwen3").generate(torch.tensor([plain_ids]), max_new_tokens=8, do_sample=False)
    return {
        "combined": oracle_runs("llama", prompt_ids("llama"), 3, "combined"),
        "interleaved": oracle_runs("qwen3", prompt_ids("qwen3"), 2, "interleaved"),
        "plain": plain[0, len(plain_ids):].tolist(),
        "stop": stop,
        "early": oracle_runs("qwen3", prompt_ids("qwen3"), 3, "combined", 14, stop),
        "protocol": _prompt_and_runs(protocol_oracle("qwen3", 2, "combined", PROTOCOL_TOKENS, whole_texts=False)),
        "protocol-whole": _prompt_and_runs(protocol_oracle("qwen3", 2, "combined", PROTOCOL_TOKENS)),
        "chunked": oracle_runs("llama", long_prompt("llama"), 3, "combined"),
        "gemma2": oracle_runs("gemma2", prompt_ids("gemma2"), 3, "combined", 16),
    }


def requests() -> list[dict]:
    return [
        {"family": "llama", "batches": [[
            {"prompt_ids": prompt_ids("llama"), "params": group_params(3, "combined")}]]},
        {"family": "qwen3", "batches": [
            # A group and a plain request share the batch: vLLM's own kernel serves the plain rows.
            [{"prompt_ids": prompt_ids("qwen3"), "params": group_params(2, "interleaved")},
             {"prompt_ids": prompt_ids("qwen3", PLAIN), "params": dict(temperature=0, max_tokens=8)}],
            [{"prompt_ids": prompt_ids("qwen3"), "params": group_params(3, "combined", 14, expected()["stop"])}],
            [{"prompt": PROBLEM, "params": dict(temperature=0, max_tokens=PROTOCOL_TOKENS, logprobs=3,
                                                extra_args=protocol_flags(2, "combined"))}],
            # Without logprobs, each forced text is written in one step, as a chunk.
            [{"prompt": PROBLEM, "params": dict(temperature=0, max_tokens=PROTOCOL_TOKENS,
                                                extra_args=protocol_flags(2, "combined"))}]]},
        # A prompt of three steps and more: worker 0 prefills it in chunks, then all start.
        {"family": "llama", "name": "llama-chunked", "engine": {"max_num_batched_tokens": STEP}, "batches": [[
            {"prompt_ids": long_prompt("llama"), "params": group_params(3, "combined")}]]},
        # Gemma 2: alternating 12-token windows and soft-capped scores, the kernel's arguments per layer.
        {"family": "gemma2", "engine": {"disable_hybrid_kv_cache_manager": True}, "batches": [[
            {"prompt_ids": prompt_ids("gemma2"), "params": group_params(3, "combined", 16)}]]},
        # bfloat16, as GPUs run: the kernel's bfloat16 path, vLLM's bfloat16 cache writer.
        {"family": "qwen3", "name": "qwen3-bf16", "engine": {"dtype": "bfloat16"}, "batches": [[
            {"prompt_ids": prompt_ids("qwen3"), "params": group_params(3, "interleaved", 16)}]]},
    ]


@pytest.fixture(scope="module")
def results() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = os.path.join(tmp, "requests.json"), os.path.join(tmp, "results.json")
        with open(spec, "w") as f:
            json.dump(requests(), f)
        run = python_at_root(["-m", "tests.helpers.triton_engine", spec, out],
                             capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
        with open(out) as f:
            cases = json.load(f)
    for case in cases:
        for batch in case["batches"]:
            for request in batch:
                for o in request["outputs"]:
                    o["logprobs"] = [{int(t): lp for t, lp in step.items()} for step in o["logprobs"]]
    return {case["name"]: case for case in cases}


def test_the_engine_ran_the_cuda_backend(results):
    assert {family: case["impls"] for family, case in results.items()} == {
        "llama": ["HogwildTritonImpl"], "qwen3": ["HogwildTritonImpl"], "llama-chunked": ["HogwildTritonImpl"],
        "qwen3-bf16": ["HogwildTritonImpl"], "gemma2": ["HogwildTritonImpl"]}


def test_a_group_equals_the_oracle(results):
    assert_matches(results["llama"]["batches"][0][0], expected()["combined"])


def test_a_group_and_a_plain_request_share_a_batch(results):
    group, plain = results["qwen3"]["batches"][0]
    assert_matches(group, expected()["interleaved"])
    assert plain["outputs"][0]["token_ids"] == expected()["plain"]


def test_a_finished_worker_stays_visible(results):
    out = results["qwen3"]["batches"][1][0]
    lengths = sorted(len(o["token_ids"]) for o in out["outputs"])
    assert lengths[0] < lengths[-1]
    assert_matches(out, expected()["early"])


@pytest.mark.parametrize("batch,kind", [(2, "protocol"), (3, "protocol-whole")], ids=["one-token-steps", "whole-texts"])
def test_the_protocol_equals_the_oracle(results, batch, kind):
    out = results["qwen3"]["batches"][batch][0]
    prompt, runs = expected()[kind]
    assert out["prompt_token_ids"] == prompt
    assert_matches(out, runs)
    assert out["final_answer"] == prompts.final_answer(out["outputs"][0]["text"]) is not None


def test_a_prompt_of_three_steps_equals_the_oracle(results):
    assert_matches(results["llama-chunked"]["batches"][0][0], expected()["chunked"])


def test_a_family_with_windows_and_soft_caps_equals_the_oracle(results):
    assert_matches(results["gemma2"]["batches"][0][0], expected()["gemma2"])


def test_a_bfloat16_group_equals_the_same_dtype_oracle(results):
    """The CUDA backend in bfloat16 (the Triton kernel's bfloat16 path, vLLM's bfloat16 cache
    writer), held to the bfloat16 oracle as the CPU path is (``runs.assert_within_noise``)."""
    out = results["qwen3-bf16"]["batches"][0][0]
    runs = same_dtype_oracle("qwen3", "bfloat16", 3, "interleaved", 16, [o["token_ids"] for o in out["outputs"]])
    assert_within_noise(out, runs, "bfloat16")
