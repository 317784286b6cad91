#!/usr/bin/env bash
# Reproduces the "Results" block of docs/evidence.md on the project's machine class: 2 CPU cores, no GPU.
# SmolLM2-135M (packaged), prompt protocol, all parameters; SST-2, RTE, CB; 2 seeds; 600 forward passes per run
# (300 steps of a two-point method, 100 of LOREN with K=6) on SST-2 and RTE, 200 on CB (long inputs, reduced),
# batch 16, 1000 train / 200 dev / all test examples (CB: 150 / 100 / 56, its train split has 250).
# Cost on 2 cores, one thread per run, two runs at a time: ~20-25 min per SST-2 run, ~75-100 min per RTE run
# (inputs ~4x longer), ~25-30 min per CB run; LOREN and ZO Fine-tuner take ~1.3x MeZO's time; a full pass is
# more than a day. Rerunning resumes: finished runs under benchmarks/out/matrix are reused, cut-off ones continue.
# studies/matrix-fp32.yaml holds the committed runs of this matrix (its compact archive).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/zo ] || bash scripts/setup.sh
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
URI="sqlite:///$PWD/mlflow.db"

# 1. ZO Fine-tuner's policy for the model, once (first-order meta-training on COPA, reduced budget: 6 epochs x 35
#    steps, restart every 2 epochs); registered as zo-policy-smollm2-135m with alias champion.
if ! .venv/bin/python -c "
from mlflow import MlflowClient; MlflowClient('$URI').get_model_version_by_alias('zo-policy-smollm2-135m', 'champion')
" 2>/dev/null; then
  .venv/bin/zo meta-train --model smollm2-135m --tasks copa --epochs 6 --restart 2 --steps-per-epoch 35 \
    --batch-size 8 --num-dev 50 --seed 0 --out-dir benchmarks/out/meta-smollm2-copa --register --tracking-uri "$URI" --json
fi

# 2. every method on every task and seed at 600 forward passes, two runs at a time through a local Ray
.venv/bin/zo compare --model smollm2-135m \
  --methods mezo,sparse-mezo-lr3e-5,curvzo,curvzo-port,curvzo-contrast,loren-lr3e-6,zo-finetuner,fo,zero-shot \
  --tasks sst2,rte,cb --seeds 2 --forward-budget 600 --task-budget cb=200 --eval-points 6 --num-dev 200 \
  --num-test 872 \
  --configs benchmarks/compare_cpu.yaml --backend ray --resources cpu=1 \
  --out benchmarks/out/matrix --tracking-uri "$URI" --update-readme docs/evidence.md "$@"
