"""Real checkpoints of the catalogue against the recompute oracle, and the protocol's framing on them.

Run only when asked for (``bash scripts/test.sh --real-models tests/engine/test_real_models.py``), and then
skipped, saying how to fetch the model, where it is not fetched (CI never downloads them):
``vllm-hogwild models fetch qwen2.5-coder-1.5b-instruct`` (1066 MiB) and ``... gemma-3-270m``
(241 MiB). Slow: the oracle recomputes every worker's view at every step in transformers.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers import ROOT
from tests.helpers.engines import engine, tokenizer
from tests.helpers.engines import output_dict
from tests.helpers.runs import assert_one_worker_is_plain, assert_within_noise, noise, oracle_runs

# Float32 on a real model: vLLM and transformers sum in other orders, and a real model's residual
# stream runs to hundreds (Qwen2's), far above its logits, so logprobs move by more than the
# tiny models' 1e-4 (Qwen 1.5B: 1.0e-4 at the third step of a W=2 group). Tokens must be equal.
LOGPROB_BOUND = 1e-3


def assert_equal_tokens(out, runs) -> float:
    """Every worker's tokens are the oracle's; each logprob vLLM reports within LOGPROB_BOUND of
    the oracle's. Returns the largest difference."""
    worst = 0.0
    for w, (got, want) in enumerate(zip(output_dict(out)["outputs"], runs)):
        assert got["token_ids"] == want.generated, f"worker {w} tokens differ"
        for step, (lp, ref) in enumerate(zip(got["logprobs"], want.logprobs)):
            for token, logprob in lp.items():
                worst = max(worst, abs(logprob - float(ref[token])))
    assert worst <= LOGPROB_BOUND, worst
    return worst

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

QWEN = "qwen2.5-coder-1.5b-instruct"
GEMMA = "gemma-3-270m"
DATA = os.path.join(ROOT, "benchmarks", "data")


def gsm8k(n: int) -> str:
    """GSM8K test problem ``n`` (a development problem: 0-99)."""
    with open(os.path.join(DATA, "gsm8k_test_0_299.jsonl"), encoding="utf-8") as f:
        return json.loads(f.readlines()[n])["question"]


def chat_ids(family: str, text: str) -> list[int]:
    tok = tokenizer(family)
    rendered = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    return tok.encode(rendered, add_special_tokens=False)


def group(family: str, ids: list[int], workers: int, layout: str, max_tokens: int, llm):
    from vllm import SamplingParams, TokensPrompt

    from tests.helpers.runs import group_params

    params = SamplingParams(**group_params(workers, layout, max_tokens))
    out = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
    return out, oracle_runs(family, ids, workers, layout, max_tokens)


@pytest.mark.parametrize("layout", ["contiguous", "interleaved", "combined"])
@pytest.mark.parametrize("workers", [2, 3])
def test_qwen_groups_equal_the_oracle(workers, layout):
    """Qwen2.5-Coder-1.5B-Instruct in float32, 48 tokens a worker, steps cut at every "e" (so
    that fragments move at almost every token): the oracle's tokens, and logprobs within
    ``LOGPROB_BOUND`` of the oracle's."""
    llm = engine(QWEN, kv_bytes=256 * 2**20)
    out, runs = group(QWEN, chat_ids(QWEN, gsm8k(0)), workers, layout, 48, llm)
    print(f"largest logprob difference: {assert_equal_tokens(out, runs):.2e}")


@pytest.mark.parametrize("layout", ["contiguous", "interleaved", "combined"])
@pytest.mark.parametrize("workers", [2, 3])
def test_qwen_bfloat16_groups_are_within_the_noise(workers, layout):
    """Qwen 1.5B in bfloat16 (vLLM's default dtype on CPUs with bf16 arithmetic), 48 tokens a
    worker: vLLM's tokens are the bfloat16 oracle's greedy choices wherever the
    oracle's top two logits are further apart than the noise rule allows for 28 layers
    (``runs.assert_within_noise``; the oracle follows vLLM's tokens, so one choice within the
    noise does not end the comparison), and every logprob is within that noise."""
    from vllm import SamplingParams, TokensPrompt

    from tests.helpers.oracle import Oracle
    from tests.helpers.runs import BOUNDARY, NAMES, group_params
    from vllm_hogwild.steps import BoundaryRule
    from tests.helpers.engines import decoder, hf_model

    hf_model.cache_clear()  # drops a float32 oracle's 6.6 GB (and the bfloat16 one: 3.3 GB, reloaded in 10 s)
    llm = engine(QWEN, kv_bytes=256 * 2**20, dtype="bfloat16")
    ids = chat_ids(QWEN, gsm8k(0))
    out = llm.generate([TokensPrompt(prompt_token_ids=ids)], SamplingParams(**group_params(workers, layout, 48)),
                       use_tqdm=False)[0]
    tok = tokenizer(QWEN)
    prefix_ids = [tok.encode(p, add_special_tokens=False) for p in NAMES[:workers]]
    oracle = Oracle(hf_model(QWEN, "bfloat16"), decoder(QWEN), layout, BoundaryRule(BOUNDARY, False), ids,
                    prefix_ids, 48, {tok.eos_token_id}, follow=[list(o.token_ids) for o in out.outputs])  # vLLM stops at EOS
    parted = assert_within_noise(out, oracle.run(), "bfloat16", layers=28)
    print(f"steps where vLLM took another token than the oracle's first choice (worker, step, gap): {parted}")


@pytest.mark.parametrize("layout", ["contiguous", "interleaved", "combined"])
def test_gemma3_groups_past_the_window_equal_the_oracle(layout):
    """Gemma 3 270M (local layers with a 512-token window, global layers; vLLM's hybrid KV
    cache manager off): two workers of 300 tokens after a 100-token prompt, so that every view
    outgrows the window and windowed and global layers see different keys."""
    llm = engine(GEMMA, kv_bytes=256 * 2**20, max_model_len=2048, hybrid_kv_cache=False)
    ids = tokenizer(GEMMA).encode(gsm8k(1) + " " + gsm8k(2), add_special_tokens=True)
    out, runs = group(GEMMA, ids, 2, layout, 300, llm)
    assert len(ids) + 2 * 300 > 512 + 100
    print(f"largest logprob difference: {assert_equal_tokens(out, runs):.2e}")


def test_gemma3_one_worker_is_a_plain_request():
    llm = engine(GEMMA, kv_bytes=256 * 2**20, max_model_len=2048, hybrid_kv_cache=False)
    assert_one_worker_is_plain(llm, tokenizer(GEMMA).encode(gsm8k(3)), 64, lambda _: noise("float32", 18, 30.0))


def test_qwen_workers_never_write_the_framing():
    """Two GSM8K problems, W=2 with the protocol, every layout: no worker's own text holds a
    section heading, a header or the template's control tokens (a real instruct model copied
    them at every step before the bans)."""
    from vllm import SamplingParams

    from vllm_hogwild import prompts

    llm = engine(QWEN, kv_bytes=256 * 2**20, max_model_len=2048)
    banned = prompts.banned_texts(prompts.NAMES[:2]) + ["<|im_start|>", "<|im_end|>"]
    for layout in ("contiguous", "interleaved", "combined"):
        flags = {"hogwild_workers": 2, "hogwild_protocol": True, "hogwild_layout": layout}
        outs = llm.chat([[{"role": "user", "content": gsm8k(n)}] for n in (0, 1)],
                        SamplingParams(temperature=0, max_tokens=160, extra_args=flags), use_tqdm=False)
        for out in outs:
            for w, o in enumerate(out.outputs):
                own = o.text.split(prompts.FINAL_HEADING)[0]
                for step in own.split("**" + prompts.NAMES[w] + " [")[1:]:  # each sampled step after its header
                    body = step.split(":**", 1)[-1].replace(prompts.REDUNDANCY_CHECK.strip(), "")  # forced
                    assert not [b for b in banned if b in body], (layout, w, body)
