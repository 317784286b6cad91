#!/usr/bin/env bash
# Set up and run the main job on embedded defaults: a short MeZO fine-tune of the
# packaged SmolLM2-135M on SST-2 (CPU), tracked in a local SQLite MLflow store.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
# shellcheck source=scripts/data_fallback.sh
. scripts/data_fallback.sh "$@"  # no task data found: the in-repo sample, with a note
zo finetune --model smollm2-135m --task sst2 --method mezo --steps 200 --lr 1e-5 --eps 1e-3 \
  --batch-size 16 --eval-every 50 --num-train 1000 --num-dev 200 --num-test 500 --experiment zo-demo "$@"
echo
echo "Open the MLflow UI on these runs with:"
echo "  .venv/bin/mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db   # then browse http://127.0.0.1:5000"
