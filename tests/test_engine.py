"""Engine contract (registry tier) and estimator properties on small torch problems."""
import math

import pytest
import torch

import zoplatform
from zoplatform import rng
from zoplatform.params import Scratch, axpy_, blocks_from_named, model_blocks, two_point_


def small_net(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 2))
    return net


def loss_fn(net, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 6, generator=g), torch.randn(16, 2, generator=g)
    return lambda: torch.nn.functional.mse_loss(net(x), y)


# quadratic, lr 0, state_dict resume for every method: tests/test_contract.py


def test_trajectory_replay_is_bit_exact(tmp_path):
    net = small_net()
    base = {k: v.clone() for k, v in net.state_dict().items()}
    opt = zoplatform.optimizer("mezo", net.named_parameters(), lr=1e-2, eps=1e-3, weight_decay=0.1, seed=11)
    for _ in range(25):
        opt.step(loss_fn(net))
    path = opt.trajectory.save(tmp_path / "traj.jsonl")
    traj = zoplatform.Trajectory.load(path)
    assert len(traj.records) == 25 and path.stat().st_size < 25 * 200 + 500

    fresh = small_net(seed=5)
    fresh.load_state_dict(base)
    method = zoplatform.make(traj.method, **traj.config)
    blocks = blocks_from_named(fresh.named_parameters())
    zoplatform.replay(method, blocks, traj.records)
    for a, b in zip(net.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_directions_ignore_global_rng_and_frozen_parameters():
    def run(global_seed, freeze_first):
        torch.manual_seed(global_seed)
        net = small_net()
        if freeze_first:
            net[0].weight.requires_grad_(False)
        frozen = net[0].weight.detach().clone()
        opt = zoplatform.optimizer("mezo", net.named_parameters(), lr=1e-2, eps=1e-3, seed=1)
        torch.manual_seed(global_seed + 1000)
        opt.step(loss_fn(net))
        if freeze_first:
            assert torch.equal(net[0].weight, frozen)  # frozen tensors are never touched
        return opt.last_record, net

    r1, n1 = run(0, False)
    r2, n2 = run(12345, False)
    assert r1 == r2 and all(torch.equal(a, b) for a, b in zip(n1.parameters(), n2.parameters()))
    # the LayerNorm's direction is the same whether or not another tensor is trainable
    blocks_all = blocks_from_named(small_net().named_parameters())
    net = small_net()
    net[0].weight.requires_grad_(False)
    blocks_some = blocks_from_named(net.named_parameters())
    s = Scratch(1024)
    law = rng.make_law("gaussian")
    pick = lambda bl: [b for b in bl if b.name == "1.weight"]
    for bl in (pick(blocks_all), pick(blocks_some)):
        bl[0].param.data.zero_()
        axpy_(bl, 42, law, s, 1.0)
    assert torch.equal(pick(blocks_all)[0].param, pick(blocks_some)[0].param)


def test_no_decay_set_is_explicit():
    net = small_net()
    blocks = model_blocks(net)
    decayed = {b.name for b in blocks if b.decay}
    assert decayed == {"0.weight", "2.weight"}  # biases and LayerNorm weights exempt
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    opt = zoplatform.optimizer("mezo", net.named_parameters(), lr=0.5, eps=1e-3, weight_decay=1.0,
                               no_decay={b.name for b in blocks if not b.decay})
    opt.step(lambda: torch.tensor(0.0))  # g = 0: only decay (and restore) acts
    assert torch.allclose(net[0].weight, torch.full_like(net[0].weight, 0.5), atol=1e-5)
    assert torch.allclose(net[1].weight, torch.ones(5), atol=1e-5)


@pytest.mark.parametrize("law", ["gaussian", "rademacher"])
def test_two_point_estimate_is_unbiased_on_a_quadratic(law):
    """E[g·z] = ∇f for f(x) = ½ xᵀAx (the central difference is exact on quadratics)."""
    d, n = 8, 4000
    A = torch.diag(torch.linspace(0.5, 3.0, d, dtype=torch.float64))
    x0 = torch.linspace(-1, 1, d, dtype=torch.float64)
    true = A @ x0
    L = rng.make_law(law)
    s = Scratch(1024)
    ests = []
    for i in range(n):
        x = torch.nn.Parameter(x0.clone().float())
        blocks = blocks_from_named([("x", x)])
        lp, lm = two_point_(blocks, i, L, s, lambda x=x: float(0.5 * (x.double() @ A @ x.double())), 1e-2)
        z = torch.zeros(d)
        axpy_([blocks[0].__class__("z", z, True, blocks[0].key)], i, L, s, 1.0)
        ests.append((lp - lm) / 2e-2 * z.double())
    ests = torch.stack(ests)
    mean, se = ests.mean(0), ests.std(0) / math.sqrt(n)
    assert torch.all((mean - true).abs() < 4.5 * se + 1e-3), (mean, true)


def test_rademacher_and_pool_laws():
    g = rng.generator(0)
    out = torch.empty(100_003)
    r = rng.make_law("rademacher").fill_(out, g).clone()
    assert set(r.unique().tolist()) == {-1.0, 1.0} and abs(float(r.mean())) < 0.02
    p = rng.make_law("pool").fill_(torch.empty(50_000), g)
    assert abs(float(p.mean())) < 0.05 and abs(float(p.var()) - 1) < 0.05
    with pytest.raises(zoplatform.ConfigError, match="unknown direction law 'sobol'"):
        rng.make_law("sobol")


def test_bad_hyperparameters_fail_at_construction():
    x = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(zoplatform.ConfigError, match=r"lr=-1.0 is invalid"):
        zoplatform.optimizer("mezo", [x], lr=-1.0)
    with pytest.raises(zoplatform.ConfigError, match="unknown option 'epsilon'"):
        zoplatform.optimizer("mezo", [x], epsilon=1.0)
    with pytest.raises(zoplatform.ConfigError, match="unknown method 'adamzo'; choose one of: .*mezo"):
        zoplatform.optimizer("adamzo", [x])
    with pytest.raises(RuntimeError, match="needs a closure"):
        zoplatform.optimizer("mezo", [x]).step()


def test_registry_rejects_a_name_clash():
    with pytest.raises(ValueError, match="already registered"):
        zoplatform.register(zoplatform.MeZO)


def test_a_step_under_inference_mode_then_outside_it():
    """Scratch buffers first allocated under inference_mode stay usable outside it."""
    x = torch.nn.Parameter(torch.ones(10))
    opt = zoplatform.optimizer("mezo", [("x", x)], lr=0.01, eps=1e-3)
    with torch.inference_mode():
        opt.step(lambda: (x ** 2).sum())
    opt.step(lambda: (x ** 2).sum())
    assert opt.steps == 2


def test_norm_modules_are_found_by_type_not_by_a_name_substring():
    from zoplatform.params import is_norm_module

    class LlamaRMSNorm(torch.nn.Module):  # transformers' norms are plain modules: their type name marks them
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(4))

    class Normaliser(torch.nn.Module):  # "norm" inside a name is not enough
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(4))

    net = torch.nn.ModuleDict({"ln": torch.nn.LayerNorm(4), "rms": LlamaRMSNorm(), "not_a_norm": Normaliser(),
                               "norm_proj": torch.nn.Linear(4, 4, bias=False)})
    assert is_norm_module(net["ln"]) and is_norm_module(net["rms"]) and not is_norm_module(net["not_a_norm"])
    assert zoplatform.no_decay_names(net) == {"ln.weight", "ln.bias", "rms.weight"}
