#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, plus the import-layering contract.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
lint-imports
python -m pytest "$@"
