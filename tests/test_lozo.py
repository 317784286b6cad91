"""LOZO / LOZO-M (docs/algorithms.md §10): one step against the rule worked by hand, and the synthetic checks of
§10.8 — rank r perturbations (A, MeZO's are full rank), the lazy subspace (B), the 1/r convention (C), dense 1-D
blocks (D) and LOZO-M's factored momentum with its re-projection (E)."""
import pytest
import torch

import zoplatform
from zoplatform.algorithms import lozo as lozo_module
from zoplatform.params import Scratch, blocks_from_named, direction_chunks
from zoplatform.rng import block_seed, generator, make_law


def factor(block, seed, stream, shape):
    """A Gaussian factor drawn here from (seed, block key, stream): the streams the module documents."""
    return torch.randn(shape, generator=generator(block_seed(seed, block.key, stream)), dtype=torch.float32)


def z_of(block, seed):
    return torch.cat([z.clone() for _, _, z in direction_chunks(block, seed, make_law("gaussian"), Scratch(1024))])


def linear_loss(W, G):
    return lambda: float((G * W.detach().double()).sum())


@pytest.mark.parametrize("scale_by_rank", [False, True])
def test_one_step_is_the_rule_worked_by_hand(scale_by_rank):
    """W (4×3, decayed) and b (3, no decay), r = 2: L± at W ± εUVᵀ, b ± εz; W' = (1−ηλ)W − ηk c UVᵀ, b' = b − ηcz."""
    g = torch.Generator().manual_seed(0)
    W = torch.nn.Parameter(torch.randn(4, 3, generator=g, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64))
    blocks = blocks_from_named([("W", W), ("b", b)], no_decay={"b"})
    A = torch.randn(4, 3, generator=g, dtype=torch.float64)
    loss = lambda w, v: float(0.5 * ((A * w) ** 2).sum() + (w.sum() - v.sum()) ** 2 + (v ** 3).sum())
    eps, lr, wd, seed = 1e-2, 0.05, 0.3, 11
    m = zoplatform.make("lozo", eps=eps, weight_decay=wd, rank=2, scale_by_rank=scale_by_rank)
    W0, b0 = W.detach().clone(), b.detach().clone()
    state, rec = m.step(m.init(blocks), blocks, lambda: loss(W.detach(), b.detach()), seed, lr)
    U = factor(blocks[0], seed, lozo_module._U_STREAM, (4, 2)).double()
    V = factor(blocks[0], seed, lozo_module._V_STREAM, (3, 2)).double()
    z = z_of(blocks[1], seed).double()
    Z = U @ V.T
    lp, lm = loss(W0 + eps * Z, b0 + eps * z), loss(W0 - eps * Z, b0 - eps * z)
    assert rec.losses == pytest.approx((lp, lm), rel=1e-7)  # UVᵀ is rounded to fp32
    c = (lp - lm) / (2 * eps)
    k = 0.5 if scale_by_rank else 1.0
    torch.testing.assert_close(W.detach(), (1 - lr * wd) * W0 - lr * k * c * Z, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.detach(), b0 - lr * c * z, rtol=1e-5, atol=1e-6)
    assert state.t == 1 and state.v_seed == seed and rec.extra["resampled_V"] == 1


def perturbations(name, steps, shape=(64, 32), **kw):
    """The perturbation W+ − W seen by the first closure call of each step, and the weights after each step."""
    W = torch.nn.Parameter(torch.zeros(shape, dtype=torch.float64))
    G = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    opt = zoplatform.optimizer(name, [("W", W)], eps=1.0, seed=1, **kw)
    seen, after = [], []
    for _ in range(steps):
        start, calls = W.detach().clone(), []

        def closure():
            if not calls:
                seen.append(W.detach().clone() - start)
            calls.append(1)
            return linear_loss(W, G)()

        opt.step(closure)
        after.append(W.detach().clone())
    return seen, after, opt


def rank(x):
    return int(torch.linalg.matrix_rank(x, rtol=1e-5))  # directions are drawn in fp32


def test_A_perturbations_have_rank_r_and_mezos_are_full_rank():
    seen, _, _ = perturbations("lozo", 3, lr=1e-3, rank=2, step_interval=5)
    assert [rank(p) for p in seen] == [2, 2, 2]
    mezo, _, _ = perturbations("mezo", 1, lr=1e-3)
    assert rank(mezo[0]) == 32


def test_B_lazy_subspace():
    """V is the same for steps kν … kν+ν−1 and new at kν+ν, U new every step: the sum of one window's updates has
    rank r and its rows lie in span(V); two windows give rank 2r."""
    seen, after, _ = perturbations("lozo", 10, lr=1e-2, rank=2, step_interval=5)

    def residual(x, basis):  # ‖x (I − B B⁺)‖ / ‖x‖ with B the row space of ``basis``
        q, _ = torch.linalg.qr(basis.T)
        q = q[:, :2]
        return float((x - x @ q @ q.T).norm() / x.norm())

    for t in range(1, 5):  # same V within the window ...
        assert residual(seen[t], seen[0]) < 1e-5
        assert rank(torch.stack([seen[t], seen[0]]).sum(0)) == 2
        assert not torch.allclose(seen[t], seen[0])  # ... and a new U each step
    assert residual(seen[5], seen[0]) > 0.5  # a new V at t = ν
    W0 = torch.zeros(64, 32, dtype=torch.float64)
    one_window, two_windows = after[4] - W0, after[9] - W0
    assert rank(one_window) == 2 and residual(one_window, seen[0]) < 1e-5
    assert rank(two_windows) == 4


@pytest.mark.parametrize("scale_by_rank,ratio", [(True, (0.85, 1.3)), (False, (1.8, 2.5))])
def test_C_the_scaling_convention(scale_by_rank, ratio):
    """On L = ⟨G, W⟩ (exact finite differences), the mean step direction over fresh (U, V) (ν = 1) is ≈ G with
    the 1/r (the paper) and ≈ rG without it (the code), r = 2."""
    G = torch.randn(16, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    W = torch.nn.Parameter(torch.zeros(16, 8, dtype=torch.float64))
    m = zoplatform.make("lozo", eps=1.0, rank=2, step_interval=1, scale_by_rank=scale_by_rank)
    blocks = blocks_from_named([("W", W)])
    state, f = m.init(blocks), linear_loss(W, G)
    acc, draws = torch.zeros_like(G), 20000
    for t in range(draws):
        with torch.no_grad():
            W.zero_()
        state, _ = m.step(state, blocks, f, 7000 + t, 1.0)
        acc -= W.detach()
    avg = acc / draws
    norm_ratio = float(avg.norm() / G.norm())
    cos = float((avg * G).sum() / (avg.norm() * G.norm()))
    assert ratio[0] < norm_ratio < ratio[1] and cos > 0.9, (norm_ratio, cos)


def test_D_vectors_get_a_dense_gaussian_perturbation():
    W = torch.nn.Parameter(torch.zeros(6, 5))
    b = torch.nn.Parameter(torch.zeros(40))
    blocks = blocks_from_named([("W", W), ("b", b)])
    m = zoplatform.make("lozo", eps=1e-2, rank=1)
    seen = []
    m.step(m.init(blocks), blocks, lambda: seen.append((W.detach().clone(), b.detach().clone())) or 0.0, 21, 0.0)
    Wp, bp = seen[0]
    assert rank(Wp.double()) == 1
    torch.testing.assert_close(bp, 1e-2 * z_of(blocks[1], 21), rtol=1e-6, atol=0)
    assert bool((bp != 0).all())


def test_E_lozo_m_momentum_is_factored_and_reprojected_at_a_redraw():
    """N is m×r; N₀ = c₀U₀; N_t = βN + (1−β)c_tU_t inside a window; at t = ν, N = βN V_oldᵀV_new/n + (1−β)cU;
    the weights move by −ηN Vᵀ (decay 0)."""
    g = torch.Generator().manual_seed(8)
    W = torch.nn.Parameter(torch.randn(12, 9, generator=g, dtype=torch.float64))
    G = torch.randn(12, 9, generator=g, dtype=torch.float64)
    blocks = blocks_from_named([("W", W)])
    beta, r, nu, lr = 0.7, 2, 2, 1e-2
    m = zoplatform.make("lozo", eps=1e-3, rank=r, step_interval=nu, momentum=beta)
    state, f = m.init(blocks), lambda: float((G * W.detach()).sum() + 0.5 * (W.detach() ** 2).sum())
    N, seeds = None, [100, 101, 102]
    for t, seed in enumerate(seeds):
        before = W.detach().clone()
        state, rec = m.step(state, blocks, f, seed, lr)
        c = rec.grad[0]
        U = factor(blocks[0], seed, lozo_module._U_STREAM, (12, r))
        v_seed = seeds[(t // nu) * nu]
        V = factor(blocks[0], v_seed, lozo_module._V_STREAM, (9, r))
        if t == 0:
            N = c * U
        elif t % nu == 0:
            V_old = factor(blocks[0], seeds[(t // nu - 1) * nu], lozo_module._V_STREAM, (9, r))
            N = beta * N @ (V_old.T @ V) / 9 + (1 - beta) * c * U
        else:
            N = beta * N + (1 - beta) * c * U
        assert state.momentum["W"].shape == (12, r)
        torch.testing.assert_close(state.momentum["W"], N, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(W.detach(), before - lr * (N @ V.T).double(), rtol=1e-5, atol=1e-7)
    assert state.v_seed == seeds[2]


def test_lozo_m_with_zero_momentum_is_lozo():
    def run(**kw):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5))
        x = torch.randn(8, 6)
        opt = zoplatform.optimizer("lozo", net.named_parameters(), lr=1e-2, eps=1e-3, rank=2, step_interval=3, seed=2,
                                   **kw)
        for _ in range(7):
            opt.step(lambda: (net(x) ** 2).mean())
        return [p.detach().clone() for p in net.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(run(), run(momentum=0.0)))
    assert not all(torch.equal(a, b) for a, b in zip(run(), run(momentum=0.5)))


@pytest.mark.parametrize("prec", ["bf16-mixed", "fp16-mixed", "bf16-true"])
def test_lozo_m_replays_bit_exactly_in_every_precision(prec):
    """tests/test_precision.py covers the default (LOZO); the same replay check for LOZO-M."""
    from tests.test_precision import assert_replays_bit_exactly, train

    model, opt = train("lozo", None, 2, steps=5, prec=prec, momentum=0.8, rank=2, step_interval=2)
    assert_replays_bit_exactly("lozo", prec, model, opt)
