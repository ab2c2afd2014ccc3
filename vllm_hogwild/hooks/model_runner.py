"""Model runner: worker requests are registered with the planner, which the attention backends ask
for views; a forced text's tokens join the worker's output in the step that forced its first.

Patches what the installed release's adapter lists: ``model_runner_v1`` (vLLM 0.32's V1
runner) or ``model_runner_v2`` (Model Runner V2, vLLM 0.34). Each adapter does the same four
things at its runner's own points: register a step's new worker requests with the planner
(``runtime.planner``) and tell it which finished; say which requests this step's batch rows
are (``runtime.set_runner``); and append a forced text's remaining tokens (``take_then`` of
the protocol's logits processor) to the worker's tokens, both the runner's copy (what it
feeds the model next step) and what the scheduler is told was sampled.
"""

from __future__ import annotations

import importlib


def install() -> None:
    from vllm_hogwild import releases

    importlib.import_module(releases.adapter("model_runner")).install()
