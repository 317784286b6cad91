"""The ablation's 'random-init policy' (issue 17): ZO Fine-tuner's paper network at its initialisation,
no meta-training, for a base model — the policy `zo meta-train --profile paper --seed S` starts from.

    python benchmarks/random_policy.py smollm2-135m OUT_DIR [--seed 0] [--batch-size 16]
"""
from __future__ import annotations

import argparse

from meta.policy import PerturbationPolicy
from zoplatform.models import load_model
from zoplatform.params import model_blocks
from zoplatform.policy import embedding_block_names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16, help="embedding rows = 15 x batch (the paper's rule)")
    a = ap.parse_args()
    model, _ = load_model(a.model)
    emb = embedding_block_names(model)
    layout = [(b.name, list(b.param.shape), b.name in emb) for b in model_blocks(model)]
    policy = PerturbationPolicy(layout, base_model=a.model, embedding_rows=15 * a.batch_size, seed=a.seed)
    print(policy.save(a.out, meta={"profile": "random-init", "meta_steps": 0, "seed": a.seed}))


if __name__ == "__main__":
    main()
