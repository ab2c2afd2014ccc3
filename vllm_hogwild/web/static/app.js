// The Hogwild! live view: one streaming chat completion with W workers, one column per worker;
// in "think while answering" mode, the answer and the thoughts side by side (its one choice's
// content and reasoning deltas). Talks to the server's own OpenAI-compatible API; the flag
// travels in vllm_xargs.
"use strict";

const NAMES = ["Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi",
               "Ivan", "Judy", "Mallory", "Niaj", "Olivia", "Peggy", "Rupert", "Sybil"];
const $ = (id) => document.getElementById(id);
let controller = null;

function escapeHtml(text) {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

// Step headers (**Alice [2]:**), redundancy checks and the final answer, set apart.
function render(text) {
  return escapeHtml(text)
    .replace(/\*\*([^*\n]+?) \[(\d+)\]:\*\*/g, '<span class="step-header">$1 [$2]</span>')
    .replace(/Quick check: is someone else already doing what I am doing\? \(yes\/no\):/g,
             '<span class="check">$&</span>')
    .replace(/\*\*Final answer\.\*\*/g, '<span class="final">Final answer.</span>');
}

function columns(titles) {
  const view = $("workers-view");
  view.innerHTML = "";
  const cols = [];
  for (let w = 0; w < titles.length; w++) {
    const col = document.createElement("section");
    col.className = "worker";
    col.dataset.worker = String(w);
    col.innerHTML = `<h2>${escapeHtml(titles[w])} <small>0 tokens</small></h2><div class="text"></div>`;
    view.appendChild(col);
    cols.push({ col, text: "", tokens: 0 });
  }
  return cols;
}

function setStatus(text, stopped = false) {
  $("status").textContent = text;
  $("status").classList.toggle("stopped", stopped);
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

async function servedModel() {
  const response = await fetch("/v1/models");
  const body = await response.json();
  return body.data[0].id;
}

async function start(event) {
  event.preventDefault();
  $("error").hidden = true;
  $("answer").hidden = true;
  const thinking = $("mode").value === "async";
  const workers = thinking ? 2 : Number($("workers").value);
  const request = {
    messages: [{ role: "user", content: $("problem").value }],
    max_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value),
    repetition_penalty: Number($("repetition-penalty").value),
    stream: true,
    stream_options: { include_usage: true },
    vllm_xargs: {
      hogwild_workers: Number.isInteger(workers) ? workers : $("workers").value,
      hogwild_layout: $("layout").value,
      hogwild_protocol: true,
      // a redundancy check within the default 256 tokens (benchmarks/demo_defaults.py)
      hogwild_check_tokens: 128,
    },
  };
  if (thinking) {
    request.vllm_xargs = { hogwild_workers: 2, hogwild_async: true };
  } else if (Number.isInteger(workers) && workers >= 1 && workers <= NAMES.length) {
    request.vllm_xargs.hogwild_names = NAMES.slice(0, workers);
  }
  controller = new AbortController();
  $("start").disabled = true;
  $("stop").disabled = false;
  setStatus("Starting…");
  const count = Number.isInteger(workers) && workers > 0 && workers <= 64 ? workers : 0;
  const cols = columns(thinking ? ["Answer", "Thoughts"]
                                : Array.from({ length: count }, (_, w) => NAMES[w] || `Worker ${w}`));
  const began = performance.now();
  let total = 0;
  let steps = 0;
  try {
    request.model = await servedModel();
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request),
      signal: controller.signal,
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      const error = body.error || {};
      showError(`${response.status}: ${error.message || response.statusText}`);
      setStatus("Refused.");
      return;
    }
    setStatus("Running…");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let pending = false;
    const paint = () => {
      pending = false;
      for (const c of cols) {
        c.col.querySelector(".text").innerHTML = render(c.text);
        c.col.querySelector("small").textContent = `${c.tokens} tokens`;
      }
      const seconds = (performance.now() - began) / 1000;
      $("tokens-per-s").textContent = (total / Math.max(seconds, 1e-3)).toFixed(1);
      $("steps").textContent = String(steps);
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const event of events) {
        const line = event.trim();
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const chunk = JSON.parse(line.slice(6));
        for (const choice of chunk.choices || []) {
          // A choice's content is its worker's; think while answering sends the thoughts as
          // choice 0's reasoning.
          const parts = [[choice.index, choice.delta && choice.delta.content],
                         [1, thinking && choice.delta && choice.delta.reasoning]];
          for (const [index, delta] of parts) {
            const c = cols[index];
            if (!c || !delta) continue;
            c.text += delta;
            c.tokens += 1;
            total += 1;
            steps = Math.max(steps, c.tokens);  // each engine step writes one token per running worker
          }
        }
        if (chunk.usage) total = chunk.usage.completion_tokens;
        const answers = chunk.hogwild && chunk.hogwild.final_answers;
        if (answers && answers[0] !== null && answers[0] !== undefined) {
          $("answer-text").textContent = answers[0];
          $("answer").hidden = false;
        }
      }
      if (!pending) {
        pending = true;
        requestAnimationFrame(paint);
      }
    }
    paint();
    setStatus("Done.");
  } catch (error) {
    if (error.name === "AbortError") {
      setStatus("Stopped: the stream was closed and the server aborted the group.", true);
    } else {
      showError(String(error));
      setStatus("Failed.");
    }
  } finally {
    controller = null;
    $("start").disabled = false;
    $("stop").disabled = true;
  }
}

$("run").addEventListener("submit", start);
$("stop").addEventListener("click", () => {
  if (controller) controller.abort();
});
