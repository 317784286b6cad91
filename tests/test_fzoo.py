"""FZOO: the step against a dense reference of the paper's rule, affine invariance of
the update, N + 1 forwards, the normalised-SGD mean direction on a linear loss, the
σ = 0 skip rule, bit-exact replay and resume, and config errors."""
import doctest
import math

import pytest
import torch

import zoplatform
from zoplatform.algorithms import fzoo as fzoo_module
from zoplatform.params import Block, Scratch, axpy_, blocks_from_named, direction_chunks, model_blocks, snapshot
from zoplatform.rng import make_law

D_W, D_B = (7, 300), 30  # 2100 + 30 entries: crosses 1024-element chunks


def two_blocks(dtype=torch.float64, seed=0):
    """A decayed matrix W and a no-decay vector b with random values."""
    g = torch.Generator().manual_seed(seed)
    W = torch.nn.Parameter(torch.randn(D_W, generator=g, dtype=dtype))
    b = torch.nn.Parameter(torch.randn(D_B, generator=g, dtype=dtype))
    return (W, b), blocks_from_named([("W", W), ("b", b)], no_decay={"b"})


def quadratic(params, seed=1):
    """f(θ) = ½ Σ a_j θ_j² + cᵀθ in fp64, returned as a Python float (no fp32 rounding)."""
    n = sum(p.numel() for p in params)
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    c = torch.randn(n, generator=g, dtype=torch.float64)

    def f(theta=None):
        t = torch.cat([p.detach().reshape(-1).double() for p in params]) if theta is None else theta
        return float(0.5 * (a * t * t).sum() + c @ t)

    return f


def flat(params):
    return torch.cat([p.detach().reshape(-1).double() for p in params])


def dense_direction(blocks, seed, law, chunk, stream):
    """u_i over all blocks, drawn exactly as the engine draws it (stream i of the step seed)."""
    s = Scratch(chunk)
    return torch.cat([torch.cat([z.double().clone() for _, _, z in direction_chunks(b, seed, law, s, stream)])
                      for b in blocks])


def one_step(params, blocks, closure, seed=123, lr=0.1, **hyper):
    method = zoplatform.make("fzoo", **hyper)
    before = flat(params)
    state, rec = method.step(method.init(blocks), blocks, closure, seed, lr)
    return method, state, rec, flat(params) - before


# -- the rule ----------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["rademacher", "gaussian"])
def test_a_step_is_the_papers_rule_against_a_dense_reference(direction):
    """Losses at θ and θ + εu_i, σ = population std of l_1..l_N, and
    θ' = (1 − ηλ)θ − η/(Nσ) Σ (l_i − l_0) u_i with λ only on the decayed block."""
    params, blocks = two_blocks()
    f = quadratic(params)
    N, eps, lr, wd = 5, 1e-2, 0.1, 0.3
    theta0 = flat(params)
    method, _, rec, _ = one_step(params, blocks, f, lr=lr, num_directions=N, eps=eps, weight_decay=wd,
                                 direction=direction, chunk_size=1024)
    us = [dense_direction(blocks, 123, make_law(direction), 1024, i) for i in range(N)]
    if direction == "rademacher":
        assert all(set(u.unique().tolist()) == {-1.0, 1.0} for u in us)
    l0, li = f(theta0), torch.tensor([f(theta0 + eps * u) for u in us], dtype=torch.float64)
    assert rec.losses[0] == l0  # the centre is evaluated first, at θ itself
    torch.testing.assert_close(torch.tensor(rec.losses[1:], dtype=torch.float64), li, rtol=1e-12, atol=0)
    sigma = float(li.std(unbiased=False))
    assert rec.extra == {"sigma": pytest.approx(sigma, rel=1e-9), "skipped": 0}
    coefs = (li - l0) / (N * sigma)
    torch.testing.assert_close(torch.tensor(rec.grad, dtype=torch.float64), coefs, rtol=1e-9, atol=0)
    decay = torch.cat([torch.full((blocks[0].numel,), 1 - lr * wd, dtype=torch.float64),
                       torch.ones(blocks[1].numel, dtype=torch.float64)])
    expected = decay * theta0 - lr * sum(cf * u for cf, u in zip(coefs.tolist(), us))
    torch.testing.assert_close(flat(params), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("a,b", [(3.0, 5.0), (0.01, -2.0), (-1.0, 0.0), (-7.0, 1.5)])
def test_update_is_invariant_to_affine_rescaling_of_the_loss(a, b):
    """L → aL + b leaves the update unchanged for a > 0 and flips it for a < 0
    (l_i − l_0 scales by a, σ by |a|); no weight decay so that the whole step flips."""
    def delta(scale, shift):
        params, blocks = two_blocks()
        f = quadratic(params)
        return one_step(params, blocks, lambda: scale * f() + shift, eps=1e-2, lr=0.1, chunk_size=1024)[3]

    ref, got = delta(1.0, 0.0), delta(a, b)
    assert float(ref.norm()) > 0.1
    torch.testing.assert_close(got, math.copysign(1.0, a) * ref, rtol=0, atol=1e-9 * float(ref.abs().max()))


@pytest.mark.parametrize("N", [2, 3, 8])
def test_exactly_n_plus_one_forwards_per_step(N):
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    calls = []

    def closure():
        calls.append(1)
        return net(x).pow(2).mean()

    opt = zoplatform.optimizer("fzoo", net.named_parameters(), lr=1e-3, num_directions=N, seed=2)
    assert opt.method.forwards_per_step == N + 1
    for k in range(1, 4):
        opt.step(closure)
        assert len(calls) == k * (N + 1) and len(opt.last_record.losses) == N + 1
        assert len(opt.last_record.grad) == N


def test_mean_update_on_a_linear_loss_is_normalised_minus_gradient():
    """L = gᵀθ (d = 200, N = 8): the update does not depend on θ, so the mean of 2000
    steps estimates E[Δθ] ≈ −η g/‖g‖.  Cosine with −g > 0.99 (per-step noise ≈ η√(d/N)
    = 5η, so the mean's noise is ≈ 0.11η: cosine ≈ 0.994, over seeds ± 0.0003) and the
    length along −g ≈ 1.05η (§8.2)."""
    d, steps, lr = 200, 2000, 1.0
    g = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))
    opt = zoplatform.optimizer("fzoo", [("x", x)], lr=lr, eps=1e-3, num_directions=8, seed=4, record=False)
    for _ in range(steps):
        opt.step(lambda: float(g @ x.detach()))
    mean = x.detach() / steps
    cos = float(-(mean @ g) / (mean.norm() * g.norm()))
    along = float(-(mean @ g) / g.norm()) / lr
    assert cos > 0.99, cos
    assert 1.0 < along < 1.1, along
    assert opt.method_state == {"t": steps, "skipped": 0}


# -- the σ = 0 rule ------------------------------------------------------------------------------
def test_constant_loss_skips_the_step_without_nan_and_counts_it():
    params, blocks = two_blocks(dtype=torch.float32)
    theta0 = snapshot(blocks)
    method = zoplatform.make("fzoo", num_directions=4, weight_decay=0.5, chunk_size=1024)
    state = method.init(blocks)
    for k in range(1, 4):
        state, rec = method.step(state, blocks, lambda: torch.tensor(0.7), 100 + k, 0.1)
        assert rec.extra == {"sigma": 0.0, "skipped": 1} and rec.grad == (0.0,) * 4
        assert state == {"t": k, "skipped": k}
    assert all(torch.isfinite(p).all() for p in params)
    # θ was only perturbed and restored (no update, no weight decay): exactly the same
    # perturb/restore arithmetic done by hand, and θ to fp32 rounding
    law, s = make_law("rademacher"), Scratch(1024)
    ref = [t.clone() for t in theta0]
    ref_blocks = [Block(b.name, r, b.decay, b.key) for b, r in zip(blocks, ref)]
    for k in range(1, 4):
        for i in range(4):
            axpy_(ref_blocks, 100 + k, law, s, 1e-3, stream=i)
            axpy_(ref_blocks, 100 + k, law, s, -1e-3, stream=i)
    for b, r, t0 in zip(blocks, ref, theta0):
        assert torch.equal(b.param, r)
        torch.testing.assert_close(b.param.detach(), t0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", ["perturbed_equal", "nan", "inf_centre"])
def test_degenerate_losses_skip_the_step(bad):
    """σ = 0 with a different l_0, a NaN among the losses, an infinite l_0: all skipped."""
    params, blocks = two_blocks(dtype=torch.float32)
    theta0 = flat(params)
    seq = {"perturbed_equal": [2.0] + [1.0] * 3,
           "nan": [1.0, 1.1, math.nan, 1.2],
           "inf_centre": [math.inf, 1.0, 1.1, 1.2]}[bad]
    it = iter(seq)
    method = zoplatform.make("fzoo", num_directions=3)
    state, rec = method.step(method.init(blocks), blocks, lambda: next(it), 7, 0.1)
    assert rec.extra["skipped"] == 1 and state["skipped"] == 1
    assert torch.isfinite(flat(params)).all()
    torch.testing.assert_close(flat(params), theta0, rtol=0, atol=1e-6)


def test_equal_losses_give_sigma_exactly_zero():
    """Rounding in the mean must not turn N equal losses into a tiny σ (and a huge step)."""
    for n in (2, 3, 7, 10):
        for v in (0.1, 0.7, 1 / 3, 12345.678):
            assert fzoo_module.population_std([v] * n) == 0.0
    assert fzoo_module.population_std([1.0, 3.0]) == 1.0


# -- replay, resume, config -------------------------------------------------------------------------
def small_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 2))


def net_loss(net, step):
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(16, 6, generator=g), torch.randn(16, 2, generator=g)
    if step == 3:  # one constant-loss batch: a skipped step inside the trajectory
        return lambda: torch.tensor(0.5)
    return lambda: torch.nn.functional.mse_loss(net(x), y)


def test_trajectory_replay_is_bit_exact_with_decay_and_a_skipped_step(tmp_path):
    net = small_net()
    base = {k: v.clone() for k, v in net.state_dict().items()}
    opt = zoplatform.optimizer("fzoo", net.named_parameters(), lr=1e-2, eps=1e-3, weight_decay=0.1,
                               num_directions=4, seed=11, no_decay={b.name for b in model_blocks(net) if not b.decay})
    for t in range(12):
        opt.step(net_loss(net, t))
    assert opt.method_state == {"t": 12, "skipped": 1}
    assert [r.extra["skipped"] for r in opt.trajectory.records] == [int(t == 3) for t in range(12)]
    traj = zoplatform.Trajectory.load(opt.trajectory.save(tmp_path / "traj.jsonl"))
    fresh = small_net(seed=5)
    fresh.load_state_dict(base)
    method = zoplatform.make(traj.method, **traj.config)
    state = zoplatform.replay(method, model_blocks(fresh), traj.records)
    assert state == opt.method_state
    for a, b in zip(net.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_resume_from_state_dict_is_bit_exact_and_keeps_the_skip_count():
    def run(split):
        net = small_net()
        opt = zoplatform.optimizer("fzoo", net.named_parameters(), lr=1e-2, num_directions=3, seed=7)
        for t in range(split):
            opt.step(net_loss(net, t))
        if split == 8:
            return opt.method_state, [p.detach().clone() for p in net.parameters()]
        sd, weights = opt.state_dict(), {k: v.clone() for k, v in net.state_dict().items()}
        net2 = small_net(seed=99)
        net2.load_state_dict(weights)
        opt2 = zoplatform.optimizer("fzoo", net2.named_parameters(), lr=1e-2, num_directions=3, seed=0)
        opt2.load_state_dict(sd)
        for t in range(split, 8):
            opt2.step(net_loss(net2, t))
        return opt2.method_state, [p.detach().clone() for p in net2.parameters()]

    (s_full, p_full), (s_res, p_res) = run(8), run(5)
    assert s_full == s_res == {"t": 8, "skipped": 1}
    assert all(torch.equal(a, b) for a, b in zip(p_full, p_res))


# more bad configs: tests/test_contract.py (the methods table)



def test_defaults_are_the_codes_and_the_docstring_example_runs():
    c = zoplatform.make("fzoo").config
    assert (c.num_directions, c.lr, c.eps, c.weight_decay, c.direction) == (8, 1e-5, 1e-3, 0.0, "rademacher")
    assert zoplatform.make("fzoo", num_directions=5).forwards_per_step == 6
    assert doctest.testmod(fzoo_module).failed == 0


# -- the shipped space and comparison recipe ------------------------------------------------------------
def test_search_space_seeds_the_codes_defaults_first():
    from search_spaces import load_space, to_points

    c = zoplatform.make("fzoo").config
    assert to_points(load_space("fzoo"))[0] == {"lr": c.lr, "eps": c.eps, "num_directions": c.num_directions}


def test_comparison_recipe_plans_every_label_at_equal_forward_passes(tmp_path):
    """benchmarks/compare_fzoo.yaml: every label validates, and at a 900-forward budget MeZO gets 450
    steps and FZOO with N directions 900 / (N + 1) (N = 8: 100, N = 4: 180)."""
    from pathlib import Path

    import yaml

    from pipelines.compare import load_compare_config, plan

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_fzoo.yaml"
    entries = yaml.safe_load(path.read_text())
    cfg = load_compare_config(dict(methods=",".join(entries), tasks="sst2", seeds=1, forward_budget=900,
                                   model="tiny:llama", out=str(tmp_path)), str(path))
    specs = {s.label: s for s in plan(cfg, tmp_path)}
    assert set(specs) == set(entries) and {s.config.method for s in specs.values()} == {"mezo", "fzoo"}
    for label, s in specs.items():
        assert s.config.lr == pytest.approx(float(entries[label]["lr"]))
        n = entries[label].get("method_options", {}).get("num_directions", 8)
        per_step = n + 1 if s.config.method == "fzoo" else 2
        assert s.config.steps * per_step == 900, label
    assert specs["fzoo"].config.steps == 100 and specs["fzoo-n4"].config.steps == 180
