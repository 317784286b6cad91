#!/usr/bin/env bash
# Rebuild the evidence reports from the finished runs (runs nothing; seconds): the matrix against MeZO
# (benchmarks/results/evidence-bf16-smollm2-cpu/results.md, also written into the evidence block of docs/evidence.md) and
# issue 17's ablation against the random-init policy (ablation-vs-random-bf16-smollm2-cpu/, whose runs/ links to the
# same runs).
# Run it from the checkout the runs were made in (their configs hold its absolute policy paths).
#   RESULTS=benchmarks/results bash benchmarks/evidence_report.sh
cd "$(dirname "$0")/.."
source benchmarks/evidence_env.sh
OUT="$RESULTS/evidence-bf16-smollm2-cpu"
ABL="$RESULTS/ablation-vs-random-bf16-smollm2-cpu"
ARMS=zo-finetuner-descent,zo-finetuner-random,zo-finetuner-paper
TASKS=${TASKS:-sst2,mr,cr}
report() { "$PY" -m pipelines.cli compare "${COMMON[@]}" --report-only --seeds 5 --tasks "$TASKS" --experiment zo-evidence-bf16 "$@" >/dev/null; }
report --methods "mezo,sparse-mezo-lr3e-5,curvzo,curvzo-port,loren-lr3e-6,fo,fzoo-lr3e-3,$ARMS,zero-shot,mezo-fp32" --out "$OUT" \
  --update-readme docs/evidence.md --readme-block evidence
mkdir -p "$ABL" && { [ -e "$ABL/runs" ] || ln -s ../evidence-bf16-smollm2-cpu/runs "$ABL/runs"; }
report --methods "zo-finetuner-random,zo-finetuner-descent,zo-finetuner-paper,mezo" --reference zo-finetuner-random --out "$ABL"
echo "reports: $OUT/results.md $ABL/results.md"
