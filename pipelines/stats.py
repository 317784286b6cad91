"""Paired statistics for comparisons of two methods run on the same seeds.

Runs of two methods with the same seed share the data sample, the data order and the test set, so they are *pairs*;
every figure here is a paired difference ``A - B`` (A the method, B the reference).

**Test accuracy: hierarchical paired bootstrap** (:func:`paired_accuracy`).  Two sources of noise decide whether a
difference in test accuracy is real: the training seed (which data sample, order and directions a run got) and the
finite test set.  Per seed, ``Δ_s = μ + a_s + E_s`` (a_s: the seed's effect, E_s: its test-set error), so
``Var Δ = σ_a²/S + 1ᵀΣ1/S²`` with ``Σ = Cov(E)``.  Examples are identified by their uid, and seeds that test the same
examples (on SST-2 every seed tests all 872 validation examples) share test-set error: Σ has off-diagonal mass that
the spread of the seed means cannot see, and that more seeds do not reduce.  The spread of the seed means,
``s²/S``, plus the mean off-diagonal covariance ``c̄`` of Σ is an unbiased estimate of ``Var Δ`` for any Σ.

The bootstrap draws both levels, keeping the pairs intact:

    Δ* = Δ + sqrt(S/(S-1))·(mean of S resampled seed means - Δ) + α·mean_s(Δ*_s - Δ_s)

- seeds are resampled with replacement (the factor makes that part's variance ``s²/S``);
- test examples are resampled with replacement, one draw of the union of examples per replicate, the *same* for
  both methods and for every seed that tested an example; ``Δ*_s`` is seed s's difference over that draw, and the
  draws estimate Σ;
- only the shared part of the test-set noise is added, ``α² = c̄ / Var*(mean_s(Δ*_s - Δ_s))``: the rest is already
  in the spread of the seed means (resampling seeds and then examples within each seed in full counts it twice,
  which with 5 seeds nearly doubles the variance when test noise dominates -- Davison & Hinkley 1997, *Bootstrap
  Methods and their Application*, §3.8);
- so ``Var* Δ* = s²/S + c̄``, floored at the bootstrap's ``Var*(mean_s Δ*_s)``, the test-set noise of the seed
  mean, which the true variance cannot be below (a departure from the plain estimator); with few seeds that
  variance is itself uncertain, so the distribution is rescaled about Δ until its central 95% spans ±t(ν)·sd*,
  ν by Welch-Satterthwaite (the seed part has S - 1 degrees of freedom), keeping the bootstrap's asymmetry.
  With disjoint test sets (c̄ = 0) this is the paired t interval over seed means (or, when the seeds agree more
  closely than their test noise allows, the floor); with one seed, only the test set's noise is known and the
  interval says nothing about other seeds.

Calibration (simulated seeds × examples with seed, example and interaction effects, 1000-2000 comparisons each):
the 95% interval covers the true difference 93-95.5% of the time with 5-10 seeds, shared or disjoint test sets,
seed- or test-dominated noise (``tests/test_stats.py``: 95.3% with the variance floor, 94.6% without); 93% with
3 seeds.

The interval is the 2.5/97.5% percentiles of Δ*, the p-value two-sided from the same distribution
(``2·min(P(Δ* ≤ 0), P(Δ* ≥ 0))``, each counted as (1 + #)/(B + 1), so never below 2/(B + 1)), the verdict
``better``/``worse`` when the interval excludes 0, else ``no difference``.  The *resolvable half-width* is the
interval's half-width: a true difference smaller than that is not called by this design (these seeds, this test
set).  ``seed_share`` is the part of the variance, ``1 - c̄ / Var``, that more seeds reduce; the rest is the
shared test set's.  Reproducible: a seeded generator.

**Per seed: McNemar's exact test** (:func:`mcnemar_exact`) on the two runs' test predictions: a two-sided binomial
test of the discordant pairs (b: A right, B wrong; c: A wrong, B right) against p = 1/2.

**Scalars per run (final dev loss, normalised area under the dev-loss curve)**: one number per run, so the paired
differences over seeds with a paired t interval (:func:`paired_t`): exact under normality and, unlike a bootstrap
over 5 values, not too narrow with few seeds.  :func:`loss_auc` is the trapezoid area under dev loss vs forward
passes divided by the forward range: the run's dev loss averaged over its training, weighted by forward passes,
less noisy than one final evaluation.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

LEVEL = 0.95
Z975 = 1.959963984540054
# two-sided 95% critical values of Student's t, df 1..30 (beyond: Cornish-Fisher expansion, error < 1e-4)
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"df={df} must be >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2) + \
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)


def verdict(lo: float, hi: float, higher_is_better: bool = True) -> str:
    """``better``/``worse`` when the 95% interval excludes 0, else ``no difference``."""
    if lo > 0:
        return "better" if higher_is_better else "worse"
    if hi < 0:
        return "worse" if higher_is_better else "better"
    return "no difference"


# =========================================================================== per seed: McNemar
def mcnemar_exact(correct_a, correct_b) -> dict:
    """McNemar's exact test: b = #(A right, B wrong), c = #(A wrong, B right);
    p = min(1, 2·P(X ≤ min(b, c))), X ~ Binomial(b + c, 1/2) (exact integer arithmetic)."""
    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b, c = int(np.sum(a & ~b_)), int(np.sum(~a & b_))
    n = b + c
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return {"b": b, "c": c, "p_value": min(1.0, float(2 * Fraction(tail, 2**n)))}


# =========================================================================== test accuracy: the bootstrap
def _example_draws(diffs: list[np.ndarray], cols: list[np.ndarray], n_cols: int, B: int, rng) -> np.ndarray:
    """(B, S): each seed's mean difference over resampled examples, one draw with replacement of the union of
    examples per replicate (an example's weight is shared by the seeds that tested it, and by both methods)."""
    S = len(diffs)
    d = np.zeros((n_cols, S))
    seen = np.zeros((n_cols, S))
    for s, (x, idx) in enumerate(zip(diffs, cols)):
        d[idx, s], seen[idx, s] = x, 1.0
    means = np.array([x.mean() for x in diffs])
    out = np.empty((B, S))
    chunk = max(1, 4_000_000 // max(n_cols, 1))  # bound the weight matrix at ~32 MB
    for start in range(0, B, chunk):
        m = min(chunk, B - start)
        picks = rng.integers(0, n_cols, size=(m, n_cols)) + (np.arange(m) * n_cols)[:, None]
        w = np.bincount(picks.ravel(), minlength=m * n_cols).reshape(m, n_cols).astype(np.float64)
        tot = w @ seen
        out[start:start + m] = np.where(tot > 0, (w @ d) / np.where(tot > 0, tot, 1.0), means)
    return out


def paired_accuracy(correct_a: Sequence, correct_b: Sequence, uids: Sequence | None = None, *, B: int = 4000,
                    seed: int = 0) -> dict:
    """Δ test accuracy (A - B, a fraction), its 95% interval, p-value and verdict from the hierarchical paired
    bootstrap described in the module docstring.

    ``correct_a[s]``, ``correct_b[s]``: per seed, whether each test example was predicted right (the same examples
    in the same order for both); ``uids[s]``: the examples' ids (default: positions, i.e. every seed tests the
    same examples).  Returns ``delta``, ``ci95``, ``p_value``, ``verdict``, ``half_width``, ``seed_share``,
    ``seeds``, ``per_seed`` (each seed's Δ)."""
    if len(correct_a) != len(correct_b) or not correct_a:
        raise ValueError("need the same number (>= 1) of seeds for both methods")
    diffs = []
    for a, b in zip(correct_a, correct_b):
        a, b = np.asarray(a, bool), np.asarray(b, bool)
        if a.shape != b.shape or a.ndim != 1 or a.size == 0:
            raise ValueError("each seed needs two equally long, non-empty 1-d arrays")
        diffs.append(a.astype(np.float64) - b)
    if uids is None:
        uids = [np.arange(d.size) for d in diffs]
    union, inverse = np.unique(np.concatenate([np.asarray(u) for u in uids]), return_inverse=True)
    cols, at = [], 0
    for d, u in zip(diffs, uids):
        if len(u) != d.size:
            raise ValueError("uids must match the predictions seed by seed")
        cols.append(inverse[at:at + d.size])
        at += d.size
    S = len(diffs)
    per_seed = np.array([d.mean() for d in diffs])
    delta = float(per_seed.mean())
    rng = np.random.default_rng(seed)
    ex = _example_draws(diffs, cols, union.size, B, rng) - per_seed  # (B, S): test-set noise of each seed's Δ
    test = ex.mean(1)
    seed_share = None
    if S == 1:  # only the test set's noise is known
        boot = delta + test
    else:
        cov = np.atleast_2d(np.cov(ex, rowvar=False))
        c_bar = max(0.0, float((cov.sum() - np.trace(cov)) / (S * (S - 1))))  # test noise common to the seeds
        v_seed = float(per_seed.var(ddof=1)) / S  # spread of the seed means: seeds + per-seed test noise
        var_test = float(test.var())
        # floor: Var Δ = σ_a²/S + 1ᵀΣ1/S² is at least the test-set noise of the seed mean, 1ᵀΣ1/S², whose
        # bootstrap estimate is var_test; with few seeds whose Δs happen to coincide s²/S + c̄ falls below it (to
        # 0 with two equal Δs and c̄ = 0: a zero-width interval over runs that disagree on dozens of examples)
        shared = max(c_bar, var_test - v_seed)  # the floor's addition is per-seed test noise: more seeds reduce it
        alpha = math.sqrt(shared / var_test) if var_test > 0 else 0.0
        seeds_part = per_seed[rng.integers(0, S, size=(B, S))].mean(1) - delta
        total = v_seed + shared
        # Welch-Satterthwaite: the seed part is estimated from S values (S - 1 degrees of freedom)
        df = (S - 1) * (total / v_seed) ** 2 if v_seed > 0 else math.inf
        boot = delta + math.sqrt(S / (S - 1)) * seeds_part + alpha * test  # variance: v_seed + shared
        # the central 95% rescaled to the half-width of a t interval, t(ν)·sd, keeping the bootstrap's asymmetry
        lo, hi = np.quantile(boot, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
        if hi > lo:
            t = t975(max(1, math.floor(df))) if math.isfinite(df) else Z975
            boot = delta + t * float(boot.std()) / ((hi - lo) / 2) * (boot - delta)
        seed_share = 1.0 - c_bar / total if total > 0 else 0.0
    lo, hi = (float(x) for x in np.quantile(boot, [(1 - LEVEL) / 2, (1 + LEVEL) / 2]))
    below, above = int(np.sum(boot <= 0)), int(np.sum(boot >= 0))
    p = min(1.0, 2 * min(below + 1, above + 1) / (B + 1))
    return {"delta": delta, "ci95": [lo, hi], "p_value": p, "verdict": verdict(lo, hi),
            "half_width": (hi - lo) / 2, "seed_share": seed_share, "seeds": S,
            "per_seed": [float(x) for x in per_seed]}


# =========================================================================== per-run scalars
def paired_t(a: Sequence[float], b: Sequence[float], higher_is_better: bool = False) -> dict:
    """Mean of the paired differences a - b over seeds with a 95% paired t interval (one seed: no interval)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if d.size == 0:
        raise ValueError("no pairs")
    m = float(d.mean())
    if d.size == 1:
        return {"delta": m, "ci95": None, "verdict": None, "half_width": None, "seeds": 1}
    h = t975(d.size - 1) * float(d.std(ddof=1)) / math.sqrt(d.size)
    return {"delta": m, "ci95": [m - h, m + h], "verdict": verdict(m - h, m + h, higher_is_better),
            "half_width": h, "seeds": int(d.size)}


def loss_auc(curve: Sequence[dict]) -> float | None:
    """Normalised area under dev loss vs forward passes (trapezoid over the evaluations / forward range):
    the dev loss averaged over the run.  None for fewer than two evaluations or no forward range."""
    if len(curve) < 2:
        return None
    f = np.array([e["forwards"] for e in curve], float)
    y = np.array([e["dev_loss"] for e in curve], float)
    span = f[-1] - f[0]
    if span <= 0:
        return None
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(f)) / span)
