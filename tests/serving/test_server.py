"""The OpenAI-compatible server with the plugin, started on 127.0.0.1 and queried over HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.helpers.engines import engine, model_path
from tests.helpers.servers import CHATML, running_server
from vllm_hogwild import prompts

PROTOCOL = {"hogwild_workers": 2, "hogwild_protocol": True, "hogwild_answer_tokens": 4}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    template = folder / "chatml.jinja"
    template.write_text(CHATML)
    with running_server(model_path("llama"), folder, "--chat-template", str(template)) as base:
        yield base


def post(base: str, path: str, body: dict) -> tuple[int, dict]:
    body = {"model": model_path("llama"), "temperature": 0, **body}
    request = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def stream(base: str, path: str, body: dict) -> list[dict]:
    body = {"model": model_path("llama"), "temperature": 0, "stream": True, **body}
    request = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    events = []
    with urllib.request.urlopen(request, timeout=300) as response:
        for line in response:
            line = line.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: "):]))
    return events


@pytest.mark.slow
def test_completions_return_one_choice_per_worker_and_the_final_answer(server):
    status, body = post(server, "/v1/completions", {"prompt": "Let x be the unknown.", "max_tokens": 80,
                                                    "vllm_xargs": PROTOCOL})
    assert status == 200, body
    assert [c["index"] for c in body["choices"]] == [0, 1]
    answer = body["hogwild"]["final_answers"][0]
    assert answer is not None and answer == prompts.final_answer(body["choices"][0]["text"])
    assert prompts.FINAL_HEADING in body["choices"][0]["text"]


@pytest.mark.slow
def test_chat_completions_with_three_workers(server):
    status, body = post(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Check: 2 * 4 + 3 = 11."}], "max_tokens": 80,
        "vllm_xargs": {**PROTOCOL, "hogwild_workers": 3, "hogwild_layout": "interleaved"}})
    assert status == 200, body
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    content = body["choices"][0]["message"]["content"]
    assert body["hogwild"]["final_answers"] == [prompts.final_answer(content)] != [None]


@pytest.mark.slow
def test_streaming_sends_each_workers_deltas_with_its_index(server):
    request = {"prompt": "We plan the work.", "max_tokens": 80, "vllm_xargs": PROTOCOL}
    _, whole = post(server, "/v1/completions", request)
    events = stream(server, "/v1/completions", request)
    texts = {0: "", 1: ""}
    for event in events:
        for choice in event["choices"]:
            texts[choice["index"]] += choice["text"]
    assert texts == {c["index"]: c["text"] for c in whole["choices"]}
    # Each choice is its worker's whole stream, from its step-1 header and greeting on.
    for w, name in enumerate(prompts.NAMES[:2]):
        assert texts[w].startswith(prompts.first_step(prompts.NAMES[:2], w)), texts[w][:80]
    assert prompts.final_answer(texts[0]) is not None
    # The last chunk carries the final answers, as the non-streaming response does.
    assert events[-1]["choices"] == [] and events[-1]["hogwild"] == whole["hogwild"]


@pytest.mark.slow
def test_chat_streaming_ends_with_the_final_answer(server):
    request = {"messages": [{"role": "user", "content": "We plan the work."}], "max_tokens": 80,
               "vllm_xargs": PROTOCOL}
    _, whole = post(server, "/v1/chat/completions", request)
    events = stream(server, "/v1/chat/completions", request)
    content = {0: "", 1: ""}
    for event in events:
        for choice in event["choices"]:
            content[choice["index"]] += choice["delta"].get("content") or ""
    assert content == {c["index"]: c["message"]["content"] for c in whole["choices"]}
    for w, name in enumerate(prompts.NAMES[:2]):
        assert content[w].startswith(prompts.first_step(prompts.NAMES[:2], w)), content[w][:80]
    assert events[-1]["hogwild"] == whole["hogwild"] and whole["hogwild"]["final_answers"][0] is not None


@pytest.mark.slow
def test_think_while_answering_is_one_choice_with_the_thoughts_as_reasoning(server):
    """A chat client gets what a reasoning model gives it: one choice, the writer's answer as its
    content and the thinker's thoughts as its reasoning (streamed as reasoning deltas of choice 0),
    usage counting both; the same texts as the offline engine's two streams."""
    from vllm import SamplingParams

    messages = [{"role": "user", "content": "Let x be the unknown. Then 2x + 3 = 11."}]
    xargs = {"hogwild_workers": 2, "hogwild_async": True, "hogwild_boundary": "l", "hogwild_boundary_sentence": False}
    request = {"messages": messages, "max_tokens": 16, "vllm_xargs": xargs}
    status, whole = post(server, "/v1/chat/completions", request)
    assert status == 200, whole
    assert len(whole["choices"]) == 1 and whole["choices"][0]["index"] == 0
    message = whole["choices"][0]["message"]
    offline = engine("llama").chat([messages], SamplingParams(temperature=0, max_tokens=16, extra_args=xargs),
                                   use_tqdm=False)[0].outputs
    assert [message["content"], message["reasoning"]] == [o.text for o in offline] != ["", ""]
    assert whole["usage"]["completion_tokens"] == sum(len(o.token_ids) for o in offline)
    events = stream(server, "/v1/chat/completions", request)
    streamed = {"content": "", "reasoning": ""}
    for event in events:
        for choice in event["choices"]:
            assert choice["index"] == 0
            for field in streamed:
                streamed[field] += choice["delta"].get(field) or ""
    assert streamed == {"content": message["content"], "reasoning": message["reasoning"]}
    finishes = [c["finish_reason"] for e in events for c in e["choices"] if c.get("finish_reason")]
    assert finishes == [whole["choices"][0]["finish_reason"]]


@pytest.mark.parametrize("xargs,field", [
    ({"hogwild_workers": 2, "hogwild_layout": "zigzag"}, "hogwild_layout"),
    ({"hogwild_workers": 99}, "hogwild_workers"),
    ({"hogwild_workers": 2, "hogwild_wrokers": 3}, "hogwild_wrokers"),
    ({"hogwild_workers": 2, "hogwild_protocol": "maybe"}, "hogwild_protocol"),
])
@pytest.mark.slow
def test_bad_fields_are_400_and_the_server_goes_on(server, xargs, field):
    for path, body in [("/v1/completions", {"prompt": "Let x"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})]:
        for streaming in (False, True):
            status, error = post(server, path, {**body, "max_tokens": 4, "stream": streaming, "vllm_xargs": xargs})
            assert status == 400 and error["error"]["param"] == field, error
            assert error["error"]["message"].startswith(f"{field}: "), error
    status, body = post(server, "/v1/completions", {"prompt": "Let x", "max_tokens": 3})
    assert status == 200 and len(body["choices"]) == 1


@pytest.mark.slow
def test_junk_in_every_hogwild_field_over_http_is_a_400_or_a_run(server):
    """The offline fuzz's cases over HTTP (test_fuzz.py): each is a 400 naming the field (our
    validation, or vLLM's own for ``vllm_xargs``), or W choices; never a 500; and after all of
    them a plain request is served."""
    from tests.helpers.junk import FIELDS_NAMED, bad_input_cases

    statuses = set()
    for xargs in bad_input_cases(0):
        status, body = post(server, "/v1/completions", {"prompt": "Let x", "max_tokens": 70, "vllm_xargs": xargs})
        statuses.add(status)
        if status == 400:
            error = body["error"]
            assert error["param"] in FIELDS_NAMED or error["param"] in xargs or "vllm_xargs" in error["message"], \
                (xargs, error)
        else:
            assert status == 200 and len(body["choices"]) == int(xargs["hogwild_workers"]), (xargs, body)
    assert statuses == {200, 400}
    status, body = post(server, "/v1/completions", {"prompt": "Let x", "max_tokens": 3})
    assert status == 200 and len(body["choices"]) == 1


@pytest.mark.slow
def test_n_with_hogwild_is_400(server):
    for streaming in (False, True):
        status, error = post(server, "/v1/completions", {"prompt": "Let x", "max_tokens": 4, "n": 2, "stream": streaming,
                                                         "temperature": 0.5, "vllm_xargs": {"hogwild_workers": 2}})
        assert status == 400 and error["error"]["param"] == "n", error


@pytest.mark.slow
def test_a_group_that_cannot_fit_the_model_length_is_400(server):
    status, error = post(server, "/v1/completions", {"prompt": "Let x", "max_tokens": 900,
                                                     "vllm_xargs": {"hogwild_workers": 2}})
    assert status == 400 and error["error"]["param"] == "max_tokens"
    assert "max_model_len=1024" in error["error"]["message"] and "allowed: max_tokens <=" in error["error"]["message"]


@pytest.mark.slow
def test_ordinary_requests_are_untouched(server):
    from vllm import SamplingParams

    prompt = "Each worker writes a step."
    offline = engine("llama").generate([prompt], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    status, body = post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 8})
    assert status == 200 and "hogwild" not in body
    assert [c["text"] for c in body["choices"]] == [offline[0].outputs[0].text]


def test_vllm_serve_accepts_the_plugin_option():
    """`vllm serve MODEL --plugin hogwild` parses (vLLM's own parser, with the plugin loaded)."""
    from tests.helpers.vllm_api import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(["some-model", "--plugin", "hogwild"])
    assert args.plugin == ["hogwild"] and args.model_tag == "some-model"
    with pytest.raises(SystemExit):
        make_arg_parser(FlexibleArgumentParser()).parse_args(["some-model", "--plugin", "nope"])


def test_serve_command_line(monkeypatch, capsys):
    from vllm_hogwild.cli import cpu_kv_cache_bytes, serve_command
    from vllm_hogwild import vllm_cpu

    CPU_DTYPE, _ = vllm_cpu.default_dtype(vllm_cpu.this_cpu())

    monkeypatch.setenv("VLLM_PLUGINS", "other")
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.setattr("vllm_hogwild.cli._available_memory", lambda: 10 * 2**30)
    command, env = serve_command(["/models/m", "--plugin", "hogwild", "--port", "8001"])
    # No GPU here: the CPU dtype, and a KV cache of a quarter of the memory available.
    assert command[1:] == ["-m", "vllm_hogwild.launcher", "--model", "/models/m", "--port", "8001",
                           "--dtype", CPU_DTYPE, "--kv-cache-memory-bytes", str(2560 * 2**20)]
    assert env["VLLM_PLUGINS"] == "hogwild,other"
    # Unset, it names hogwild (so that vLLM attaches the page at /hogwild) and every
    # installed general plugin (which vLLM would have loaded anyway).
    monkeypatch.delenv("VLLM_PLUGINS")
    _, env = serve_command(["/models/m"])
    assert env["VLLM_PLUGINS"].split(",")[0] == "hogwild"
    command, _ = serve_command(["--model", "/m", "--dtype", "bfloat16", "--gpu-memory-utilization", "0.5"])
    assert command[3:] == ["--model", "/m", "--dtype", "bfloat16", "--gpu-memory-utilization", "0.5"]
    command, _ = serve_command(["/m", "--kv-cache-memory-bytes=1000000000"])
    assert command[3:] == ["--model", "/m", "--kv-cache-memory-bytes=1000000000", "--dtype", CPU_DTYPE]
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    command, _ = serve_command(["/m"])
    assert command[3:] == ["--model", "/m", "--dtype", CPU_DTYPE]
    assert cpu_kv_cache_bytes(100 * 2**30) == 4 * 2**30 and cpu_kv_cache_bytes(2**29) == 256 * 2**20
    with pytest.raises(SystemExit, match="--plugin: expected a plugin name"):
        serve_command(["/m", "--plugin"])
    # The dtype follows the CPU's bfloat16 matrix products, and the log says which and why.
    real = vllm_cpu.this_cpu
    for flags, dtype in ((("avx2", "fma"), "float32"), (("avx2", "avx512f", "avx512_bf16"), "bfloat16"),
                         (("avx2", "avx512f", "amx_tile", "amx_bf16"), "bfloat16"), (("avx2", "avx512f"), "float32")):
        monkeypatch.setattr(vllm_cpu, "this_cpu", lambda: vllm_cpu.Cpu("x", frozenset(flags), "x86_64"))
        capsys.readouterr()
        command, _ = serve_command(["/m"])
        assert command[3:] == ["--model", "/m", "--dtype", dtype], flags
        said = capsys.readouterr().err
        assert f"--dtype {dtype} (" in said and ("AVX512-BF16" in said or "AMX" in said), said
    monkeypatch.setattr(vllm_cpu, "this_cpu", real)
    # A model mixing windowed and full layers: vLLM's hybrid KV cache manager off, unless chosen.
    from tests.helpers.engines import model_path

    gemma = model_path("gemma3")
    command, _ = serve_command([gemma])
    assert command[3:] == ["--model", gemma, "--disable-hybrid-kv-cache-manager", "--dtype", CPU_DTYPE]
    command, _ = serve_command([gemma, "--no-disable-hybrid-kv-cache-manager"])
    assert "--disable-hybrid-kv-cache-manager" not in command
    command, _ = serve_command([model_path("mistral")])
    assert "--disable-hybrid-kv-cache-manager" not in command
    # With a GPU: the plugin's backend and synchronous scheduling, unless the user chose.
    monkeypatch.setattr("vllm_hogwild.cli._has_accelerator", lambda: True)
    command, _ = serve_command(["/m"])
    assert command[3:] == ["--model", "/m", "--attention-backend", "CUSTOM", "--no-async-scheduling"]
    command, _ = serve_command(["/m", "--attention-backend=TRITON_ATTN", "--async-scheduling"])
    assert command[3:] == ["--model", "/m", "--attention-backend=TRITON_ATTN", "--async-scheduling"]


@pytest.mark.slow
def test_a_server_setting_hogwild_cannot_run_is_a_400_per_request(tmp_path):
    """A bfloat16 server with an fp8 KV cache: every hogwild request (completions and chat,
    streaming or not) is a 400 naming the setting, and the server goes on serving plain
    requests and stays healthy (a hogwild request used to kill a bfloat16 engine). Where vLLM
    starts no engine with an fp8 cache (x86 without AVX-512 or AMX), the setting is vLLM's
    hybrid KV cache manager under a model that mixes windowed and full layers."""
    from vllm_hogwild import vllm_cpu

    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML)
    if vllm_cpu.fp8_kv_cache(vllm_cpu.this_cpu()):
        model, setting, named = model_path("llama"), ["--kv-cache-dtype", "fp8"], ["--kv-cache-dtype auto", "fp8"]
    else:
        model, setting, named = model_path("gemma3"), ["--no-disable-hybrid-kv-cache-manager"], \
            ["--disable-hybrid-kv-cache-manager"]
    with running_server(model, tmp_path, "--chat-template", str(template), "--dtype", "bfloat16", *setting) as base:
        for path, body in [("/v1/completions", {"model": model, "prompt": "Let x"}),
                           ("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}]})]:
            for streaming in (False, True):
                status, error = post(base, path, {**body, "max_tokens": 4, "stream": streaming,
                                                  "vllm_xargs": {"hogwild_workers": 2}})
                assert status == 400 and error["error"]["param"] == "hogwild_workers", error
                assert all(n in error["error"]["message"] for n in named), error
                status, plain = post(base, path, {**body, "max_tokens": 3})
                assert status == 200 and len(plain["choices"]) == 1, plain
        with urllib.request.urlopen(base + "/health", timeout=10) as response:
            assert response.status == 200
