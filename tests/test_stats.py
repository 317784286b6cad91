"""Paired statistics (pipelines/stats.py): interval coverage on simulated paired runs with a known difference,
identical runs, McNemar against a hand-computed table, t quantiles, the dev-loss AUC."""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from pipelines import stats

PHI = NormalDist().cdf


def simulate(rng, *, seeds=5, n=200, theta_a=0.55, theta_b=0.45, example_sd=1.5, method_example_sd=0.3,
             seed_sd=0.15):
    """Two methods' test predictions over ``seeds`` seeds that share one test set of ``n`` examples (as every
    seed shares SST-2's validation set): example i of seed s is right for method m when
    ε < θ_m + u_i + v_mi + a_ms, with a shared difficulty u_i, a method-specific example effect v_mi, a
    per-(method, seed) effect a_ms and independent ε ~ N(0, 1).  The population difference (over seeds and
    examples) is known in closed form: E Φ(θ + X) = Φ(θ / sqrt(1 + Var X)) for Gaussian X."""
    scale = math.sqrt(1 + example_sd**2 + method_example_sd**2 + seed_sd**2)
    truth = PHI(theta_a / scale) - PHI(theta_b / scale)
    u = rng.normal(0, example_sd, n)
    v = rng.normal(0, method_example_sd, (2, n))
    a = rng.normal(0, seed_sd, (2, seeds, 1))
    right = rng.normal(size=(2, seeds, n)) < np.array([theta_a, theta_b])[:, None, None] + u + v[:, None, :] + a
    return truth, list(right[0]), list(right[1])


def test_the_95_interval_covers_a_known_difference_95_percent_of_the_time():
    """2000 simulated comparisons (5 seeds sharing a 200-example test set; seeds and test set both matter):
    the interval covers the true difference in 93-97% of them.  Deterministic (seeded); the band is ±4 binomial
    standard errors of the coverage estimate around 95% (over 6000 other draws this design covered 94.9%)."""
    rng = np.random.default_rng(16)
    draws, hits, widths = 2000, 0, []
    for i in range(draws):
        truth, a, b = simulate(rng)
        r = stats.paired_accuracy(a, b, B=400, seed=i)
        hits += r["ci95"][0] <= truth <= r["ci95"][1]
        widths.append(r["half_width"])
    print(f"coverage {hits / draws:.3f}, mean half-width {100 * np.mean(widths):.2f} points")
    assert 0.93 <= hits / draws <= 0.97, hits / draws
    assert 0.01 < np.mean(widths) < 0.1  # a few points: informative, not degenerate


def test_identical_runs_give_zero_difference_with_a_zero_width_interval():
    rng = np.random.default_rng(0)
    right = [rng.random(300) < 0.7 for _ in range(4)]
    r = stats.paired_accuracy(right, [x.copy() for x in right])
    assert r["delta"] == 0 and r["ci95"] == [0.0, 0.0] and r["half_width"] == 0
    assert r["verdict"] == "no difference" and r["p_value"] == 1.0
    one = stats.paired_accuracy(right[:1], right[:1])
    assert one["ci95"] == [0.0, 0.0] and one["verdict"] == "no difference"
    t = stats.paired_t([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert t["delta"] == 0 and t["ci95"] == [0.0, 0.0] and t["verdict"] == "no difference"


def test_two_seeds_with_equal_differences_keep_the_test_sets_noise():
    """Two seeds whose Δs coincide (-2 of 872 each) over runs that disagree on 40 examples per seed, different
    examples in each seed: the spread of the seed means is 0, but the interval keeps the test set's noise
    (about ±2·sqrt(40/2)/872 ≈ 1 point), so no difference is called (before the floor: a zero-width 'worse')."""
    n = 872
    a, b = [], []
    for s in range(2):
        idx = np.arange(40) + 40 * s  # this seed's discordant examples
        x, y = np.ones(n, bool), np.ones(n, bool)
        x[idx[:21]] = False  # A wrong, B right on 21
        y[idx[21:]] = False  # A right, B wrong on 19
        a.append(x)
        b.append(y)
    r = stats.paired_accuracy(a, b)
    assert r["per_seed"] == pytest.approx([-2 / n, -2 / n])
    assert r["verdict"] == "no difference" and r["ci95"][0] < 0 < r["ci95"][1]
    assert r["half_width"] > 0.005  # > 0.5 points, not the zero width of the seed spread alone


def test_a_clear_difference_is_called_in_the_right_direction():
    rng = np.random.default_rng(1)
    a = [rng.random(500) < 0.8 for _ in range(5)]
    b = [x & (rng.random(500) < 0.8) for x in a]  # B loses ~20% of A's right answers
    better = stats.paired_accuracy(a, b)
    assert better["verdict"] == "better" and better["ci95"][0] > 0 and better["p_value"] < 0.01
    assert better["delta"] == pytest.approx(np.mean([x.mean() - y.mean() for x, y in zip(a, b)]))
    worse = stats.paired_accuracy(b, a)
    assert worse["verdict"] == "worse" and worse["delta"] == pytest.approx(-better["delta"])
    assert stats.paired_accuracy(a, b) == better  # seeded: the same report twice


def test_examples_shared_by_seeds_are_resampled_together():
    """The same per-seed differences, once on one shared test set and once on disjoint ones: with a shared set
    the example-level noise does not average out over seeds, so the interval is wider."""
    rng = np.random.default_rng(2)
    base_a, base_b = rng.random(200) < 0.7, rng.random(200) < 0.7  # one systematic pattern of disagreements
    a = [base_a.copy() for _ in range(4)]
    b = [base_b.copy() for _ in range(4)]
    for x in a:  # a little seed-to-seed variation
        flip = rng.random(200) < 0.02
        x[flip] = ~x[flip]
    shared = stats.paired_accuracy(a, b, [np.arange(200)] * 4)
    disjoint = stats.paired_accuracy(a, b, [np.arange(200) + 200 * s for s in range(4)])
    assert shared["delta"] == disjoint["delta"]
    assert shared["half_width"] > 1.5 * disjoint["half_width"]
    assert shared["seed_share"] < 0.5 < disjoint["seed_share"]


def test_mcnemar_exact_against_a_hand_computed_table():
    # 2x2 table: both right 50, A right / B wrong b = 9, A wrong / B right c = 2, both wrong 39
    a = np.array([1] * 50 + [1] * 9 + [0] * 2 + [0] * 39, bool)
    b = np.array([1] * 50 + [0] * 9 + [1] * 2 + [0] * 39, bool)
    r = stats.mcnemar_exact(a, b)
    # two-sided exact binomial: 2 * P(X <= 2), X ~ Bin(11, 1/2) = 2 * (1 + 11 + 55) / 2048 = 134 / 2048
    assert (r["b"], r["c"]) == (9, 2)
    assert r["p_value"] == pytest.approx(134 / 2048, rel=1e-12)
    assert stats.mcnemar_exact(b, a)["p_value"] == r["p_value"]  # symmetric
    assert stats.mcnemar_exact(a, a) == {"b": 0, "c": 0, "p_value": 1.0}  # no discordant pairs
    # b = c: the smaller tail is more than half, so p is capped at 1
    assert stats.mcnemar_exact([1, 0], [0, 1])["p_value"] == 1.0


def test_t_quantiles_have_97_5_percent_below_them():
    """The t distribution's CDF at t975(df), integrated numerically from its density, is 0.975."""
    for df in (1, 2, 4, 9, 30, 31, 50, 200):
        t = stats.t975(df)
        x = np.linspace(0.0, t, 200_001)
        log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
        pdf = np.exp(log_c - (df + 1) / 2 * np.log1p(x**2 / df))
        cdf = 0.5 + float(np.sum((pdf[1:] + pdf[:-1]) / 2 * np.diff(x)))
        assert cdf == pytest.approx(0.975, abs=2e-5), df


def test_paired_t_interval_by_hand():
    a, b = [0.70, 0.60, 0.65], [0.60, 0.55, 0.50]
    d = np.array(a) - np.array(b)  # 0.10, 0.05, 0.15
    h = 4.302653 * d.std(ddof=1) / math.sqrt(3)
    r = stats.paired_t(a, b, higher_is_better=True)
    assert r["delta"] == pytest.approx(0.1) and r["ci95"] == pytest.approx([0.1 - h, 0.1 + h])
    assert r["verdict"] == "no difference"  # 0.1 ± 0.124 with 3 seeds
    lower = stats.paired_t([0.50, 0.52, 0.49, 0.51], [0.60, 0.61, 0.60, 0.62])  # a loss: lower is better
    assert lower["verdict"] == "better" and lower["ci95"][1] < 0
    assert stats.paired_t([0.5], [0.6])["ci95"] is None  # one seed: no interval


def test_loss_auc_is_the_trapezoid_mean_over_forward_passes():
    curve = [{"forwards": 0, "dev_loss": 1.0}, {"forwards": 100, "dev_loss": 0.8}, {"forwards": 300, "dev_loss": 0.4}]
    assert stats.loss_auc(curve) == pytest.approx((0.9 * 100 + 0.6 * 200) / 300)
    assert stats.loss_auc(curve[:1]) is None  # zero-shot: one evaluation, no curve
