#!/usr/bin/env bash
# The whole suite on another vLLM release: builds it once (scripts/build_vllm.sh, cached outside the repo),
# then runs the tests in its venv. Usage: bash scripts/test_on_vllm.sh 0.34.0 [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${1:?usage: test_on_vllm.sh VERSION [pytest args]}"; shift
bash scripts/build_vllm.sh "$VERSION"
VENV="${VLLM_HOGWILD_CACHE:-$HOME/.cache/vllm-hogwild}/vllm-$VERSION/venv"
"$VENV/bin/python" -m pip install -q --no-deps -e .  # this checkout, whichever it is
. "$VENV/bin/activate"
exec python -m pytest -q tests "$@"
