#!/usr/bin/env bash
# Sixth pass (issue 16): the matrix's remaining rows at 5 paired seeds on the three learnable tasks, in the evidence
# protocol (benchmarks/evidence_env.sh; bf16-mixed, Rademacher for ZO): S-MeZO, CurvZO (default and the port
# profile), LOREN and the first-order baseline, each paired with the MeZO runs already on disk (reused, not re-run).
# 60 runs of ~12 min at two at a time: about 6 hours of this 2-core machine.  Resumable: rerun it.
#   RESULTS=benchmarks/results setsid nohup bash benchmarks/evidence_round6_queue.sh > evidence.log 2>&1 &
cd "$(dirname "$0")/.."
source benchmarks/evidence_env.sh
OUT="$RESULTS/evidence-bf16-smollm2-cpu"
for task in sst2 mr cr; do
  step --methods "mezo,curvzo,curvzo-port" --tasks "$task" --seeds 5 --experiment zo-evidence-bf16 --out "$OUT"
  step --methods "mezo,sparse-mezo-lr3e-5,loren-lr3e-6,fo" --tasks "$task" --seeds 5 --experiment zo-evidence-bf16 \
    --out "$OUT"
done
