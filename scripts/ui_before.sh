#!/usr/bin/env bash
# "Before" screenshots for issue 19: the landed code before the browsing work (f06648b), tiny store, Chromium.
set -uo pipefail
OUT=${1:-/tmp/ui_before}; mkdir -p "$OUT"
REPO=$(cd "$(dirname "$0")/.." && pwd)
[ -d /work/before ] || (cd "$REPO" && git worktree add --detach /work/before f06648b >/dev/null)
cd /work/before && ln -sfn "$REPO/.venv" .venv
. "$REPO/.venv/bin/activate"
export PYTHONPATH=/work/before OMP_NUM_THREADS=1
S=/tmp/before_store; rm -rf $S; mkdir -p $S
URI=sqlite:///$S/mlflow.db
TINY="--model tiny:llama --batch-size 8 --num-train 32 --num-dev 16 --num-test 16"
FT=$(python -m pipelines.cli finetune $TINY --task sst2 --method mezo --steps 10 --eval-every 5 --tracking-uri $URI --experiment zo-finetune --out-dir $S/ft --json 2>/dev/null | tail -1)
python -m pipelines.cli compare $TINY --methods mezo,fzoo --tasks sst2 --seeds 1 --forward-budget 20 --eval-points 2 --tracking-uri $URI --experiment zo-compare --out $S/cmp --json >/dev/null 2>&1
RID=$(python -c "import json,sys; print(json.loads(sys.argv[1])['mlflow_run_id'])" "$FT")
mlflow ui --backend-store-uri $URI --port 5055 > $S/ui.log 2>&1 &
UIPID=$!
for i in $(seq 60); do curl -s -o /dev/null http://127.0.0.1:5055/ && break; sleep 1; done
shot() { chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,900 --virtual-time-budget=20000 --screenshot="$OUT/$1" "$2" >/dev/null 2>&1; }
shot before_experiment_click.png "http://127.0.0.1:5055/#/experiments/1"
shot before_finetune_run.png "http://127.0.0.1:5055/#/experiments/1/runs/$RID"
shot before_compare_runs.png "http://127.0.0.1:5055/#/experiments/2/runs?workflowType=machine_learning"
kill $UIPID
ls -la $OUT
