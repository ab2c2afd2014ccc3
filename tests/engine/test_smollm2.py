"""The protocol on the embedded real model (SmolLM2-135M-Instruct), through offline ``LLM()``.

Checks the protocol's structure in what the model writes, not the model's intelligence.
"""

from __future__ import annotations

import functools

import pytest

from vllm_hogwild import prompts

pytestmark = pytest.mark.slow

PROBLEM = "A farmer has 12 cows. She buys 5 more cows, then sells 4 of them. How many cows are left?"


@functools.lru_cache(maxsize=None)
def smollm2():
    from vllm import LLM

    from vllm_hogwild.models import embedded_model

    return LLM(model=embedded_model(), dtype="float32", enforce_eager=True, block_size=32, max_model_len=2048,
               kv_cache_memory_bytes=256 * 2**20, max_num_seqs=8, seed=0)


def test_protocol_structure_on_smollm2():
    from vllm import SamplingParams

    llm = smollm2()
    # Every sentence ends a step, so that a short run shows headers and redundancy checks.
    flags = {"hogwild_workers": 2, "hogwild_protocol": True, "hogwild_boundary": ".",
             "hogwild_boundary_sentence": False, "hogwild_check_tokens": 30}
    out = llm.generate([PROBLEM], SamplingParams(temperature=0, max_tokens=120, extra_args=flags),
                       use_tqdm=False)[0]
    prompt = llm.get_tokenizer().decode(out.prompt_token_ids)
    assert prompt.startswith("<|im_start|>user\nYou are 2 assistants, Alice and Bob,")  # ChatML preset
    assert prompt.endswith(PROBLEM + "<|im_end|>\n<|im_start|>assistant\n" + prompts.PAST_STEPS)
    alice, bob = (o.text for o in out.outputs)
    for name, text in (("Alice", alice), ("Bob", bob)):
        assert f"**{name} [2]:**" in text and f"**{name} [3]:**" in text, text
        assert prompts.REDUNDANCY_CHECK.strip() in text, text
    assert prompts.FINAL_HEADING in alice and prompts.FINAL_HEADING not in bob
    assert out.hogwild_final_answer == prompts.final_answer(alice) is not None
    assert [o.finish_reason for o in out.outputs] == ["stop", "stop"]


def test_protocol_goes_into_the_chat_templates_user_turn():
    """LLM.chat renders SmolLM2's template (with its default system turn) before the plugin
    sees the prompt: the instruction goes at the start of the last user turn."""
    from vllm import SamplingParams

    llm = smollm2()
    flags = {"hogwild_workers": 2, "hogwild_protocol": True, "hogwild_layout": "interleaved"}
    out = llm.chat([{"role": "user", "content": PROBLEM}], SamplingParams(temperature=0, max_tokens=60, extra_args=flags),
                   use_tqdm=False)[0]
    prompt = llm.get_tokenizer().decode(out.prompt_token_ids)
    system, user = prompt.split("<|im_start|>user\n")
    assert system.startswith("<|im_start|>system\n") and "You are 2 assistants" not in system
    assert user.startswith("You are 2 assistants, Alice and Bob,")
    assert user.endswith(PROBLEM + "<|im_end|>\n<|im_start|>assistant\n" + prompts.PAST_STEPS)
    assert out.hogwild_final_answer == prompts.final_answer(out.outputs[0].text) is not None


def test_serve_as_typed_starts_and_answers(tmp_path):
    """``vllm-hogwild serve`` with no option but its address: the embedded model, the CPU
    defaults (a KV cache that fits the machine, said in the log), /health 200 and a hogwild
    answer whose choices start with each worker's step-1 header."""
    import json
    import urllib.request

    from tests.helpers.servers import running_server

    with running_server(None, tmp_path, as_typed=True, start_timeout=600) as base:
        with urllib.request.urlopen(base + "/health", timeout=10) as response:
            assert response.status == 200
        body = {"messages": [{"role": "user", "content": PROBLEM}], "max_tokens": 60, "temperature": 0,
                "vllm_xargs": {"hogwild_workers": 2, "hogwild_protocol": True}}
        request = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            answer = json.loads(response.read())
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    for w, choice in enumerate(answer["choices"]):
        assert choice["message"]["content"].startswith(prompts.first_step(prompts.NAMES[:2], w))
    assert "vllm-hogwild serve: KV cache" in (tmp_path / "server.log").read_text()
