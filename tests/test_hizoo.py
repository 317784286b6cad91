"""HiZOO (docs/algorithms.md §9): one step against the rule worked by hand, the synthetic checks of §9.8 —
curvature tracking (A), the preconditioned direction (B), bookkeeping (C) — where plain MeZO (H ≡ 1) fails A
and B, and the non-finite skip rule."""
import math

import pytest
import torch

import zoplatform
from zoplatform.params import Scratch, blocks_from_named, direction_chunks
from zoplatform.rng import make_law

H_TRUE = torch.tensor([1.0, 10.0, 100.0, 1000.0], dtype=torch.float64)


def diag_quadratic(x, h=H_TRUE):
    """L(θ) = ½ Σ h_i θ_i², fp64, as a Python float."""
    return lambda: float(0.5 * (h * x.detach().double() ** 2).sum())


def z_of(block, seed, chunk=1024):
    """The Gaussian z the engine draws for ``block`` at ``seed`` (stream 0), in fp64."""
    return torch.cat([z.double().clone() for _, _, z in direction_chunks(block, seed, make_law("gaussian"),
                                                                       Scratch(chunk))])


def test_one_step_is_the_rule_worked_by_hand():
    """A 3-entry decayed vector with a non-trivial H: every number of the step recomputed here in fp64."""
    x = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    blocks = blocks_from_named([("x", x)])
    a = torch.tensor([2.0, 0.5, 3.0], dtype=torch.float64)
    loss = lambda t: float(0.5 * (a * t * t).sum() + t.sum())
    eps, lr, wd, alpha, seed = 1e-2, 0.1, 0.2, 0.25, 77
    m = zoplatform.make("hizoo", eps=eps, hessian_smooth=alpha, weight_decay=wd, chunk_size=1024)
    h0 = torch.tensor([4.0, 1.0, 0.25], dtype=torch.float32)
    state = m.init(blocks).replace(hessian={"x": h0.clone()})
    theta = x.detach().clone()
    state, rec = m.step(state, blocks, lambda: loss(x.detach()), seed, lr)
    # by hand
    z = z_of(blocks[0], seed)
    u = z / h0.double().sqrt()
    l0, lp, lm = loss(theta), loss(theta + eps * u), loss(theta - eps * u)
    assert rec.losses == pytest.approx((l0, lp, lm), rel=1e-6)
    c1, c2 = (lp - lm) / (2 * eps), abs(lp + lm - 2 * l0) / (2 * eps ** 2)
    assert rec.grad == pytest.approx((c1, c2), rel=1e-5)
    h1 = (1 - alpha) * h0.double() + alpha * c2 * h0.double() * z * z
    torch.testing.assert_close(state.hessian["x"].double(), h1, rtol=1e-5, atol=0)
    want = (1 - lr * wd) * theta - lr * c1 * z / h1.sqrt()
    torch.testing.assert_close(x.detach(), want, rtol=1e-5, atol=1e-6)
    assert state.t == 1 and state.skipped == 0


def track(alpha, steps=20000, burn=5000):
    """θ frozen (lr 0) on the diagonal quadratic: the geometric time-mean of H_i / h_i after ``burn`` steps."""
    x = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    blocks = blocks_from_named([("x", x)])
    m = zoplatform.make("hizoo", eps=1e-3, hessian_smooth=alpha)
    state, f = m.init(blocks), diag_quadratic(x)
    acc = torch.zeros(4, dtype=torch.float64)
    for t in range(steps):
        state, _ = m.step(state, blocks, f, 1000 + t, 0.0)
        if t >= burn:
            acc += state.hessian["x"].double().log()
    return (acc / (steps - burn)).exp() / H_TRUE


def test_A_curvature_tracking_reaches_the_fixed_point_and_mezo_does_not():
    """§9.8 A: H_i → h_i (d + 2)/2 = 3 h_i; the spread of log10(H_i/h_i) is < 0.3 while log10(h_max/h_min) = 3.
    MeZO is HiZOO with α = 0 (H ≡ 1): its spread is the full 3 decades."""
    ratio = track(1e-3)
    spread = float(ratio.log10().max() - ratio.log10().min())
    assert spread < 0.3, ratio
    assert bool(((ratio > 2.0) & (ratio < 4.5)).all()), ratio  # theory 3.0
    mezo = track(0.0, steps=50, burn=0)
    assert float(mezo.log10().max() - mezo.log10().min()) == pytest.approx(3.0)


def mean_direction(h_fixed, draws=20000):
    """E[g]/θ at θ = 1 with H frozen (α = 0): g = −Δθ/η of a step, θ reset to 1 before each draw."""
    x = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    blocks = blocks_from_named([("x", x)])
    m = zoplatform.make("hizoo", eps=1e-3, hessian_smooth=0.0)
    state = m.init(blocks).replace(hessian={"x": h_fixed.float()})
    f, lr = diag_quadratic(x), 1e-6
    acc = torch.zeros(4, dtype=torch.float64)
    for t in range(draws):
        with torch.no_grad():
            x.fill_(1.0)
        state, _ = m.step(state, blocks, f, 5000 + t, lr)
        acc += (1.0 - x.detach()) / lr
    return acc / draws


def test_B_preconditioned_direction_is_isotropic_and_mezo_is_not():
    """§9.8 B: with H = h(d + 2)/2 the mean step direction over θ is 2/(d + 2) = 1/3 on every coordinate;
    MeZO (H = 1) gives ≈ h_i, 1000 on the stiffest one."""
    hizoo = mean_direction(H_TRUE * 3.0)
    torch.testing.assert_close(hizoo, torch.full((4,), 1 / 3, dtype=torch.float64), rtol=0, atol=0.04)
    mezo = mean_direction(torch.ones(4, dtype=torch.float64), draws=4000)
    assert 900 < float(mezo[3]) < 1100


def test_C_three_forwards_restore_and_alpha_zero_is_mezo():
    """§9.8 C: 3 closure calls per step at θ, θ + εu, θ − εu; at lr 0 θ comes back to fp32 round-off; with
    α = 0 the weights follow MeZO's step for step (same seeds, same z)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 3)
    x, y = torch.randn(8, 6), torch.randn(8, 3)
    calls = []

    def closure():
        calls.append(1)
        return torch.nn.functional.mse_loss(net(x), y)

    before = [p.detach().clone() for p in net.parameters()]
    opt = zoplatform.optimizer("hizoo", net.named_parameters(), lr=1e-9, eps=1e-3, hessian_smooth=0.1, seed=2)
    opt.param_groups[0]["lr"] = 0.0
    for _ in range(4):
        opt.step(closure)
    assert len(calls) == 12
    for b, p in zip(before, net.parameters()):
        torch.testing.assert_close(p.detach(), b, atol=1e-6, rtol=0)
    assert any(not torch.equal(h, torch.ones_like(h)) for h in opt.method_state.hessian.values())  # H moved

    def run(name, **kw):  # fp64 weights: the fp32 round-off of the losses would be amplified by 1/(2ε)
        torch.manual_seed(0)
        net = torch.nn.Linear(6, 3).double()
        opt = zoplatform.optimizer(name, net.named_parameters(), lr=1e-2, eps=1e-3, weight_decay=0.1, seed=3, **kw)
        for _ in range(10):
            opt.step(lambda: torch.nn.functional.mse_loss(net(x.double()), y.double()))
        return [p.detach() for p in net.parameters()], opt

    hz, opt_h = run("hizoo", hessian_smooth=0.0)
    mz, opt_m = run("mezo")
    for a, b in zip(hz, mz):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert [x for r in opt_h.trajectory.records for x in r.losses[1:]] == pytest.approx(
        [x for r in opt_m.trajectory.records for x in r.losses], rel=1e-5)


def test_a_non_finite_loss_restores_theta_and_keeps_h():
    x = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    blocks = blocks_from_named([("x", x)])
    m = zoplatform.make("hizoo", eps=1e-3, hessian_smooth=0.5)
    state = m.init(blocks)
    losses = iter([1.0, math.nan, 0.5])
    new, rec = m.step(state, blocks, lambda: next(losses), 9, 0.1)
    torch.testing.assert_close(x.detach(), torch.tensor([1.0, 2.0, 3.0]), atol=1e-6, rtol=0)
    assert torch.equal(new.hessian["x"], torch.ones(3)) and new.skipped == 1 and rec.extra["skipped"] == 1


def test_h_is_fp32_whatever_the_weights_dtype_and_block_table_reports_it():
    w = torch.nn.Parameter(torch.ones(4, 5, dtype=torch.bfloat16))
    opt = zoplatform.optimizer("hizoo", [("w", w)], lr=1e-3, eps=1e-2, hessian_smooth=0.5, seed=0)
    opt.step(lambda: (w.float() ** 2).sum())
    h = opt.method_state.hessian["w"]
    assert h.dtype == torch.float32 and h.shape == (4, 5)
    (row,) = opt.method.block_table(opt.method_state, opt.blocks)
    assert row["block"] == "w" and row["h_min"] <= row["h_mean"] <= row["h_max"] and row["h_max"] > 1.0
