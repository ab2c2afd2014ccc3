"""The end-to-end benchmarks: their grading, their refusals of bad input, and a smoke run of
each script on a tiny model (two problems, one budget, G=2), so that none of them rots."""

from __future__ import annotations

import json

import pytest

from tests.helpers import python_at_root
from tests.helpers.engines import model_path

from benchmarks.end_to_end import accuracy  # noqa: E402
from benchmarks.common import driver  # noqa: E402
from benchmarks.common import grading  # noqa: E402
from benchmarks.serving import serving  # noqa: E402
from benchmarks.end_to_end import think_while_answering  # noqa: E402
from benchmarks.end_to_end import throughput  # noqa: E402

TINY = ["--max-model-len", "1024", "--kv-gib", "0.0625", "--max-num-seqs", "16", "--max-batched-tokens", "2048"]


@pytest.mark.parametrize("given, truth", [
    ("1,350", "1350"), ("$42$", "42"), ("42.0", "42"), ("\\frac{6}{8}", "3/4"), ("\\dfrac34", "0.75"),
    ("6/8", "\\frac{3}{4}"), ("13 cows", "13"), ("\\text{13 cows}", "13"), ("x = 4", "4"), ("7.", "7"),
    (" 1 350 ", "1350"), ("\\$30", "30"), ("-5", "-5.0"),
])
def test_answers_that_match(given, truth):
    assert grading.is_correct(given, truth)


@pytest.mark.parametrize("given, truth", [
    ("24", "7"), ("1,35", "135"), ("3/4", "4/3"), ("2x+3", "11"), ("", "0"), (None, "0"), ("4.5", "4"),
    ("thirteen", "13"), ("1/0", "0"), ("13 cows and 2", "13"),
])
def test_answers_that_do_not_match(given, truth):
    assert not grading.is_correct(given, truth)


def test_majority_vote_takes_the_most_frequent_normalized_answer_then_the_first():
    assert grading.majority([None, "3", "4", "4.0", "3"]) == "3"  # a tie: the first given
    assert grading.majority(["7", "1,000", "1000"]) == "1,000"  # as its first giver wrote it
    assert grading.majority([None, None]) is None


def test_wilson_interval():
    low, high = grading.wilson(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert grading.wilson(0, 10)[0] == 0.0 and grading.wilson(10, 10)[1] == 1.0
    assert grading.wilson(0, 0) == (0.0, 1.0)


def test_problem_files_in_the_usual_shapes(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join([
        json.dumps({"problem": "a?", "answer": 3}),
        "",
        json.dumps({"question": "b?", "answer": "First 2 + 2 = 4.\n#### 4"}),
        json.dumps({"problem": "c?", "solution": "So \\boxed{\\frac{1}{2}} it is."}),
    ]))
    assert grading.load_problems(str(path)) == [
        grading.Problem("a?", "3"), grading.Problem("b?", "4"), grading.Problem("c?", "\\frac{1}{2}")]
    assert len(grading.load_problems(str(path), limit=2)) == 2


@pytest.mark.parametrize("lines, message", [
    (['{"problem": "a?", "answer": "1"}', '{"problem": "b?", "answer": '], "line 2: not valid JSON"),
    (['["a", "1"]'], "line 1: expected a JSON object"),
    (['{"answer": "1"}'], "line 1: needs a non-empty string field 'problem' or 'question'"),
    (['{"problem": "a?"}'], "line 1: needs a field 'answer'"),
    (['{"problem": "a?", "solution": "no box"}'], "line 1: field 'solution' holds no complete"),
    (['', '  '], "holds no problems"),
])
def test_bad_problem_files_name_the_line(tmp_path, lines, message):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=message):
        grading.load_problems(str(path))


@pytest.fixture
def no_engine(monkeypatch):
    """Bad input must be refused before any engine starts."""
    def refuse(*args, **kwargs):
        raise AssertionError("an engine was started")
    monkeypatch.setattr(driver, "build_llm", refuse)


def test_bad_benchmark_input_is_refused_before_an_engine_starts(tmp_path, no_engine, capsys):
    model = model_path("llama")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "a?", "answer": "1"}\nnot json\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(SystemExit, match=r"--problems: .*bad.jsonl line 2: not valid JSON"):
        accuracy.main(["--model", model, "--problems", str(bad), *TINY])
    with pytest.raises(SystemExit, match=r"--problems: .*empty.jsonl: holds no problems"):
        throughput.main(["--model", model, "--problems", str(empty), *TINY])
    with pytest.raises(SystemExit, match="--max-tokens/--budgets: 2 workers x 600 tokens do not fit"):
        accuracy.main(["--model", model, "--workers", "2", "--budgets", "64", "600", *TINY])
    with pytest.raises(SystemExit, match="--max-tokens/--budgets: the protocol needs at least 63 tokens"):
        throughput.main(["--model", model, "--max-tokens", "40", *TINY])
    with pytest.raises(SystemExit, match="--model: '/nowhere' is not a model folder"):
        throughput.main(["--model", "/nowhere", *TINY])
    with pytest.raises(SystemExit):
        accuracy.main(["--model", model, "--methods", "vote", *TINY])
    assert "--methods: invalid choice: 'vote'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--problems"):
        serving.main(["--problems", str(bad)])


def _two_problems(tmp_path) -> str:
    path = tmp_path / "two.jsonl"
    path.write_text(json.dumps({"problem": "Let x be 4. What is 2x + 3?", "answer": "11"}) + "\n"
                    + json.dumps({"question": "Add 2 and 3.", "answer": "Then 5.\n#### 5"}) + "\n")
    return str(path)


@pytest.mark.slow
def test_throughput_smoke(tmp_path):
    out = tmp_path / "tp"
    report = throughput.main(["--model", model_path("llama"), "--problems", _two_problems(tmp_path), "--groups", "2",
                              "--workers", "2", "--max-tokens", "64", "--ignore-eos", "--no-warmup",
                              "--out", str(out), *TINY])
    rows = {m: r[0] for m, r in report["results"].items()}
    assert set(rows) == set(throughput.METHODS)
    # Without the protocol nothing is forced, and with --ignore-eos every worker writes its
    # whole budget: one token per engine step, the first in the prefill step.
    for method in ("hogwild-bare", "independent"):
        assert rows[method]["tokens_per_problem"] == 2 * 64 and rows[method]["depth_p50"] == 64
        assert rows[method]["forced_share"] == 0.0
    for method in ("hogwild", "single"):
        assert 0 < rows[method]["forced_share"] < 1  # at least the closing sentence is forced
        assert rows[method]["depth_p90"] <= 64
    assert rows["single"]["tokens_per_problem"] <= 64 < rows["hogwild"]["tokens_per_problem"] <= 128
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and row["peak_kv_blocks"] > 0 and row["seconds_p50"] <= row["seconds_p90"]
    assert {p.suffix for p in tmp_path.iterdir() if p.stem == "tp"} == {".json", ".md", ".png"}
    assert "| 2 | hogwild |" in (tmp_path / "tp.md").read_text()


@pytest.mark.slow
def test_prefix_cache_smoke(tmp_path):
    """Groups sharing a system prompt: with caching on, the shared prompt is computed once (in a
    process of its own: the benchmark starts two engines, caching on and off)."""
    import json

    out = tmp_path / "pc"
    run = python_at_root(["-m", "benchmarks.end_to_end.prefix_cache",
                          "--model", model_path("llama"), "--groups", "3", "--workers", "2", "--system-tokens", "200",
                          "--max-tokens", "4", "--rounds", "1", "--dtype", "float32", "--max-model-len", "1024", "--kv-gib", "0.25",
                          "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads((tmp_path / "pc.json").read_text())
    on, off = found["summary"]["caching on"], found["summary"]["caching off"]
    assert off["prompt_tokens_computed"] >= found["prompt_tokens"]
    # the shared prompt once, less what is cut off at a block's end: each group recomputes that
    assert found["unique_prompt_tokens"] <= on["prompt_tokens_computed"] <= found["unique_prompt_tokens"] + 3 * 32
    assert "| caching on |" in (tmp_path / "pc.md").read_text()


@pytest.mark.slow
def test_step_breakdown_smoke(tmp_path):
    """Every region of the plugin's is timed in the groups' steps and never in the independent
    requests' (in a process of its own: the benchmark wraps vLLM's functions to time them)."""

    run = python_at_root(["-m", "benchmarks.cpu.step_breakdown",
                          "--model", model_path("llama"), "--problems", _two_problems(tmp_path), "--groups", "2",
                          "--workers", "3", "--tokens", "12", "--repeats", "1", "--layouts", "combined", "interleaved",
                          "--out", str(tmp_path / "sb"), *TINY],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads((tmp_path / "sb.json").read_text())["results"]
    assert set(found) == {"independent", "combined", "interleaved"}
    plugin = ["builder: planner", "builder: table, work lists and turns (one call)", "layer: hogwild op"]
    for name, result in found.items():
        assert result["steps"] == 12 - 2 and result["step_ms"] > 0  # the prompt's step and the last left out
        for label in plugin:
            assert (result[label]["calls_per_step"] > 0) == (name != "independent"), (name, label)
    assert found["independent"]["layer: vLLM's attention"]["calls_per_step"] > 0
    assert found["combined"]["layer: vLLM's attention"]["calls_per_step"] == 0  # every row is a worker's
    assert "| interleaved |" in (tmp_path / "sb.md").read_text()


@pytest.mark.slow
def test_accuracy_smoke(tmp_path, monkeypatch):
    args = ["--model", model_path("llama"), "--problems", _two_problems(tmp_path), "--budgets", "64",
            "--workers", "2", "--temperature", "0", "--batch", "1", "--out", str(tmp_path / "acc"), *TINY]
    report = accuracy.main(args)
    assert list(report["results"]) == ["hogwild W=2", "single", "independent W=2"]
    for name, rows in report["results"].items():
        (row,) = rows
        assert row["budget"] == 64 and row["total"] == 2 and len(row["problems"]) == 2
        assert row["correct"] == sum(grading.is_correct(p["answer"], p["truth"]) for p in row["problems"])
        assert [p["truth"] for p in row["problems"]] == ["11", "5"]
        for p in row["problems"]:
            assert len(p["given"]) == (2 if name.startswith("independent") else 1)
            assert p["answer"] is not None and 0 < p["depth"] <= 64
    # Greedy: independent voters write what one worker writes, so the vote is single's answer.
    assert ([p["answer"] for p in report["results"]["independent W=2"][0]["problems"]]
            == [p["answer"] for p in report["results"]["single"][0]["problems"]])
    assert {p.suffix for p in tmp_path.iterdir() if p.stem == "acc"} == {".json", ".md", ".png", ".jsonl"}
    # Resumable: a rerun finds every problem answered in OUT.jsonl and starts no engine.
    lines = (tmp_path / "acc.jsonl").read_text().splitlines()
    assert len(lines) == 6
    monkeypatch.setattr(driver, "build_llm", lambda *a, **k: (_ for _ in ()).throw(AssertionError("an engine")))
    again = accuracy.main(args)
    assert again["results"] == report["results"] and len((tmp_path / "acc.jsonl").read_text().splitlines()) == 6


@pytest.mark.slow
def test_think_while_answering_smoke(tmp_path, monkeypatch):
    args = ["--model", model_path("llama"), "--problems", _two_problems(tmp_path), "--budget", "16",
            "--batch", "2", "--out", str(tmp_path / "twa"), *TINY]
    report = think_while_answering.main(args)
    assert list(report["results"]) == ["async", "sequential", "direct"]
    for method, r in report["results"].items():
        assert r["total"] == 2 and [p["truth"] for p in r["problems"]] == ["11", "5"]
        for p in r["problems"]:
            assert p["answer_text"] and 1 <= p["first_step"] <= p["total_steps"]
            assert 0 <= p["delay_steps"] < p["total_steps"] and 0 < p["tokens"] <= 32
            assert (p["thought_tokens"] > 0) == bool(p["thoughts"]) == (method != "direct")
    # Thinking first: the answer starts only once the thoughts are done.
    assert all(p["first_step"] > p["thought_tokens"] for p in report["results"]["sequential"]["problems"])
    assert {p.suffix for p in tmp_path.iterdir() if p.stem == "twa"} == {".json", ".md", ".png", ".jsonl"}
    monkeypatch.setattr(driver, "build_llm", lambda *a, **k: (_ for _ in ()).throw(AssertionError("an engine")))
    again = think_while_answering.main(args)
    assert again["results"] == report["results"]


@pytest.mark.slow
def test_serving_smoke(tmp_path):
    from tests.helpers.servers import CHATML, running_server

    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML)
    with running_server(model_path("llama"), tmp_path, "--chat-template", str(template)) as base:
        report = serving.main(["--base-url", base, "--problems", _two_problems(tmp_path), "--num-requests", "6",
                               "--rate", "inf", "--hogwild-share", "0.5", "--workers", "2", "--max-tokens", "64",
                               "--out", str(tmp_path / "serve")])
    assert report["errors"] == 0 and report["requests"] == 6
    hog, plain = report["kinds"]["hogwild"], report["kinds"]["plain"]
    assert hog["requests"] + plain["requests"] == 6 and hog["requests"] > 0 and plain["requests"] > 0
    assert hog["workers_seen_mean"] == 2 and plain["workers_seen_mean"] == 1
    assert hog["final_answers"] == hog["requests"] and plain["final_answers"] == 0
    assert 0 < hog["ttft_p50"] <= hog["answer_s_p90"] and hog["tokens_mean"] > 0
    assert (tmp_path / "serve.md").exists()


def test_echo_counts_what_a_worker_sampled():
    """echo.py: the protocol's forced texts (headers, even one cut off at the end, the first
    step's opening, the redundancy question) are not the worker's own; a banned text in what
    it sampled is an echo; steps that repeat an earlier one are counted."""
    from benchmarks.end_to_end import echo
    from vllm_hogwild import prompts

    names = ["Alice", "Bob"]
    text = (prompts.first_step(["Alice", "Bob"], 1) + " I take the pies.\n\n**Bob [2]:**" + prompts.REDUNDANCY_CHECK
            + " no. 4 + 4 = 8.\n\n**Bob [3]:** 4 + 4 = 8.\n\n**Bob [4]:")
    own = echo.own_text(text, names, 1)
    assert "Bob [" not in own and "Quick check" not in own and "read the plan" not in own
    assert echo.echoes(own, names) == []
    assert echo.echoes(own + " As **Alice [2]:** said ### Past steps <|im_end|>", names) == \
        ["### Past steps", "##", "Alice [", "<|im_end|>"]  # "##": any heading of the view's form
    assert echo.repeats(text, "Bob") == 0 and echo.repeats("**Bob [1]:** a.\n\n**Bob [2]:** a.\n\n", "Bob") == 1
