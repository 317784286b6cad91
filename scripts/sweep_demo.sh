#!/usr/bin/env bash
# Set up, then run a small sweep: a few CurvZO trials on SST-2 with the packaged SmolLM2-135M on CPU, through a
# local Ray (Tune + Optuna TPE, ASHA on forward passes), tracked in a local SQLite MLflow store; ends with the
# command that opens the MLflow UI on it.
#   METHOD (curvzo)  MODEL (smollm2-135m)  TRIALS (4)  STEPS (100)  ZO_SKIP_SETUP=1 skips scripts/setup.sh
#   Extra arguments go to `zo sweep` (e.g. --num-dev 50). Ctrl-C stops it; it prints the --resume command.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${ZO_SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
# shellcheck source=scripts/data_fallback.sh
. scripts/data_fallback.sh "$@"  # no task data found: the in-repo sample, with a note
METHOD=${METHOD:-curvzo}
MODEL=${MODEL:-smollm2-135m}
CPUS=$(python -c "import os; print(max(1, len(os.sched_getaffinity(0)) // 2))")
NAME=${NAME:-demo-$METHOD-$(date +%Y%m%d-%H%M%S)}
zo sweep --method "$METHOD" --task sst2 --model "$MODEL" --trials "${TRIALS:-4}" --steps "${STEPS:-100}" \
  --backend ray --scheduler asha --resources "cpu=$CPUS" --max-concurrent 2 \
  --batch-size 16 --eval-every 25 --num-train 1000 --num-dev 100 --num-test 200 --set zero_shot=false \
  --storage "$PWD/sweeps" --name "$NAME" --tracking-uri "sqlite:///$PWD/mlflow.db" --experiment zo-sweep-demo "$@"
echo
echo "Sweep '$NAME': results, best_config.yaml and plots in sweeps/$NAME/results (also parent-run artifacts)."
echo "Start the MLflow UI on it, then open the links zo sweep printed above (MLflow sweep: the parent run with the"
echo "results table; MLflow trials, best first: the trials sorted by the objective):"
echo "  .venv/bin/mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db   # serves http://127.0.0.1:5000"
