#!/usr/bin/env bash
# Second pass of the bf16-mixed evidence queue (issues 16-18): 5 paired seeds on SST-2, then a second learnable
# task picked by a short pilot on DEV data (zero-shot vs MeZO seed 0; the test split is not looked at), then
# FZOO, MeZO and the learned policy on it.  Same protocol and configs as evidence_bf16_queue.sh; each step is a
# resumable `zo compare` (finished runs are reused, cut-off ones resume), two runs at a time, one thread each.
#   RESULTS=benchmarks/results setsid nohup bash benchmarks/evidence_round2_queue.sh > evidence.log 2>&1 &
cd "$(dirname "$0")/.."
source benchmarks/evidence_env.sh
OUT="$RESULTS/evidence-bf16-smollm2-cpu"

# 1. SST-2 to 5 paired seeds for the bf16-mixed rows
step --methods "mezo,fzoo-lr3e-3,zo-finetuner-descent" --tasks sst2 --seeds 5 --experiment zo-evidence-bf16 --out "$OUT"
# 2. the task pilot: zero-shot on the four pool tasks, MeZO seed 0 on MR and CR (its runs are seed 0 of step 3)
step --methods zero-shot --reference zero-shot --tasks mr,cr,subj,mpqa --seeds 1 --experiment zo-task-pilot --out "$RESULTS/task-pilot-bf16-smollm2-cpu"
step --methods mezo --tasks mr,cr --seeds 1 --experiment zo-evidence-bf16 --out "$OUT"
TASK=$("$PY" - "$RESULTS/task-pilot-bf16-smollm2-cpu" "$OUT" <<'PY'
import json, sys, pathlib
# learnable = MeZO's best dev accuracy above the zero-shot model's dev accuracy; the larger gain wins
pilot, out = map(pathlib.Path, sys.argv[1:])
gain = {}
for t in ("mr", "cr"):
    z = json.loads((pilot / f"runs/{t}/zero-shot/seed0/summary.json").read_text())
    m = json.loads((out / f"runs/{t}/mezo/seed0/summary.json").read_text())
    gain[t] = m["best_dev_accuracy"] - z["best_dev_accuracy"]
    print(f"pilot {t}: zero-shot dev {z['best_dev_accuracy']:.3f}, MeZO seed 0 best dev {m['best_dev_accuracy']:.3f}",
          file=sys.stderr)
print(max(gain, key=gain.get))
PY
)
[ -n "$TASK" ] || { echo "task pilot failed: stopping"; exit 1; }
echo "second task chosen on dev: $TASK"
# 3. the second task, 5 paired seeds: MeZO and FZOO (lr from the SST-2 dev pilot), then the learned policy
step --methods "mezo,fzoo-lr3e-3" --tasks "$TASK" --seeds 5 --experiment zo-evidence-bf16 --out "$OUT"
step --methods "mezo,fzoo-lr3e-3,zo-finetuner-descent" --tasks "$TASK" --seeds 5 --experiment zo-evidence-bf16 --out "$OUT"
# 4. CurvZO on SST-2
step --methods "mezo,fzoo-lr3e-3,zo-finetuner-descent,curvzo" --tasks sst2 --seeds 5 --experiment zo-evidence-bf16 --out "$OUT"
