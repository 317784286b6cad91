#!/usr/bin/env bash
# Third pass of the bf16-mixed evidence queue (issues 16, 17): the ablation's two missing arms — the random-init
# ZO Fine-tuner policy (the paper network, no meta-training) and the `paper` profile meta-trained on COPA+TREC+WiC —
# on SST-2 and MR (both unseen by every policy), and the zero-shot rows, 5 paired seeds, same protocol and configs
# as the earlier passes (benchmarks/evidence_env.sh). Resumable: rerun it and finished runs are reused.
#   RESULTS=benchmarks/results setsid nohup bash benchmarks/evidence_round3_queue.sh > evidence.log 2>&1 &
cd "$(dirname "$0")/.."
source benchmarks/evidence_env.sh
OUT="$RESULTS/evidence-bf16-smollm2-cpu"
PILOT=benchmarks/results/meta-pilot
# the random-init policy (seconds) and the paper-profile policy (the pilot's command, ~6 min, one core) — in the
# background, while the first step's runs hold the cores; the paper arm waits for it
[ -f "$PILOT/random-init-seed0/policy/policy.json" ] ||
  "$PY" benchmarks/random_policy.py smollm2-135m "$PILOT/random-init-seed0/policy"
if [ ! -f "$PILOT/paper-copa-trec-wic/policy/policy.json" ]; then
  "$PY" -m pipelines.cli meta-train --model smollm2-135m --tasks copa,trec,wic --profile paper --epochs 1 --restart 3 \
    --steps-per-epoch 3 --num-train 200 --num-dev 48 --batch-size 16 --lr-llm 1e-3 --no-tracking --no-progress \
    --out-dir "$PILOT/paper-copa-trec-wic" --json > "$PILOT/paper-copa-trec-wic/meta_train.json" 2> "$PILOT/paper-copa-trec-wic/meta_train.log" &
  META=$!
fi
# 1. random-init policy on SST-2, the zero-shot rows (cheap: evaluation only), random-init on MR
step --methods "mezo,zo-finetuner-random" --tasks sst2 --seeds 5 --experiment zo-evidence-bf16 --out "$OUT"
step --methods "mezo,zero-shot" --tasks sst2,mr --seeds 5 --experiment zo-evidence-bf16 --out "$OUT"
step --methods "mezo,zo-finetuner-random" --tasks sst2,mr --seeds 5 --experiment zo-evidence-bf16 --out "$OUT"
# 3. the paper profile on SST-2, then MR
[ -n "${META:-}" ] && wait "$META"
step --methods "mezo,zo-finetuner-paper" --tasks sst2 --seeds 5 --experiment zo-evidence-bf16 --out "$OUT"
step --methods "mezo,zo-finetuner-paper" --tasks sst2,mr --seeds 5 --experiment zo-evidence-bf16 --out "$OUT"
