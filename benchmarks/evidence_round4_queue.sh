#!/usr/bin/env bash
# Fourth pass of the bf16-mixed evidence queue (issues 16, 17): the third learnable task, CR (the task pilot's
# runner-up on DEV data: zero-shot dev 0.675 -> MeZO seed 0 best dev 0.830; MR won with 0.555 -> 0.730), for the
# ablation arms (MeZO, the random-init policy, the descent policy; no policy saw CR), its zero-shot row, MR's
# last random-init seed, then the `paper` arm on SST-2/MR/CR and FZOO on CR.  Same protocol and configs as the
# earlier passes (benchmarks/evidence_env.sh); resumable: rerun it and finished runs are reused.
#   RESULTS=benchmarks/results setsid nohup bash benchmarks/evidence_round4_queue.sh > evidence.log 2>&1 &
cd "$(dirname "$0")/.."
source benchmarks/evidence_env.sh
OUT="$RESULTS/evidence-bf16-smollm2-cpu"
# 1. MR's random-init seed 4; CR MeZO seeds 1-4 and the random-init policy (one step: two runs at a time throughout)
step --methods "mezo,zo-finetuner-random" --tasks mr,cr --seeds 5 --experiment zo-evidence-bf16 --out "$OUT"
# 2. the descent policy and the zero-shot row on CR
step --methods "mezo,zo-finetuner-descent,zero-shot" --tasks cr --seeds 5 --experiment zo-evidence-bf16 --out "$OUT"
# 3. the paper profile (2.3e-5 from the random-init policy) on the three tasks, then FZOO on CR
step --methods "mezo,zo-finetuner-paper" --tasks sst2,mr,cr --seeds 5 --experiment zo-evidence-bf16 --out "$OUT"
step --methods "mezo,fzoo-lr3e-3" --tasks cr --seeds 5 --experiment zo-evidence-bf16 --out "$OUT"
