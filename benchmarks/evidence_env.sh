# Sourced by the evidence queues (benchmarks/evidence_*_queue.sh): one protocol for every step — SmolLM2-135M,
# 600 forward passes, 6 dev evaluations on 200 dev examples, 872 test examples, local Ray, one thread per run —
# and `step ARGS…`, one resumable `zo compare` (finished runs are reused, cut-off ones resume).
set -uo pipefail
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD"
PY=${PY:-.venv/bin/python}
RESULTS=${RESULTS:-benchmarks/results}
URI=${URI:-sqlite:///$PWD/mlflow.db}
CONFIGS=${CONFIGS:-benchmarks/compare_evidence_bf16.yaml}
COMMON=(--model smollm2-135m --forward-budget 600 --eval-points 6 --num-dev 200 --num-test 872
        --configs "$CONFIGS" --backend ray --resources cpu=1 --tracking-uri "$URI" --json)
step() { echo "=== $(date -u +%FT%TZ) $*"; "$PY" -m pipelines.cli compare "${COMMON[@]}" "$@" | tail -1 | cut -c1-400; }
