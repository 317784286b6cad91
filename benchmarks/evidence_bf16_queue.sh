#!/usr/bin/env bash
# The bf16-mixed evidence queue (issues 15-18) on this machine class (2 cores): each step is a resumable
# `zo compare` (finished runs are reused, cut-off ones resume), two runs at a time (local Ray, one thread per run).
#   RESULTS=benchmarks/results setsid nohup bash benchmarks/evidence_bf16_queue.sh > evidence.log 2>&1 &
cd "$(dirname "$0")/.."
source benchmarks/evidence_env.sh
while [ -n "${WAIT_PID:-}" ] && kill -0 "$WAIT_PID" 2>/dev/null; do sleep 20; done

# 1. FZOO's own lr on SST-2 dev (seed 0; the final dev loss decides, test is not looked at)
PILOT="$RESULTS/fzoo-lr-bf16-smollm2-cpu"
step --methods fzoo-lr1e-4,fzoo-lr3e-4,fzoo-lr1e-3,fzoo-lr3e-3 --tasks sst2 --seeds 1 --reference fzoo-lr1e-4 \
  --experiment zo-fzoo-lr --out "$PILOT"
FZOO=$("$PY" - "$PILOT" <<'PY'
import json, sys, pathlib
best = min((json.loads(p.read_text())["final_dev_loss"], p.parts[-3])
           for p in pathlib.Path(sys.argv[1]).glob("runs/sst2/*/seed0/summary.json"))
print(best[1])
PY
)
[ -n "$FZOO" ] || { echo "no finished FZOO pilot run: stopping"; exit 1; }
echo "FZOO label chosen on dev loss: $FZOO"
# 2. SST-2, seeds 0-2 (seed-major: each finished seed is a complete comparison): the reference, FZOO at its pilot
#    lr, the learned policy, and the fp32 control of the precision mode (issue 15)
step --methods "mezo,$FZOO,zo-finetuner-descent,mezo-fp32" --tasks sst2 --seeds 3 \
  --experiment zo-evidence-bf16 --out "$RESULTS/evidence-bf16-smollm2-cpu"
# 3. seeds 3-4 of the bf16-mixed rows (5 paired seeds)
step --methods "mezo,$FZOO,zo-finetuner-descent" --tasks sst2 --seeds 5 \
  --experiment zo-evidence-bf16 --out "$RESULTS/evidence-bf16-smollm2-cpu"
# 4. CurvZO on the same seeds
step --methods "mezo,$FZOO,zo-finetuner-descent,curvzo" --tasks sst2 --seeds 5 \
  --experiment zo-evidence-bf16 --out "$RESULTS/evidence-bf16-smollm2-cpu"
