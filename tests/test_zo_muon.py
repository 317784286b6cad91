"""ZO-Muon (docs/algorithms.md §11): one step against the rule worked by hand, and the synthetic checks of §11.8 —
an update of rank r with an equalised spectrum (A; MeZO's is full rank and spread), loss-scale invariance (B; MeZO
and Subspace-MeZO scale with the loss), the NS5 reference map (C) and the bookkeeping (D)."""
import pytest
import torch

import zoplatform
from zoplatform.algorithms import zo_muon as zm
from zoplatform.params import Scratch, blocks_from_named, direction_chunks
from zoplatform.rng import block_seed, generator, make_law


def draw(block, seed, stream, shape):
    return torch.randn(shape, generator=generator(block_seed(seed, block.key, stream)), dtype=torch.float32)


def haar(block, seed, m, r):
    """P by hand: QR of the N(0, 1) draw of the module's P stream, columns times sign(diag R)."""
    Q, R = torch.linalg.qr(draw(block, seed, zm._P_STREAM, (m, r)).double())
    return Q * torch.sign(torch.diagonal(R))


def z_of(block, seed, stream):
    return torch.cat([z.double().clone() for _, _, z in direction_chunks(block, seed, make_law("gaussian"),
                                                                       Scratch(1024), stream)])


@pytest.mark.parametrize("ortho", ["muon_svd", "none"])
def test_one_step_is_the_rule_worked_by_hand(ortho):
    """W (5×4, decayed), b (4, no decay), r = 2, q = 2: L0, L_i = L(θ + εu_i), g_i = (L_i − L0)/ε,
    Ĝ = (1/q)Σ g_i u_i, W' = (1 − ηλ)W − η P msign(Ĝ) (SVD) or − η P Ĝ; b' = b − η(1/q)Σ g_i z_i."""
    g = torch.Generator().manual_seed(1)
    W = torch.nn.Parameter(torch.randn(5, 4, generator=g, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(4, generator=g, dtype=torch.float64))
    blocks = blocks_from_named([("W", W), ("b", b)], no_decay={"b"})
    A = torch.randn(5, 4, generator=g, dtype=torch.float64)
    loss = lambda w, v: float(((A * w) ** 2).sum() + (w.sum() + v.sum()) ** 2 + v.pow(4).sum())
    eps, lr, wd, seed, q, r = 1e-3, 0.1, 0.2, 5, 2, 2
    m = zoplatform.make("zo-muon", eps=eps, weight_decay=wd, rank=r, num_queries=q, ortho=ortho)
    W0, b0 = W.detach().clone(), b.detach().clone()
    state, rec = m.step(m.init(blocks), blocks, lambda: loss(W.detach(), b.detach()), seed, lr)
    P = haar(blocks[0], seed, 5, r)
    us = [draw(blocks[0], seed, zm._U_STREAM + i, (r, 4)).double() for i in range(q)]
    zs = [z_of(blocks[1], seed, i) for i in range(q)]
    l0 = loss(W0, b0)
    li = [loss(W0 + eps * P @ u, b0 + eps * z) for u, z in zip(us, zs)]
    assert rec.losses == pytest.approx((l0, *li), rel=1e-6)
    gs = [(x - l0) / eps for x in li]
    assert rec.grad == pytest.approx(gs, rel=1e-5, abs=1e-6)
    G = sum(gi * u for gi, u in zip(gs, us)) / q
    if ortho == "muon_svd":
        U, _, Vh = torch.linalg.svd(G, full_matrices=False)
        O = U @ Vh
    else:
        O = G
    torch.testing.assert_close(W.detach(), (1 - lr * wd) * W0 - lr * P @ O, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.detach(), b0 - lr * sum(gi * z for gi, z in zip(gs, zs)) / q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.basis["W"].double(), P, rtol=0, atol=1e-6)
    assert state.t == 1 and state.p_seed == seed and rec.extra["resampled_P"] == 1


def update_of(name, shape, loss_scale=1.0, seed=0, **kw):
    """ΔW of one step from W = 0 on f(W) = s·(⟨G, W⟩ + ½‖W‖²), lr 1 (fp64 weights)."""
    G = torch.randn(shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    W = torch.nn.Parameter(torch.zeros(shape, dtype=torch.float64))
    blocks = blocks_from_named([("W", W)])
    m = zoplatform.make(name, eps=1e-3, **kw)
    f = lambda: loss_scale * float((G * W.detach()).sum() + 0.5 * (W.detach() ** 2).sum())
    m.step(m.init(blocks), blocks, f, 321 + seed, 1.0)
    return W.detach().clone()


@pytest.mark.parametrize("m,n,r,q", [(256, 512, 64, 4), (256, 512, 16, 1)])
def test_A_the_update_has_rank_r_and_an_equalised_spectrum(m, n, r, q):
    svd = torch.linalg.svdvals(update_of("zo-muon", (m, n), rank=r, num_queries=q, ortho="muon_svd"))
    assert float(svd[r]) < 1e-5 * float(svd[0])  # rank exactly r
    torch.testing.assert_close(svd[:r], torch.ones(r, dtype=torch.float64), rtol=0, atol=1e-5)
    ns = torch.linalg.svdvals(update_of("zo-muon", (m, n), rank=r, num_queries=q, ortho="muon"))
    assert float(ns[r]) < 1e-5 * float(ns[0])
    assert 0.6 < float(ns[:r].min()) and float(ns[:r].max()) < 1.15, ns[:r]
    mezo = torch.linalg.svdvals(update_of("mezo", (m, n)))
    assert float(mezo[m - 1]) > 1e-3 * float(mezo[0])  # MeZO: full rank m ...
    assert float(mezo[0] / mezo[m - 1]) > 4.0  # ... with a spread spectrum


@pytest.mark.parametrize("ortho", ["muon", "muon_svd"])
def test_B_the_matrix_step_does_not_depend_on_the_loss_scale(ortho):
    kw = dict(rank=16, num_queries=4, ortho=ortho)
    a, b = update_of("zo-muon", (64, 96), **kw), update_of("zo-muon", (64, 96), loss_scale=1000.0, **kw)
    assert float((a - b).norm() / a.norm()) < 1e-5
    plain, big = (update_of("zo-muon", (64, 96), loss_scale=s, rank=16, num_queries=4, ortho="none")
                  for s in (1.0, 1000.0))
    assert float(big.norm() / plain.norm()) == pytest.approx(1000.0, rel=1e-4)  # Subspace-MeZO scales
    mz, mz_big = update_of("mezo", (64, 96)), update_of("mezo", (64, 96), loss_scale=1000.0)
    assert float(mz_big.norm() / mz.norm()) == pytest.approx(1000.0, rel=1e-4)


def scalar_ns(x, steps=5):
    a, b, c = 3.4445, -4.7750, 2.0315  # the spec's coefficients, §11.1
    for _ in range(steps):
        x = a * x + b * x ** 3 + c * x ** 5
    return x


def test_C_newton_schulz_follows_the_reference_map():
    """§11.8 C: the scalar map of 5 iterations sends [1/(4√64), 1] into [0.682, 1.134] and [1e-3, 1] into
    [0.471, 1.202]; the matrix iteration acts on each normalised singular value by that map."""
    grid = torch.linspace(1 / 32, 1.0, 20001, dtype=torch.float64)
    y = scalar_ns(grid)
    assert (round(float(y.min()), 3), round(float(y.max()), 3)) == (0.682, 1.134)
    y = scalar_ns(torch.linspace(1e-3, 1.0, 200001, dtype=torch.float64))
    assert (round(float(y.min()), 3), round(float(y.max()), 3)) == (0.471, 1.202)
    g = torch.Generator().manual_seed(2)
    U, _ = torch.linalg.qr(torch.randn(48, 16, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(80, 16, generator=g, dtype=torch.float64))
    s = torch.logspace(-1.5, 0, 16, dtype=torch.float64)
    G = U @ torch.diag(s) @ V.T
    want = U @ torch.diag(scalar_ns(s / s.norm())) @ V.T
    for M, W in [(G, want), (G.T, want.T)]:  # wide and tall
        torch.testing.assert_close(zm.newton_schulz(M).double(), W, rtol=0, atol=1e-4)


def test_D_bookkeeping():
    """PᵀP = I; P the same within a window and new at t = kν; 1 + q closure calls (2q central); the 1-D block
    gets the plain ZO-SGD step, not an orthogonalised one."""
    W = torch.nn.Parameter(torch.randn(32, 20, generator=torch.Generator().manual_seed(0)))
    b = torch.nn.Parameter(torch.zeros(7))
    calls = []

    def f():
        calls.append(1)
        return float((W.detach() ** 2).sum() + (b.detach() - 1).pow(2).sum())

    opt = zoplatform.optimizer("zo-muon", [("W", W), ("b", b)], lr=1e-2, eps=1e-3, rank=8, step_interval=3,
                               num_queries=3, seed=0)
    bases = []
    for _ in range(7):
        opt.step(f)
        bases.append(opt.method_state.basis["W"].clone())
    assert len(calls) == 7 * 4
    P = bases[0]
    assert P.shape == (32, 8)
    torch.testing.assert_close(P.T @ P, torch.eye(8), rtol=0, atol=1e-5)
    assert torch.equal(bases[1], P) and torch.equal(bases[2], P) and not torch.equal(bases[3], P)
    assert torch.equal(bases[4], bases[3]) and not torch.equal(bases[6], bases[3])
    assert [r.extra["resampled_P"] for r in opt.trajectory.records] == [1, 0, 0, 1, 0, 0, 1]
    central = zoplatform.make("zo-muon", estimator="central", num_queries=3)
    assert central.forwards_per_step == 6
    # 1-D: b' = b − η (1/q) Σ g_i z_i, one record's g_i and the z_i of streams i
    opt1 = zoplatform.optimizer("zo-muon", [("b", b)], lr=0.1, eps=1e-3, num_queries=3, seed=4)
    b0 = b.detach().clone().double()
    opt1.step(f)
    rec = opt1.trajectory.records[0]
    zs = [z_of(opt1.blocks[0], rec.seed, i) for i in range(3)]
    want = b0 - 0.1 * sum(g * z for g, z in zip(rec.grad, zs)) / 3
    torch.testing.assert_close(b.detach().double(), want, rtol=1e-5, atol=1e-6)


def test_the_rank_is_clamped_to_the_rows():
    W = torch.nn.Parameter(torch.zeros(3, 50))
    opt = zoplatform.optimizer("zo-muon", [("W", W)], lr=1e-2, rank=64, seed=0)
    opt.step(lambda: float((W.detach() - 1).pow(2).sum()))
    P = opt.method_state.basis["W"]
    assert P.shape == (3, 3)
    torch.testing.assert_close(P.T @ P, torch.eye(3), rtol=0, atol=1e-6)


@pytest.mark.parametrize("prec", ["bf16-mixed", "fp16-mixed", "bf16-true"])
@pytest.mark.parametrize("extra", [{"estimator": "central", "num_queries": 2, "ortho": "muon_svd"},
                                   {"ortho": "none", "step_interval": 2}])
def test_other_variants_replay_bit_exactly_in_every_precision(prec, extra):
    """tests/test_precision.py covers the default; the same replay check for the central estimator, the SVD
    and Subspace-MeZO."""
    from tests.test_precision import assert_replays_bit_exactly, train

    model, opt = train("zo-muon", None, 2, steps=5, prec=prec, rank=4, **extra)
    assert_replays_bit_exactly("zo-muon", prec, model, opt)
