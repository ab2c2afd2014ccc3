"""Model families with sliding windows, soft caps, sinks and per-layer RoPE, held to the
recompute oracle: Mistral (every layer windowed), Gemma 2 (alternating windows, soft-capped
scores), Gemma 3 (a RoPE base per kind of layer, QK-norm), gpt-oss (alternating windows,
learned sinks, YaRN, experts). Their windows (12 tokens, ``tiny_models.WINDOW``) are shorter
than the prompt and every view, so they cut fragments, the prompt and the packed history.

The oracle runs the family's own transformers code with its own attention over each view
(``oracle.py``): it shares no code with the plugin's ops or with vLLM's attention.
"""

from __future__ import annotations

import copy
import importlib
import json

import pytest
import torch

from tests.helpers import python_at_root
from tests.helpers.engines import engine, hf_model
from tests.helpers.runs import assert_matches, assert_one_worker_is_plain, hogwild, oracle_runs, prompt_ids
from tests.helpers.tiny_models import WINDOW
from vllm_hogwild.hooks import state

LAYOUTS = ("contiguous", "interleaved", "combined")
IN_PROCESS = ("mistral", "gemma2", "gemma3")
TOKENS = 16  # with the 17-token prompt, every view is past the window


@pytest.mark.parametrize("family", IN_PROCESS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_groups_equal_the_oracle(family, layout):
    """W = 1..4: tokens equal the oracle's, logprobs within 1e-4."""
    ids = prompt_ids(family)
    assert len(ids) > WINDOW
    for workers in (1, 2, 3, 4):
        out, runs = hogwild(family, ids, workers, layout, max_tokens=TOKENS)
        assert_matches(out, runs)


def test_windows_cut_the_views():
    """The windows bite: the oracle without them takes other tokens (else the tests above
    could not tell a window from none)."""
    from tests.helpers.engines import decoder, tokenizer
    from tests.helpers.oracle import Oracle
    from tests.helpers.runs import BOUNDARY, NAMES
    from vllm_hogwild.steps import BoundaryRule

    family = "mistral"
    ids = prompt_ids(family)
    windowed = oracle_runs(family, ids, 3, "combined", TOKENS)
    model = copy.deepcopy(hf_model(family))  # hf_model's is shared
    model.config.sliding_window = None
    tok = tokenizer(family)
    full = Oracle(model, decoder(family), "combined", BoundaryRule(BOUNDARY, False), ids,
                  [tok.encode(p, add_special_tokens=False) for p in NAMES[:3]], TOKENS,
                  {tok.eos_token_id}).run()
    assert [r.generated for r in windowed] != [r.generated for r in full]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_long_group_frees_only_what_no_view_reaches(layout):
    """Every layer windowed (one block table, vLLM's window manager): a long group frees the
    whole blocks that every running view places behind its window (``window_reach``), and
    nothing a view still reads. Each block is overwritten with noise as it is freed, so a view
    that still read it would take other tokens than the oracle's (which has every key)."""
    from tests.helpers.engines import scheduler

    llm = engine("mistral")
    caches = llm.llm_engine.model_executor.driver_worker.worker.model_runner.kv_caches
    managers = scheduler(llm).kv_cache_manager.coordinator.single_type_managers
    freed: list[int] = []

    def spy(manager):
        original = manager._remove_blocks_in_range

        def remove(request_id, first, last):
            blocks = manager.req_to_blocks.get(request_id, [])[first:last]
            ids = [b.block_id for b in blocks if b is not manager._null_block]
            for cache in caches:  # a layer's keys and values, by block first (vLLM's CPU layout)
                cache[ids] = 100 * torch.randn_like(cache[ids])
            freed.extend(ids)
            return original(request_id, first, last)

        return remove

    for manager in managers:
        manager._remove_blocks_in_range = spy(manager)
    try:
        ids = prompt_ids("mistral")
        out, runs = hogwild("mistral", ids, 4, layout, max_tokens=60)
    finally:
        for manager in managers:
            del manager._remove_blocks_in_range
    assert max(len(o.token_ids) for o in out.outputs) + len(ids) > WINDOW + 2 * 32
    assert freed, "no block was freed"
    assert_matches(out, runs)
    from vllm import SamplingParams

    llm.generate(["a"], SamplingParams(max_tokens=1), use_tqdm=False)  # a step after the group's end
    coordinator = state.peek(scheduler(llm).kv_cache_manager.coordinator, state.CoordinatorState)
    assert coordinator.reach == {}, "an ended group's copy of its commits is kept"


@pytest.mark.parametrize("family", IN_PROCESS)
def test_one_worker_equals_a_plain_request(family):
    """W=1 runs the fragment op where a plain request runs vLLM's own attention (its window,
    soft cap): the same tokens, logprobs within 1e-4."""
    assert_one_worker_is_plain(engine(family), prompt_ids(family), 24, lambda lp: 1e-4 * max(1.0, abs(lp)))


def test_the_hybrid_kv_cache_manager_is_refused_per_request():
    """Gemma 3 under vLLM's hybrid KV cache manager (a block table per kind of layer): a
    hogwild request is refused naming the option that runs it, and the engine goes on serving
    plain requests, as the same model without that manager does."""
    from vllm import SamplingParams, TokensPrompt

    ids = [TokensPrompt(prompt_token_ids=prompt_ids("gemma3"))]
    llm = engine("gemma3", hybrid_kv_cache=True)
    with pytest.raises(ValueError, match="hogwild_workers: .*start the server with --disable-hybrid-kv-cache-manager"):
        llm.generate(ids, SamplingParams(max_tokens=4, extra_args={"hogwild_workers": 2}), use_tqdm=False)
    plain = SamplingParams(temperature=0, max_tokens=8)
    assert list(llm.generate(ids, plain, use_tqdm=False)[0].outputs[0].token_ids) == \
        list(engine("gemma3").generate(ids, plain, use_tqdm=False)[0].outputs[0].token_ids)


GPT_OSS_ENGINE = """
import json, sys
from tests import conftest
from vllm import SamplingParams, TokensPrompt
from tests.helpers.engines import engine, output_dict
from tests.helpers.runs import group_params, prompt_ids
llm = engine("gpt-oss")
ids = prompt_ids("gpt-oss")
outs = {{f"{{layout}}-{{w}}": output_dict(llm.generate([TokensPrompt(prompt_token_ids=ids)],
                                                  SamplingParams(**group_params(w, layout, {tokens})),
                                                  use_tqdm=False)[0])
        for layout in {layouts!r} for w in (1, 2, 3, 4)}}
json.dump(outs, open(sys.argv[1], "w"))
"""


def test_gpt_oss_groups_equal_the_oracle(tmp_path):
    """gpt-oss (sinks, alternating windows, YaRN, experts), every layout, W = 1..4. In a
    process of its own: vLLM builds its expert-parallel state with the first engine of a
    process, and the suite's first engines are dense."""
    script, results = tmp_path / "gpt_oss.py", tmp_path / "gpt_oss.json"
    script.write_text(GPT_OSS_ENGINE.format(tokens=TOKENS, layouts=LAYOUTS))
    run = python_at_root([str(script), str(results)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    found = json.loads(results.read_text())
    ids = prompt_ids("gpt-oss")
    for layout in LAYOUTS:
        for workers in (1, 2, 3, 4):
            out = found[f"{layout}-{workers}"]
            for o in out["outputs"]:
                o["logprobs"] = [{int(t): lp for t, lp in step.items()} for step in o["logprobs"]]
            assert_matches(out, oracle_runs("gpt-oss", ids, workers, layout, TOKENS))


def test_each_layer_gets_its_rope_and_window():
    """Gemma 3's layers as the backend reads them: the windowed layer turns by the local
    base, the full one by the global (linear-scaled) one."""
    from vllm_hogwild import releases, runtime

    llm = engine("gemma3")
    runner = llm.llm_engine.model_executor.driver_worker.worker.model_runner
    runtime.set_runner(runner, importlib.import_module(releases.adapter("model_runner")).Batch)
    layers = runtime.layers()
    kinds = sorted(layers.kinds.items())
    assert [k.window for _, k in kinds] == [WINDOW, 0]
    local, full = (layers.rotaries[k.rotary] for _, k in kinds)
    d = local.inv_freq.numel() * 2
    base = 1.0 / 10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    assert torch.allclose(local.inv_freq.double(), base, rtol=1e-5)
    assert torch.allclose(full.inv_freq.double(), 1.0 / 1000000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d) / 8,
                          rtol=1e-5)


def test_vllms_window_rule_skips_group_blocks():
    """vLLM's freeing of blocks behind a request's own window skips the requests of groups, and
    only them (theirs is ``window_reach``'s, per windowed manager: none here)."""
    from types import SimpleNamespace

    from vllm_hogwild import worker_requests
    from vllm_hogwild.hooks.kv_cache import _remove_skipped_blocks

    calls = []
    skip = _remove_skipped_blocks(lambda self, rid, *a: calls.append(rid))
    worker = SimpleNamespace(sampling_params=SimpleNamespace(extra_args={worker_requests.STAMP_KEY: {"group": "g"}}))
    plain = SimpleNamespace(sampling_params=SimpleNamespace(extra_args=None))
    coordinator = SimpleNamespace(single_type_managers=[SimpleNamespace(sliding_window=None)])  # full attention
    state.of(coordinator, state.CoordinatorState).requests = {"w": worker, "p": plain}
    for rid in ("w", "p", "gone"):
        skip(coordinator, rid, 100)
    assert calls == ["p", "gone"]
