"""Hogwild groups run two ways, by vLLM and by the recompute oracle, and compared.

Shared by the tests that hold vLLM to the oracle (plain groups and protocol groups, on the
CPU backend and on the CUDA backend under the Triton interpreter).
"""

from __future__ import annotations

from engines import decoder, engine, hf_model, output_dict, tokenizer
from oracle import Oracle
from vllm_hogwild import prompts
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
                    prompt_ids, prefix_ids, max_tokens, set(stop))
    return oracle.run()


def hogwild(family: str, prompt_ids: list[int], workers: int, layout: str, max_tokens: int = 10,
            stop: tuple[int, ...] = (), prefixes: list[str] | None = None):
    """Run vLLM and the oracle on the same group; return (vLLM outputs, oracle runs)."""
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(**group_params(workers, layout, max_tokens, stop, prefixes))
    out = engine(family).generate([TokensPrompt(prompt_token_ids=prompt_ids)], params, use_tqdm=False)[0]
    return out, oracle_runs(family, prompt_ids, workers, layout, max_tokens, stop, prefixes)


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
    proto = GroupProtocol(config, enc, decoder(family), {tok.eos_token_id}, max_tokens, whole_texts=whole_texts)
    framing = [(name, enc(text)) for name, text in prompts.framing(layout, names)]
    oracle = Oracle(hf_model(family), decoder(family), layout, RULE, prompt,
                    [enc(prompts.first_step(n, w)) for w, n in enumerate(names)], max_tokens,
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
