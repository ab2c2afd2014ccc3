"""The live view at /hogwild, in a real headless browser (Debian's Chromium, driven by
Playwright) against a live server with a tiny model: the page loads, a run fills W columns
and shows the final answer, think while answering fills its answer and thoughts columns,
Stop stops a run (and the server goes on), a bad field shows the server's 400 message."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request

import pytest

from tests.helpers.engines import model_path
from tests.helpers.servers import CHATML, running_server

pytestmark = pytest.mark.slow

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    if BROWSER is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    folder = tmp_path_factory.mktemp("web")
    (folder / "chatml.jinja").write_text(CHATML)
    with running_server(model_path("llama"), folder, "--chat-template", str(folder / "chatml.jinja"),
                        env={"VLLM_PLUGINS": "hogwild"}) as base:
        yield base


@pytest.fixture(scope="module")
def browser(page_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=BROWSER, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        yield chromium
        chromium.close()


def _open(browser, url: str, **fields: str):
    page = browser.new_page()
    page.goto(url + "/hogwild")
    for field, value in fields.items():
        page.fill(f"#{field}", value)
    return page


def test_a_run_fills_one_column_per_worker_and_shows_the_final_answer(browser, page_url):
    page = _open(browser, page_url, workers="2", **{"max-tokens": "64", "temperature": "0"})
    assert page.title() == "Hogwild! live view"
    page.click("#start")
    page.wait_for_selector("#answer:not([hidden])", timeout=120_000)
    page.wait_for_function("document.querySelector('#status').textContent === 'Done.'", timeout=60_000)
    columns = page.query_selector_all(".worker")
    assert len(columns) == 2
    assert all(c.query_selector(".text").inner_text().strip() for c in columns)
    assert page.inner_text("#answer-text") != ""
    assert page.query_selector(".worker .final") is not None  # worker 0's closing sentence, set apart
    assert int(page.inner_text("#steps")) > 0 and float(page.inner_text("#tokens-per-s")) > 0
    page.close()


def test_think_while_answering_shows_the_answer_and_the_thoughts_side_by_side(browser, page_url):
    page = _open(browser, page_url, **{"max-tokens": "24", "temperature": "0"})
    page.select_option("#mode", "async")
    page.click("#start")
    page.wait_for_function("document.querySelector('#status').textContent === 'Done.'", timeout=120_000)
    columns = page.query_selector_all(".worker")
    assert [c.query_selector("h2").inner_text().split()[0] for c in columns] == ["Answer", "Thoughts"]
    assert all(c.query_selector(".text").inner_text().strip() for c in columns)
    assert page.query_selector("#error").is_hidden()
    page.close()


def _metric(url: str, prefix: str, label: str = "") -> float:
    """The sum of a vLLM metric's series (lines starting with ``prefix``, holding ``label``)."""
    metrics = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith(prefix) and label in line)


def _running(url: str) -> float:
    return _metric(url, "vllm:num_requests_running{")


def _generated(url: str) -> float:
    return _metric(url, "vllm:generation_tokens_total{")


def _stopped_run(browser, page_url: str, fields: dict) -> float:
    """Start a run, let the page click Stop the moment its stream starts, check the page
    and the server stopped; the tokens the server generated for it."""
    generated = _generated(page_url)
    page = _open(browser, page_url, **fields)
    page.evaluate("""() => new MutationObserver((changes, observer) => {
        if (document.querySelector('#status').textContent === 'Running…') {
            observer.disconnect();
            document.querySelector('#stop').click();
        }
    }).observe(document.querySelector('#status'), {childList: true, characterData: true, subtree: true})""")
    page.click("#start")
    page.wait_for_selector("#status.stopped", timeout=120_000)
    assert "Stopped" in page.inner_text("#status") and page.is_enabled("#start")
    assert page.query_selector("#answer").is_hidden()
    page.close()
    deadline = time.time() + 30
    while _running(page_url) > 0:
        assert time.time() < deadline, "the stopped group still runs"
        time.sleep(0.5)
    return _generated(page_url) - generated


def test_stop_closes_the_stream_the_server_aborts_the_group_and_goes_on(browser, page_url):
    # One worker with room for 250 tokens (the tiny model's 1024 positions hold the protocol's
    # prompt and little more): about a second of streaming. The page clicks Stop itself the
    # moment the stream starts (a poll from here may come too late on a loaded machine: the
    # whole stream can arrive while the page's timers wait).
    fields = {"workers": "1", "max-tokens": "250", "temperature": "0"}
    # The same run, not stopped: what the server writes for it whole.
    whole = _generated(page_url)
    page = _open(browser, page_url, **fields)
    page.click("#start")
    page.wait_for_function("document.querySelector('#status').textContent === 'Done.'", timeout=120_000)
    page.close()
    whole = _generated(page_url) - whole
    # The server wrote fewer tokens for a stopped run. The stop races a second of streaming:
    # on a loaded machine the abort can reach the engine after the last step, so up to three
    # tries (each still checks that the page and the server stopped).
    for _ in range(3):
        generated = _stopped_run(browser, page_url, fields)
        if generated < whole:
            break
    assert generated < whole, (generated, whole)
    request = urllib.request.Request(page_url + "/v1/completions", json.dumps(
        {"model": model_path("llama"), "prompt": "Let x", "max_tokens": 3, "temperature": 0}).encode(),
        {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert len(json.loads(response.read())["choices"]) == 1


def test_a_bad_field_shows_the_servers_message(browser, page_url):
    page = _open(browser, page_url, workers="99")
    page.click("#start")
    page.wait_for_selector("#error:not([hidden])", timeout=60_000)
    error = page.inner_text("#error")
    assert error.startswith("400: hogwild_workers:") and "1..16" in error, error
    page.close()


def test_the_page_loads_nothing_from_the_internet(page_url):
    html = urllib.request.urlopen(page_url + "/hogwild", timeout=30).read().decode()
    assert "http://" not in html and "https://" not in html
    for name in ("app.js", "style.css"):
        text = urllib.request.urlopen(f"{page_url}/hogwild/static/{name}", timeout=30).read().decode()
        assert "http://" not in text and "https://" not in text and "import " not in text
