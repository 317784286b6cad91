"""CurvZO: budget-meeting inclusion probabilities, Poisson sampling, the
Horvitz–Thompson estimator's mean, untouched unsampled blocks, replay, the
adaptive budget, the contrast profile's discrimination, report and config errors."""
import math

import pytest
import torch

import zoplatform
from zoplatform.algorithms.curvzo import CurvZO, budget_stats, meet_budget, port_inclusion
from zoplatform.params import blocks_from_named
from zoplatform.rng import step_seed

SIZES = [3, 7, 2, 12, 5, 9]


def make_blocks(sizes=SIZES, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(n, generator=g, dtype=dtype)) for n in sizes]
    return params, blocks_from_named([(f"b{i}", p) for i, p in enumerate(params)])


def uneven_state(method, blocks, scores):
    return method.init(blocks).replace(scores=torch.tensor(scores, dtype=torch.float64))


def test_meet_budget_fills_exactly_and_follows_q():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        n = 3 + trial
        q = torch.rand(n, generator=g, dtype=torch.float64) ** 3
        d = torch.randint(1, 50, (n,), generator=g).double()
        lo = 0.05 if trial % 2 else 0.0
        target = float(d.sum()) * (0.1 + 0.8 * trial / 20)
        pi = meet_budget(q, d, target, lo, 1.0 - lo)
        assert float((d * pi).sum()) == pytest.approx(target, rel=1e-12)
        assert bool((pi >= lo).all() and (pi <= 1.0 - lo).all())
        free = (pi > lo) & (pi < 1.0 - lo)
        if int(free.sum()) > 1:  # π ∝ q where not clipped
            ratio = pi[free] / q[free]
            assert float(ratio.max() / ratio.min()) == pytest.approx(1.0, rel=1e-9)
    assert torch.allclose(meet_budget(torch.zeros(4), torch.ones(4), 2.0), torch.full((4,), 0.5, dtype=torch.float64))


def test_paper_inclusion_meets_the_budget_and_port_underfills():
    _, blocks = make_blocks()
    scores = [1.0, 50.0, 0.2, 3.0, 1.0, 8.0]
    paper = zoplatform.make("curvzo", init_budget=0.4)
    pi = paper.inclusion(uneven_state(paper, blocks, scores), blocks)
    d = torch.tensor(SIZES, dtype=torch.float64)
    assert float((pi * d).sum()) == pytest.approx(0.4 * sum(SIZES), rel=1e-12)
    # the port: budget in tensors, π ∝ S, c ≤ 1/max p ⇒ Σπ = min(k, 1/max p)
    port = zoplatform.make("curvzo", profile="port", init_budget=0.5)
    pi_port = port.inclusion(uneven_state(port, blocks, scores), blocks)
    p = torch.tensor(scores) / sum(scores)
    assert float(pi_port.sum()) == pytest.approx(min(3, 1 / float(p.max())))
    assert float(pi_port.sum()) < 3  # under-filled: k = ⌊0.5·6⌋ = 3 tensors asked for
    assert torch.allclose(port_inclusion(torch.ones(6), 3), torch.full((6,), 0.5, dtype=torch.float64))


def test_inclusion_frequencies_match_their_targets():
    _, blocks = make_blocks()
    method = zoplatform.make("curvzo", init_budget=0.3)
    pi = method.inclusion(uneven_state(method, blocks, [1.0, 50.0, 0.2, 3.0, 1.0, 8.0]), blocks)
    real = CurvZO.realised(pi)
    n = 4000
    hits = torch.zeros(len(blocks))
    for i in range(n):
        idx = CurvZO.sample(pi, step_seed(5, i))
        assert idx  # at least one block
        hits[idx] += 1
    freq = hits / n
    se = (real * (1 - real) / n).sqrt()
    assert torch.all((freq - real).abs() <= 4.5 * se + 1e-12), (freq, real)
    p_empty = float(torch.prod(1 - pi))
    assert torch.allclose(real, pi / (1 - p_empty))


@pytest.mark.parametrize("profile", ["paper", "contrast"])
def test_horvitz_thompson_estimate_is_unbiased(profile):
    """E[(m_b/π̃_b)·Δ·z_b] = ∇_b f on f = ½ Σ a_i x_i², with uneven π."""
    params, blocks = make_blocks(dtype=torch.float64)
    x0 = [p.detach().clone() for p in params]
    a = [torch.linspace(0.5, 2.0, n, dtype=torch.float64) * (i + 1) for i, n in enumerate(SIZES)]
    method = zoplatform.make("curvzo", profile=profile, eps=1e-2, init_budget=0.35)
    state = uneven_state(method, blocks, [1.0, 50.0, 0.2, 3.0, 1.0, 8.0])
    if profile == "contrast":
        state = state.replace(scores_out=torch.full((6,), 0.1, dtype=torch.float64))
    pi = CurvZO.realised(method.inclusion(state, blocks))
    assert float(pi.max() / pi.min()) > 2.0  # genuinely uneven

    def loss():
        return sum(0.5 * (ai * p.detach() ** 2).sum() for ai, p in zip(a, params))

    n, ests = 3000, []
    for i in range(n):
        with torch.no_grad():
            for p, x in zip(params, x0):
                p.copy_(x)
        method.step(state, blocks, loss, step_seed(11, i), 1.0)  # lr = 1: θ' = θ − g̃
        ests.append(torch.cat([x - p.detach() for p, x in zip(params, x0)]))
    ests = torch.stack(ests)
    truth = torch.cat([ai * x for ai, x in zip(a, x0)])
    mean, se = ests.mean(0), ests.std(0) / math.sqrt(n)
    assert torch.all((mean - truth).abs() <= 4.5 * se), (mean, truth)


def test_unsampled_blocks_are_bit_identical_and_directions_only_for_sampled():
    params, blocks = make_blocks()
    method = zoplatform.make("curvzo", lr=1e-2, weight_decay=0.5, init_budget=0.2)
    generated = []
    inner = method.law

    class Counting(type(inner)):
        def fill_(self, out, g):
            generated.append(out.numel())
            return inner.fill_(out, g)

    method.law = Counting()
    state = uneven_state(method, blocks, [1.0, 50.0, 0.2, 3.0, 1.0, 8.0])
    for t in range(20):
        seed = step_seed(3, t)
        idx = CurvZO.sample(method.inclusion(state, blocks), seed)
        before = [p.detach().clone() for p in params]
        generated.clear()
        state, rec = method.step(state, blocks, lambda: sum((p.detach() ** 2).sum() for p in params), seed, 1e-2)
        for i, (p, b) in enumerate(zip(params, before)):
            if i in idx:
                assert not torch.equal(p, b)
            else:
                assert torch.equal(p, b)
        assert sum(generated) == 3 * sum(SIZES[i] for i in idx)  # three passes, sampled blocks only
        assert rec.extra["sampled_blocks"] == len(idx)
        assert rec.extra["sampled_frac"] == pytest.approx(sum(SIZES[i] for i in idx) / sum(SIZES))


@pytest.mark.parametrize("profile", ["paper", "port", "contrast"])
def test_trajectory_replay_is_bit_exact(tmp_path, profile):
    torch.manual_seed(0)

    def net_():
        return torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.LayerNorm(10), torch.nn.Linear(10, 3))

    net = net_()
    base = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(16, 12), torch.randn(16, 3)
    opt = zoplatform.optimizer("curvzo", net.named_parameters(), lr=5e-2, eps=1e-3, weight_decay=0.1,
                               profile=profile, budget_every=3, seed=4)
    for _ in range(15):
        opt.step(lambda: torch.nn.functional.mse_loss(net(x), y))
    assert opt.method_state["trace"].shape == (5, 4)  # five budget updates
    traj = zoplatform.Trajectory.load(opt.trajectory.save(tmp_path / "t.jsonl"))
    fresh = net_()
    fresh.load_state_dict(base)
    method = zoplatform.make(traj.method, **traj.config)
    state = zoplatform.replay(method, blocks_from_named(fresh.named_parameters()), traj.records)
    for a, b in zip(net.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(state["scores"], opt.method_state["scores"]) and state["budget"] == opt.method_state["budget"]


def test_budget_statistics_and_adaptation():
    assert budget_stats(torch.ones(8)) == pytest.approx((1.0, 1.0))
    frac, h = budget_stats(torch.tensor([1.0, 1.0] + [1e-12] * 62))
    assert frac == pytest.approx(2 / 64, rel=1e-3) and h == pytest.approx(math.log(2) / math.log(64), rel=1e-3)
    # uniform scores drive f toward f_min + (f_max − f_min)·α = 0.59 (the §4.4 drift)
    _, blocks = make_blocks()
    m = zoplatform.make("curvzo", budget_every=1)
    state = m.init(blocks)
    for t in range(60):
        state, rec = m.step(state, blocks, lambda: 0.0, step_seed(0, t), 0.0)  # Δ = 0: scores decay uniformly
    assert state["budget"] == pytest.approx(0.59, abs=0.01)
    fixed = zoplatform.make("curvzo", budget_every=1, adaptive_budget=False)
    state = fixed.init(blocks)
    for t in range(5):
        state, rec = fixed.step(state, blocks, lambda: 0.0, step_seed(0, t), 0.0)
    assert state["budget"] == 0.4 and rec.extra["budget"] == 0.4
    assert set(rec.extra) == {"budget", "n_eff", "score_entropy", "sampled_blocks", "sampled_frac"}


def test_contrast_profile_samples_the_hot_block_more_than_the_paper_profile():
    """16 blocks × 8, block 5 with 100× curvature (a small §4.4 problem), 300 steps, two seeds:
    the hot block's sampling rate over the mean rate (paper ≈ 1.25, contrast ≈ 1.6)."""
    curv = torch.ones(16)
    curv[5] = 100.0
    curv = curv.repeat_interleave(8)
    rates = {}
    for profile in ("paper", "contrast"):
        for seed in (0, 1):
            flat = torch.nn.Parameter(torch.randn(128, generator=torch.Generator().manual_seed(seed)))
            blocks = blocks_from_named([(f"t{i}", flat[8 * i:8 * i + 8]) for i in range(16)])
            m = zoplatform.make("curvzo", profile=profile, lr=2e-4, eps=1e-3)
            state = m.init(blocks)
            for t in range(300):
                state, _ = m.step(state, blocks, lambda: float(0.5 * (curv * flat.detach() ** 2).sum()),
                                  step_seed(seed, t), 2e-4)
            counts = state["counts"].double()
            rates.setdefault(profile, []).append(float(counts[5] / counts.mean()))
    paper, contrast = (sum(rates[p]) / 2 for p in ("paper", "contrast"))
    assert paper < 1.4 and contrast > 1.5, rates


def test_report_writes_plot_and_table(tmp_path):
    params, blocks = make_blocks()
    opt = zoplatform.optimizer("curvzo", [(b.name, b.param) for b in blocks], lr=1e-2, budget_every=2)
    for _ in range(6):
        opt.step(lambda: sum((p.detach() ** 2).sum() for p in params))
    from pipelines.finetune import method_reports

    paths = method_reports.write(opt.method, opt.method_state, opt.blocks, tmp_path)
    assert [p.name for p in paths] == ["curvzo_blocks.png", "curvzo_blocks.csv"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    rows = paths[1].read_text().splitlines()
    assert rows[0].startswith("block,numel") and len(rows) == 1 + len(blocks)
    assert sum(int(r.split(",")[4]) for r in rows[1:]) == int(opt.method_state["counts"].sum()) >= 6


# bad configs: tests/test_contract.py (the methods table)
