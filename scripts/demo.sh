#!/usr/bin/env bash
# README command 1: set up, then run the hogwild demo on the embedded SmolLM2-135M-Instruct.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec vllm-hogwild demo "$@"
