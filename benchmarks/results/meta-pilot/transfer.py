"""Does the descent policy's held-out gain transfer?  The meta-validation metric on more held-out examples.

The pilot's meta-validation had 48 held-out examples per task, too few to measure COPA's and WiC's signal (n/m).
This script scores the committed policies (descent, paper, random init) with the same metric
(``meta.descent.MetaValidation``: min(a, 2a − q) − 1 over σ = 1, closed form, batch 16) on
  * larger held-out sets of the meta-training tasks COPA and WiC (the pilot's dev sample extended: seed 0, the same
    200 train examples excluded, the first 48 are the pilot's), and
  * the unseen tasks of the ablation, SST-2, MR and CR: the first N of the fine-tunes' dev sample at seed 0 (never
    their test sets) — the closed-form model's prediction of the one-step descent gain the fine-tunes could see.
Everything at the base weights, fp32, one thread.  The MLP policies' loss input (``policy_sigma_at``) is the mean
held-out loss over all the sets scored here, meta and unseen (meta-training uses its meta-val sets' mean).
The defaults are the committed run's (transfer.txt/.json, 463 s here); from the repo root:
  PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results/meta-pilot/transfer.py \
      > benchmarks/results/meta-pilot/transfer.txt
"""
import argparse
import json
import time
from pathlib import Path

import torch

from meta.descent import DescentModel, MetaValidation
from meta.policy import policy_sigma_at
from meta.policy import load_any
from zoplatform.data import resolve_data_dir, sample_splits
from zoplatform.models import load_model
from zoplatform.objectives import make_scorer
from zoplatform.params import model_blocks
from zoplatform.policy import effective_counts, embedding_block_names

HERE = Path(__file__).parent
POLICIES = {"descent": HERE / "descent-copa-trec-wic/policy", "paper": HERE / "paper-copa-trec-wic/policy",
            "random-init": HERE / "random-init-seed0/policy"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--meta", default="copa,trec,wic")
    ap.add_argument("--meta-n", type=int, default=192)
    ap.add_argument("--unseen", default="sst2,mr,cr")
    ap.add_argument("--unseen-n", type=int, default=192)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json", default=str(HERE / "transfer.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    model, tok = load_model("smollm2-135m", dtype="float32", protocol="prompt", seed=0)
    model.eval()
    scorer = make_scorer(model, tok, protocol="prompt", max_length=2048)
    blocks = model_blocks(model)
    emb = embedding_block_names(model)
    counts = torch.tensor(effective_counts([tuple(b.param.shape) for b in blocks], [b.name in emb for b in blocks],
                                           15 * args.batch), dtype=torch.float64)
    dd = resolve_data_dir(None)
    sets = {}
    for t in filter(None, args.meta.split(",")):  # the pilot's split: 200 meta-train examples, then held-out
        sets[("meta", t)] = sample_splits(t, data_dir=dd, num_train=200, num_dev=args.meta_n, num_test=0,
                                          seed=0).dev
    for t in filter(None, args.unseen.split(",")):  # the fine-tunes' split at seed 0: its dev sample
        sets[("unseen", t)] = sample_splits(t, data_dir=dd, num_train=1000, num_dev=200, num_test=0,
                                            seed=0).dev[:args.unseen_n]
    dm = DescentModel(lr=1e-5, batch=args.batch, margin=2.0)
    mv = MetaValidation(scorer, blocks, {t: ex for (_, t), ex in sets.items()}, args.batch, counts, dm,
                        progress=True)
    loss = float(sum(st.loss * st.count for st in mv.stats) / sum(st.count for st in mv.stats))
    out = {"examples": {t: len(ex) for (_, t), ex in sets.items()}, "kind": {t: k for (k, t) in sets},
           "signal_t": {t: float(st.signal_t()) for t, st in zip(mv.tasks, mv.stats)}, "policies": {},
           "metric": dm.metric_name(), "seconds": None}
    for name, path in POLICIES.items():
        sigma = policy_sigma_at(load_any(path), blocks, loss)
        out["policies"][name] = mv.evaluate(sigma)
    out["seconds"] = round(time.time() - t0)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"meta-val metric on held-out sets (n examples, signal t = held-out gradient energy / its s.e.), "
          f"{out['seconds']} s")
    print("| task | kind | n | signal t | measurable | " + " | ".join(f"{p} gain" for p in POLICIES) +
          " | descent first-order a−1 | descent cost q |")
    print("|---|---|---|---|---|" + "---|" * (len(POLICIES) + 2))
    for t in mv.tasks:
        d = out["policies"]["descent"]
        print(f"| {t} | {out['kind'][t]} | {out['examples'][t]} | {out['signal_t'][t]:.2f} | "
              f"{'yes' if d['measurable'][t] else 'no'} | " +
              " | ".join(f"{out['policies'][p]['per_task'][t]:+.3f}" for p in POLICIES) +
              f" | {d['first_order_gain'][t]:+.3f} | {d['cost_ratio'][t]:.3f} |")


if __name__ == "__main__":
    main()
