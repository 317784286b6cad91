#!/usr/bin/env bash
# Fifth pass (issue 16): the confirmation sweep on a real task, then FZOO on CR.
# 1. `zo sweep --method curvzo --task sst2 ... --confirm-seeds 5`: 6 trials (the space's three defaults first, then
#    three TPE samples; ASHA on forward passes) of 150 steps (300 forward passes: half the evidence budget, so the
#    sweep and its 10 confirmation runs fit one CPU session), ranked on dev accuracy (never test); the best trial and
#    the space's paper default (lr 1e-6) re-run on fresh seeds 1-5 and paired.  SmolLM2-135M, bf16-mixed,
#    Rademacher directions, 1000/200/872 as in the evidence matrix.  Resumable (--resume when its sweep.json exists).
# 2. FZOO (lr 3e-3) on CR, 5 seeds, paired with MeZO (the same step as round 4's last one).
#   RESULTS=benchmarks/results setsid nohup bash benchmarks/evidence_round5_queue.sh > evidence.log 2>&1 &
cd "$(dirname "$0")/.."
source benchmarks/evidence_env.sh
NAME=curvzo-sst2-smollm2-confirm5
RESUME=(); [ -f "$RESULTS/sweeps/$NAME/sweep.json" ] && RESUME=(--resume)
echo "=== $(date -u +%FT%TZ) sweep $NAME ${RESUME[*]}"
"$PY" -m pipelines.cli sweep --method curvzo --task sst2 --model smollm2-135m --trials 6 --steps 150 \
  --eval-every 25 --batch-size 16 --num-train 1000 --num-dev 200 --num-test 872 --backend ray --scheduler asha \
  --resources cpu=1 --max-concurrent 2 --storage "$RESULTS/sweeps" --name "$NAME" --tracking-uri "$URI" \
  --experiment zo-sweep-confirm --set precision=bf16-mixed --set direction=rademacher --confirm-seeds 5 \
  "${RESUME[@]}" --json | tail -1 | cut -c1-400
OUT="$RESULTS/evidence-bf16-smollm2-cpu"
step --methods "mezo,fzoo-lr3e-3" --tasks cr --seeds 5 --experiment zo-evidence-bf16 --out "$OUT"
