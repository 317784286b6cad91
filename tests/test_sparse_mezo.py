"""Sparse MeZO: the mask (magnitude and random), its exactness across the three
passes, the estimator's support and mean, replay, and config errors."""
import math

import pytest
import torch

import zoplatform
from zoplatform.algorithms.sparse_mezo import _pack, _unpack, magnitude_threshold
from zoplatform.params import blocks_from_named


def param(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(*shape, generator=g, dtype=dtype))


def test_bit_packing_round_trips():
    g = torch.Generator().manual_seed(0)
    for n in (1, 7, 8, 9, 1000, 1003):
        m = torch.rand(n, generator=g) < 0.3
        packed = _pack(m)
        assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
        assert torch.equal(_unpack(packed, n), m)


def test_one_step_changes_exactly_the_smallest_fraction():
    x = param((40, 50))
    x0 = x.detach().clone()
    opt = zoplatform.optimizer("sparse-mezo", [("w", x)], lr=1e-2, eps=1e-3, sparsity=0.8, seed=1)
    opt.step(lambda: ((x - 1.0) ** 2).sum())
    changed = x.detach() != x0
    k = math.ceil(0.2 * x.numel())
    h = x0.abs().view(-1).kthvalue(k).values
    assert int(changed.sum()) == k == int((x0.abs() <= h).sum())
    assert not bool((changed & (x0.abs() > h)).any())  # the estimate is zero off the mask, bit for bit
    assert opt.last_record.extra["perturbed_frac"] == pytest.approx(0.2)


def test_mask_is_identical_in_the_three_passes():
    """The ±ε evaluations see θ ± ε m⊙z with the *same* m, though θ moves in between."""
    x = param((30, 33), seed=2)  # 990 entries: not a multiple of 8, several chunks
    x0 = x.detach().clone()
    seen = []

    def closure():
        seen.append(x.detach().clone())
        return (x ** 2).sum()

    opt = zoplatform.optimizer("sparse-mezo", [("w", x)], lr=1e-3, eps=1e-2, sparsity=0.6, chunk_size=1024)
    opt.method.scratch.chunk = 256  # force several chunks per tensor (the mask is packed per chunk)
    opt.step(closure)
    plus, minus = seen[0] - x0, seen[1] - x0
    assert torch.equal(plus != 0, minus != 0)
    torch.testing.assert_close(plus, -minus, atol=1e-6, rtol=0)
    moved = x.detach() != x0
    assert torch.equal(moved, plus != 0)  # the update used the same mask again


def test_estimator_mean_is_the_masked_gradient():
    """E[g·m⊙z] = m⊙∇f on f = ½ Σ a_i x_i² (the central difference is exact on quadratics)."""
    x0 = param((5, 6), seed=3, dtype=torch.float64).detach()
    a = torch.linspace(0.5, 3.0, 30, dtype=torch.float64).view(5, 6)
    method = zoplatform.make("sparse-mezo", lr=1.0, eps=1e-2, sparsity=0.5)
    n, ests = 3000, []
    for i in range(n):
        x = torch.nn.Parameter(x0.clone())
        blocks = blocks_from_named([("w", x)])
        method.step(method.init(blocks), blocks, lambda: 0.5 * (a * x.detach() ** 2).sum(), 1000 + i, 1.0)
        ests.append(x0 - x.detach())  # lr = 1: θ' = θ − g·m⊙z
    ests = torch.stack(ests)
    mask = x0.abs() <= x0.abs().view(-1).kthvalue(15).values
    truth = a * x0 * mask
    mean, se = ests.mean(0), ests.std(0) / math.sqrt(n)
    assert torch.all(ests[:, ~mask] == 0)
    assert torch.all((mean - truth).abs() <= 4.5 * se + 1e-9), (mean, truth)


def test_subsampled_threshold_matches_the_sparsity():
    x = param((200, 100), seed=4)
    h = magnitude_threshold(x, 0.25, 1024, seed=9)
    frac = float((x.abs() <= h).float().mean())
    assert abs(frac - 0.25) < 4.5 * math.sqrt(0.25 * 0.75 / 1024)
    opt = zoplatform.optimizer("sparse-mezo", [("w", x)], lr=1e-3, sparsity=0.75, threshold_sample=1024)
    opt.step(lambda: (x ** 2).sum())
    assert abs(opt.last_record.extra["perturbed_frac"] - 0.25) < 4.5 * math.sqrt(0.25 * 0.75 / 1024)


def test_random_mask_variant():
    x = param((50, 40), seed=5)
    opt = zoplatform.optimizer("sparse-mezo", [("w", x)], lr=1e-2, sparsity=0.7, mask="random", seed=2)
    supports = []
    for _ in range(2):
        before = x.detach().clone()
        opt.step(lambda: ((x - 1.0) ** 2).sum())
        supports.append(x.detach() != before)
    n = x.numel()
    for s in supports:
        assert abs(float(s.float().mean()) - 0.3) < 4.5 * math.sqrt(0.3 * 0.7 / n)
    assert not torch.equal(supports[0], supports[1])  # a fresh mask every step
    big = x.detach().abs() > x.detach().abs().median()
    assert bool((supports[0] & big).any())  # not restricted to small weights


def test_which_tensors_are_masked():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.LayerNorm(6))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = zoplatform.optimizer("sparse-mezo", net.named_parameters(), lr=1e-2, sparsity=0.5, unmasked="frozen")
    x, y = torch.randn(2, 8), torch.randn(2, 6)  # (a LayerNorm output's sum of squares is constant: g would be ~0)
    opt.step(lambda: (net(x) - y).pow(2).sum())
    after = net.state_dict()
    for k in ("0.bias", "1.weight", "1.bias"):  # 1-D tensors: not masked, frozen
        assert torch.equal(after[k], before[k])
    assert int((after["0.weight"] != before["0.weight"]).sum()) == 24
    net2 = torch.nn.Sequential(torch.nn.Linear(8, 6))
    b2 = net2[0].bias.detach().clone()
    opt = zoplatform.optimizer("sparse-mezo", net2.named_parameters(), lr=1e-2, sparsity=0.5, masked="all")
    opt.step(lambda: net2(torch.ones(2, 8)).pow(2).sum())
    assert int((net2[0].bias.detach() != b2).sum()) == 3


# replay, resume and bad configs: tests/test_contract.py (the methods table)
