"""Golden 5-step MeZO loss trajectories on locally built tiny LMs (tier d).

The JSON pins (L+, L−) of each step for a fixed seed, batch and config; any
change to direction generation, the fused update, the scorer or the tiny
fixtures shows up here.  Regenerate deliberately with
``ZO_REGEN_GOLDEN=1 pytest tests/test_golden.py`` and say why in the commit.
"""
import json
import os
from pathlib import Path

import pytest
import torch

import zoplatform
from zoplatform.models import load_model
from zoplatform.objectives import make_scorer
from zoplatform.types import Example

GOLDEN = Path(__file__).parent / "golden" / "mezo_tiny.json"
EXAMPLES = [
    Example("a gripping , funny film It was", (" terrible", " great"), 1),
    Example("dull and far too long It was", (" terrible", " great"), 0),
    Example("the cast is wonderful It was", (" terrible", " great"), 1),
    Example("a mess from start to finish It was", (" terrible", " great"), 0),
]


def trajectory(spec: str, direction: str) -> list[list[float]]:
    model, tok = load_model(spec, seed=0)
    scorer = make_scorer(model, tok)
    opt = zoplatform.optimizer("mezo", model.named_parameters(), lr=5e-3, eps=1e-2, seed=1, direction=direction,
                               no_decay=zoplatform.no_decay_names(model))
    with torch.inference_mode():
        for _ in range(5):
            opt.step(lambda: scorer.loss(EXAMPLES))
    return [list(r.losses) for r in opt.trajectory.records]


CASES = [(s, d) for s in ("tiny:llama", "tiny:opt", "tiny:gpt2") for d in ("gaussian", "rademacher", "pool")]


def test_golden_trajectories():
    got = {f"{s}/{d}": trajectory(s, d) for s, d in CASES}
    if os.environ.get("ZO_REGEN_GOLDEN"):  # deliberate only: a missing file fails below, it is never written silently
        GOLDEN.write_text(json.dumps(got, indent=1))
    assert GOLDEN.is_file(), f"{GOLDEN} is missing: generate it with ZO_REGEN_GOLDEN=1 and commit it"
    want = json.loads(GOLDEN.read_text())
    for key, losses in got.items():
        flat = [x for pair in losses for x in pair]
        assert flat == pytest.approx([x for pair in want[key] for x in pair], rel=1e-5, abs=1e-6), key
