#!/usr/bin/env bash
# Sixth pass (issue 16): the matrix's remaining rows at 5 paired seeds on the three learnable tasks, in the evidence
# protocol (benchmarks/evidence_env.sh; bf16-mixed, Rademacher for ZO): S-MeZO, CurvZO (default and the port
# profile), LOREN and the first-order baseline, each paired with the MeZO runs already on disk (reused, not re-run).
# Finished 2026-12-06 05:37 (the last runs, LOREN seed 4 on MR and CR, resumed from their checkpoints on the AMD EPYC
# host without AMX, ~20 s a step).  Rerunning it reuses every finished run (seconds a step); after an interruption an
# fo run starts again and the ZO runs continue from their checkpoints.
#   RESULTS=benchmarks/results setsid nohup bash benchmarks/evidence_round6_queue.sh > evidence.log 2>&1 &
cd "$(dirname "$0")/.."
source benchmarks/evidence_env.sh
OUT="$RESULTS/evidence-bf16-smollm2-cpu"
# Ordered so that whole cells land first: fo and the CurvZO port profile on MR (one call: ten runs, two at a time),
# the port profile on CR (~8 min a run), fo on CR and SST-2 (~21 min a run), then LOREN (SST-2, then MR/CR).
# LOREN is last because it is the dearest: 12.9 s a step in bf16-mixed here, 8.2x its own six forwards, of which
# ~7 s is its 18 Gaussian direction passes a step (3K, as in the authors' code; `zo bench step-cost --methods
# mezo,loren --precisions bf16-mixed`, 2026-12-03), i.e. ~29 min a 600-forward run.
S=(--seeds 5 --experiment zo-evidence-bf16 --out "$OUT")
step --methods "mezo,curvzo" --tasks "mr,cr" "${S[@]}"
step --methods "mezo,sparse-mezo-lr3e-5" --tasks "sst2,mr,cr" "${S[@]}"
step --methods "mezo,fo,curvzo-port" --tasks mr "${S[@]}"
step --methods "mezo,curvzo-port" --tasks cr "${S[@]}"
step --methods "mezo,fo" --tasks cr "${S[@]}"
step --methods "mezo,fo" --tasks sst2 "${S[@]}"
step --methods "mezo,loren-lr3e-6" --tasks sst2 "${S[@]}"
step --methods "mezo,loren-lr3e-6" --tasks "mr,cr" "${S[@]}"
