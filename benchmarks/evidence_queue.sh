#!/usr/bin/env bash
# The evidence queue of issues 15-18 on this machine class (2 cores): each step is a resumable `zo compare`
# (finished runs are reused, cut-off ones resume), two runs at a time (local Ray, one thread per run).
# Run it from a checkout (the code under test) with RESULTS pointing where the runs should land:
#   RESULTS=benchmarks/results setsid nohup bash benchmarks/evidence_queue.sh > evidence.log 2>&1 &
# WAIT_PID: start only when that process has ended (a queue already running).
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD"
PY=${PY:-.venv/bin/python}
RESULTS=${RESULTS:-benchmarks/results}
URI=${URI:-sqlite:///$PWD/mlflow.db}
while [ -n "${WAIT_PID:-}" ] && kill -0 "$WAIT_PID" 2>/dev/null; do sleep 30; done
COMMON=(--model smollm2-135m --forward-budget 600 --eval-points 6 --num-dev 200 --num-test 872
        --configs benchmarks/compare_evidence.yaml --backend ray --resources cpu=1 --tracking-uri "$URI" --json)
M=(--experiment zo-evidence --out "$RESULTS/evidence-smollm2-cpu")
step() { echo "=== $(date -u +%FT%TZ) $*"; "$PY" -m pipelines.cli compare "${COMMON[@]}" "$@" | tail -1; }

# 1. FZOO's own lr on SST-2 dev (seed 0; the final dev loss decides, test is not looked at)
step --methods fzoo-lr1e-5,fzoo-lr3e-5,fzoo-lr1e-4,fzoo-lr3e-4,fzoo-lr1e-3 --tasks sst2 --seeds 1 \
  --reference fzoo-lr1e-5 --experiment zo-fzoo-lr --out "$RESULTS/fzoo-lr-smollm2-cpu"
# 2. which short binary tasks SmolLM2-135M learns at this budget: zero-shot and MeZO seed 0 (these runs are the
#    matrix's seed-0 runs of the tasks kept)
step --methods mezo,zero-shot --tasks mr,cr,subj,mpqa --seeds 1 "${M[@]}"
# 3. the matrix on SST-2, 5 paired seeds
step --methods mezo,curvzo,loren,sparse-mezo,curvzo-port,fo,zero-shot --tasks sst2 --seeds 5 "${M[@]}"
