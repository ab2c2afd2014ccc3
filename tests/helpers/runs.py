"""Hogwild groups run two ways, by vLLM and by the recompute oracle, and compared.

Shared by the tests that hold vLLM to the oracle (plain groups and protocol groups, on the
CPU backend and on the CUDA backend under the Triton interpreter).
"""

from __future__ import annotations

from tests.helpers.engines import decoder, engine, hf_model, output_dict, tokenizer
from tests.helpers.oracle import Oracle
from vllm_hogwild import prompts
from vllm_hogwild.bans import Bans, vocabulary_of
from vllm_hogwild.params import parse
from vllm_hogwild.protocol import GroupProtocol
from vllm_hogwild.steps import BoundaryRule

NAMES = ["Alice:", " Bob says", " Carol", "Dave thinks we"]
PROMPT = "Alice and Bob solve problems together. Let x be the unknown."
# A boundary the tiny random models emit often, so that steps commit and move around.
BOUNDARY = "e"


def group_params(workers: int, layout: str, max_tokens: int = 10, stop: tuple[int, ...] = (),
                 prefixes: list[str] | None = None) -> dict:
    """SamplingParams keyword arguments of a greedy group (plain data: also sent to other processes)."""
    prefixes = NAMES[:workers] if prefixes is None else prefixes
    return dict(temperature=0, max_tokens=max_tokens, logprobs=5, stop_token_ids=list(stop),
                extra_args={"hogwild_workers": workers, "hogwild_layout": layout, "hogwild_boundary": BOUNDARY,
                            "hogwild_boundary_sentence": False, "hogwild_prefixes": prefixes})


def oracle_runs(family: str, prompt_ids: list[int], workers: int, layout: str, max_tokens: int = 10,
                stop: tuple[int, ...] = (), prefixes: list[str] | None = None):
    """What the group of ``group_params`` must produce, by recomputation."""
    prefixes = NAMES[:workers] if prefixes is None else prefixes
    tok = tokenizer(family)
    prefix_ids = [tok.encode(p, add_special_tokens=False) for p in prefixes]
    oracle = Oracle(hf_model(family), decoder(family), layout, BoundaryRule(BOUNDARY, False),
                    prompt_ids, prefix_ids, max_tokens, set(stop) | {tok.eos_token_id})  # vLLM stops at EOS
    return oracle.run()


def hogwild(family: str, prompt_ids: list[int], workers: int, layout: str, max_tokens: int = 10,
            stop: tuple[int, ...] = (), prefixes: list[str] | None = None):
    """Run vLLM and the oracle on the same group; return (vLLM outputs, oracle runs)."""
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(**group_params(workers, layout, max_tokens, stop, prefixes))
    out = engine(family).generate([TokensPrompt(prompt_token_ids=prompt_ids)], params, use_tqdm=False)[0]
    return out, oracle_runs(family, prompt_ids, workers, layout, max_tokens, stop, prefixes)


def assert_one_worker_is_plain(llm, ids: list[int], max_tokens: int, bound) -> None:
    """W=1 runs the fragment op where a plain request runs vLLM's own attention: the same
    greedy tokens, and each of the plain request's top-3 logprobs within ``bound(logprob)``."""
    from vllm import SamplingParams, TokensPrompt

    prompt = [TokensPrompt(prompt_token_ids=ids)]
    params = dict(temperature=0, max_tokens=max_tokens, logprobs=3)
    plain = llm.generate(prompt, SamplingParams(**params), use_tqdm=False)[0].outputs[0]
    hog = llm.generate(prompt, SamplingParams(**params, extra_args={"hogwild_workers": 1}), use_tqdm=False)[0]
    hog = hog.outputs[0]
    assert list(hog.token_ids) == list(plain.token_ids)
    for a, b in zip(hog.logprobs, plain.logprobs):
        for t in b:
            if t in a:
                assert abs(a[t].logprob - b[t].logprob) <= bound(b[t].logprob), (t, a[t].logprob, b[t].logprob)
            else:  # a near tie at the list's end: t fell below the group's top 3, so its logprob
                # there is at most the last one listed, and within the bound of the plain one
                last = min(x.logprob for x in a.values())
                assert b[t].logprob <= last + bound(b[t].logprob), (t, last, b[t].logprob)


def assert_matches(out, runs) -> None:
    """Tokens equal and logprobs within 1e-4; ``out`` a RequestOutput or its ``output_dict``."""
    outputs = (out if isinstance(out, dict) else output_dict(out))["outputs"]
    assert len(outputs) == len(runs)
    for w, (got, want) in enumerate(zip(outputs, runs)):
        assert got["index"] == w
        assert got["token_ids"] == want.generated, f"worker {w} tokens differ"
        for step, (lp, ref) in enumerate(zip(got["logprobs"], want.logprobs)):
            for token, logprob in lp.items():
                expect = float(ref[token])
                assert abs(logprob - expect) <= 1e-4 * max(1.0, abs(expect)), (w, step, token)


def prompt_ids(family: str, text: str = PROMPT) -> list[int]:
    return tokenizer(family).encode(text, add_special_tokens=False)


# ---------------------------------------------------------------- protocol groups

PROBLEM = "Let x be the unknown. Then 2x + 3 = 11."
# Random models rarely end sentences: steps end at any token with a space.
RULE = BoundaryRule(" ", False)


def protocol_flags(workers: int, layout: str) -> dict:
    return {"hogwild_workers": workers, "hogwild_layout": layout, "hogwild_protocol": True,
            "hogwild_boundary": RULE.marker, "hogwild_boundary_sentence": RULE.sentence,
            "hogwild_check_tokens": 5, "hogwild_answer_tokens": 3}


def protocol_oracle(family: str, workers: int, layout: str, max_tokens: int, whole_texts: bool = True):
    """(prompt ids, oracle) of PROBLEM under ``protocol_flags``, run to the end."""
    tok = tokenizer(family)
    names = list(prompts.NAMES[:workers])
    prompt = tok.encode(prompts.prompt_text(prompts.PRESETS["plain"], layout, names, PROBLEM))
    enc = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    config = parse(protocol_flags(workers, layout)).protocol
    texts, special = vocabulary_of(tok)
    bans = Bans(prompts.banned_texts(names), texts, special)
    proto = GroupProtocol(config, enc, decoder(family), {tok.eos_token_id}, max_tokens, whole_texts=whole_texts,
                          bans=bans)
    framing = [(name, enc(text)) for name, text in prompts.framing(layout, names)]
    oracle = Oracle(hf_model(family), decoder(family), layout, RULE, prompt,
                    [enc(prompts.first_step(names, w)) for w in range(len(names))], max_tokens,
                    {tok.eos_token_id}, framing, proto)
    oracle.run()
    return prompt, oracle


def protocol_run(family: str, workers: int, layout: str, max_tokens: int = 80, logprobs: int | None = None,
                 step_tokens: int | None = None):
    """vLLM's output and the oracle's runs. With logprobs, the plugin forces one token per
    step (a forced text's other tokens have no logprobs of their own); without, whole texts.
    ``step_tokens``: the engine's max_num_batched_tokens (vLLM's default if None)."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, logprobs=logprobs,
                            extra_args=protocol_flags(workers, layout))
    out = engine(family, step_tokens=step_tokens).generate([PROBLEM], params, use_tqdm=False)[0]
    prompt, oracle = protocol_oracle(family, workers, layout, max_tokens, whole_texts=logprobs is None)
    assert list(out.prompt_token_ids) == prompt
    return out, oracle.runs


# ---------------------------------------------------------------- half-precision dtypes

# The unit roundoff u of each dtype: half an ulp, relative (2^-p for p significant bits).
ROUNDOFF = {"float32": 2.0**-24, "bfloat16": 2.0**-8, "float16": 2.0**-11}


def noise(dtype: str, layers: int, scale: float) -> float:
    """How far two correct forwards in ``dtype`` may put a logit (or a logprob) apart, at a
    step whose logits reach ``scale`` in size: each of the 2L residual additions and the
    logits themselves round to the dtype, each by up to u relative to the logits' scale, so
    (2L + 1) u scale. Measured on the tiny models (W=1..4, every layout and family, 24 tokens):
    at most 2.3 u scale in bfloat16 and in float16. Never below 1e-4, ``assert_matches``'s
    bound for float32 (vLLM's log-softmax over the vocabulary is float32)."""
    return max((2 * layers + 1) * ROUNDOFF[dtype] * scale, 1e-4)


def same_dtype_oracle(family: str, dtype: str, workers: int, layout: str, max_tokens: int, follow: list[list[int]]):
    """The oracle in ``dtype`` taking the tokens ``follow`` gives each worker (another run's,
    ``Oracle.follow``): it scores every step that run took, so one divergence within the
    noise does not end the comparison."""
    tok = tokenizer(family)
    prefix_ids = [tok.encode(p, add_special_tokens=False) for p in NAMES[:workers]]
    oracle = Oracle(hf_model(family, dtype), decoder(family), layout, BoundaryRule(BOUNDARY, False),
                    prompt_ids(family), prefix_ids, max_tokens, set(), follow=follow)
    return oracle.run()


def same_dtype_run(family: str, dtype: str, workers: int, layout: str, max_tokens: int = 16, **engine_kwargs):
    """A group of ``group_params`` run by vLLM in ``dtype``, and ``same_dtype_oracle`` of it."""
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(**group_params(workers, layout, max_tokens))
    out = engine(family, dtype=dtype, **engine_kwargs).generate(
        [TokensPrompt(prompt_token_ids=prompt_ids(family))], params, use_tqdm=False)[0]
    return out, same_dtype_oracle(family, dtype, workers, layout, max_tokens, [list(o.token_ids) for o in out.outputs])


def assert_within_noise(out, runs, dtype: str, layers: int = 2) -> list[tuple[int, int, float]]:
    """vLLM's tokens are the oracle's greedy choices wherever the oracle's top two logits are
    further apart than ``noise``; every logprob vLLM reports is within ``noise`` of the
    oracle's. ``out``: a RequestOutput or its ``output_dict``. Returns the steps (worker,
    step, oracle's gap) where vLLM took another token than the oracle's first choice: the
    first is where a free-running comparison would part."""
    outputs = (out if isinstance(out, dict) else output_dict(out))["outputs"]
    assert len(outputs) == len(runs)
    parted = []
    for w, (got, want) in enumerate(zip(outputs, runs)):
        assert got["token_ids"] == want.generated
        for step, (token, lp, ref, scale) in enumerate(zip(got["token_ids"], got["logprobs"], want.logprobs,
                                                            want.scales)):
            tol = noise(dtype, layers, scale)
            gap = float(ref.max() - ref[token])
            assert gap <= tol, f"worker {w} step {step}: token {token} is {gap:.4f} below the oracle's best ({tol:.4f})"
            if gap > 0:
                parted.append((w, step, gap))
            for t, logprob in lp.items():
                assert abs(logprob - float(ref[t])) <= tol, (w, step, t, logprob, float(ref[t]), tol)
    return parted


STEP = 64  # the engine step (max_num_batched_tokens) of the tests of prompts longer than one step


def long_prompt(family: str) -> list[int]:
    """A prompt of three engine steps and some (``STEP``): its group prefills in chunks."""
    ids = prompt_ids(family, " ".join([PROMPT] * 20))
    assert len(ids) >= 3 * STEP + 10, len(ids)
    return ids[: 3 * STEP + 10]


def outcome(dtype: str, block_size: int, head_size: int, kv_cache_dtype: str) -> str:
    """'runs', 'refused' (at the request, naming the setting) or 'no engine' (vLLM itself
    will not start); asserts what each means."""
    from vllm import SamplingParams, TokensPrompt

    from vllm_hogwild.hooks.frontend import HogwildRequestError

    family = f"llama-h{head_size}"
    try:
        llm = engine(family, dtype=dtype, block_size=block_size, kv_cache_dtype=kv_cache_dtype)
    except (ValueError, NotImplementedError, RuntimeError) as e:
        assert "block size" in str(e) or "FP8" in str(e) or "fp8" in str(e), e
        return "no engine"
    ids = prompt_ids(family)
    result = "runs"
    try:
        out, runs = same_dtype_run(family, dtype, 2, "combined", 8, block_size=block_size,
                                   kv_cache_dtype=kv_cache_dtype)
        assert_within_noise(out, runs, dtype)
    except HogwildRequestError as e:
        assert e.parameter == "hogwild_workers" and "--kv-cache-dtype" in str(e), e
        result = "refused"
    # The engine goes on serving plain requests (and they give what they gave before).
    plain = SamplingParams(temperature=0, max_tokens=4)
    first = llm.generate([TokensPrompt(prompt_token_ids=ids)], plain, use_tqdm=False)[0].outputs[0].token_ids
    again = llm.generate([TokensPrompt(prompt_token_ids=ids)], plain, use_tqdm=False)[0].outputs[0].token_ids
    assert len(first) == 4 and list(first) == list(again)
    return result
