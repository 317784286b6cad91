#!/usr/bin/env bash
# Sixth pass (issue 16): the matrix's remaining rows at 5 paired seeds on the three learnable tasks, in the evidence
# protocol (benchmarks/evidence_env.sh; bf16-mixed, Rademacher for ZO): S-MeZO, CurvZO (default and the port
# profile), LOREN and the first-order baseline, each paired with the MeZO runs already on disk (reused, not re-run).
# Left after 2026-12-03: LOREN, fo, the port profile on MR/CR (30 runs; LOREN ~29 min a run in bf16-mixed, the
# others ~7-12): about 6 hours of this 2-core machine at two at a time.  Resumable: rerun it.
#   RESULTS=benchmarks/results setsid nohup bash benchmarks/evidence_round6_queue.sh > evidence.log 2>&1 &
cd "$(dirname "$0")/.."
source benchmarks/evidence_env.sh
OUT="$RESULTS/evidence-bf16-smollm2-cpu"
# Ordered so that whole rows land first: CurvZO's MR/CR (the cheapest runs: 0.58x MeZO's wall time), then S-MeZO,
# LOREN and fo (SST-2, then MR/CR), then the CurvZO port profile on MR/CR.
S=(--seeds 5 --experiment zo-evidence-bf16 --out "$OUT")
step --methods "mezo,curvzo" --tasks "mr,cr" "${S[@]}"
step --methods "mezo,sparse-mezo-lr3e-5" --tasks "sst2,mr,cr" "${S[@]}"
for arm in loren-lr3e-6 fo; do  # SST-2 first: a session that stops early still leaves whole 5-seed cells
  step --methods "mezo,$arm" --tasks sst2 "${S[@]}"
done
for arm in loren-lr3e-6 fo; do
  step --methods "mezo,$arm" --tasks "mr,cr" "${S[@]}"
done
step --methods "mezo,curvzo-port" --tasks "mr,cr" "${S[@]}"
