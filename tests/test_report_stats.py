"""Effect statistics: bootstrap CI, paired p-values and verdict wording, against hand-computed values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from metaocl.report.stats import (
    bootstrap_band,
    bootstrap_ci,
    classify,
    markdown_effects_table,
    paired_effect,
    paired_t_pvalue,
    sign_flip_pvalue,
    verdict_line,
)


def test_bootstrap_ci_matches_the_exact_bootstrap_distribution():
    # With 3 values there are 27 equally likely resamples; the extreme means (0 and 5) have mass 1/27 > 2.5%
    # each, so the 95% percentile interval is exactly [0, 5]. Inner case: 5 values, check against enumeration.
    assert bootstrap_ci([0.0, 1.0, 5.0], seed=0) == (0.0, 5.0)
    values = np.array([0.02, 0.03, 0.04, 0.025, 0.035])
    means = np.array([values[list(idx)].mean() for idx in itertools.product(range(5), repeat=5)])
    exact_lo, exact_hi = np.percentile(means, [2.5, 97.5])
    lo, hi = bootstrap_ci(values, n_boot=20_000, seed=1)
    assert abs(lo - exact_lo) < 0.0012 and abs(hi - exact_hi) < 0.0012
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)  # seeded
    assert all(math.isnan(v) for v in bootstrap_ci([0.3]))


def test_paired_t_pvalue_is_the_textbook_value():
    a = np.array([0.31, 0.33, 0.35, 0.32, 0.34])
    b = a - np.array([0.02, 0.03, 0.04, 0.025, 0.035])
    # d: mean 0.03, sd 0.0079057 -> t = 8.4853 with 4 df -> two-sided p = 0.0010576 (t table)
    assert paired_t_pvalue(a, b) == pytest.approx(0.0010576, rel=1e-3)
    assert paired_t_pvalue([1.0, 2.0], [1.0, 2.0]) == 1.0  # zero differences
    assert paired_t_pvalue([1.0, 2.0, 3.0], [0.0, 1.0, 2.0]) == pytest.approx(2 / 8)  # constant: exact sign-flip
    assert math.isnan(paired_t_pvalue([1.0], [0.0]))


def test_sign_flip_pvalue_exact_and_monte_carlo():
    assert sign_flip_pvalue([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)
    # [1, -2, 3]: |mean| = 2/3; sign patterns with |sum| >= 2: sums of +-1 +-2 +-3 -> {6,0,2,-4,4,-2,0,-6}: 6 of 8
    assert sign_flip_pvalue([1.0, -2.0, 3.0]) == pytest.approx(6 / 8)
    big = np.full(20, 0.05) + np.linspace(-0.01, 0.01, 20)
    p = sign_flip_pvalue(big, n_perm=5000, seed=0)
    assert 0 < p <= 2 / 5001 + 1e-12  # never 0, about the smallest possible


def test_verdict_wording_for_each_outcome():
    good = paired_effect("meta-OCL", "d1consis", "d2consis", [0.32, 0.33, 0.35, 0.31, 0.34],
                         [0.30, 0.30, 0.31, 0.285, 0.305], measure="em", stage=2, seeds=range(5),
                         configuration="train.batch_size=128")
    assert good.mean == pytest.approx(0.03)
    line = verdict_line(good)
    assert line.startswith("train.batch_size=128: meta-OCL reproduced: d1consis - d2consis = +0.030 [0.02")
    assert ", p=0.001, 5 seeds (em, end of stage 2)" in line
    assert verdict_line(good, with_context=False).startswith("meta-OCL reproduced: d1consis - d2consis = +0.030 [")

    noisy = paired_effect("meta-OCL", "d1consis", "d2consis", [0.3, 0.2, 0.4], [0.25, 0.3, 0.3], measure="em", stage=2)
    assert noisy.mean > 0 and noisy.outcome == "inconclusive"
    assert verdict_line(noisy, with_context=False).startswith("meta-OCL inconclusive: d1consis - d2consis = +0.017 [")

    none = paired_effect("OCL", "qd1consis", "qd2incons", [0.3, 0.2, 0.4], [0.3, 0.25, 0.4], measure="acc", stage=1)
    assert none.outcome == "not shown"
    reversed_ = paired_effect("OCL", "qd1consis", "qd2incons", [0.1, 0.11, 0.12, 0.1], [0.2, 0.2, 0.22, 0.21],
                              measure="acc", stage=1)
    assert reversed_.outcome == "reversed"
    single = paired_effect("OCL", "qd1consis", "qd2incons", [0.5], [0.4], measure="acc", stage=1)
    assert verdict_line(single, with_context=False) == (
        "OCL inconclusive: qd1consis - qd2incons = +0.100 [no CI], p=n/a, 1 seed "
        "(need at least 2 seeds for a CI and a test)")
    # NaN pairs (a seed that did not log a split) are dropped, not averaged as 0.
    partial = paired_effect("OCL", "a", "b", [0.5, math.nan, 0.6], [0.4, 0.1, 0.5], measure="acc", stage=1, seeds=[0, 1, 2])
    assert partial.n == 2 and partial.seeds == [0, 2]


def test_classify_boundaries():
    assert classify(0.03, 0.01, 0.05, 0.01, 10) == "reproduced"
    assert classify(0.03, 0.01, 0.05, 0.06, 10) == "inconclusive"  # CI above 0 but the test disagrees
    assert classify(0.03, -0.01, 0.05, 0.01, 10) == "inconclusive"
    assert classify(-0.03, -0.05, -0.01, 0.01, 10) == "reversed"
    assert classify(0.0, -0.01, 0.01, 1.0, 10) == "not shown"


def test_bootstrap_band_and_markdown_table():
    m = np.array([[0.1, 0.2, np.nan], [0.3, 0.4, 0.5], [0.2, 0.3, np.nan]])
    mean, lo, hi = bootstrap_band(m)
    assert mean == pytest.approx([0.2, 0.3, 0.5])
    assert lo[0] <= 0.2 <= hi[0] and np.isnan(lo[2]) and np.isnan(hi[2])  # one seed at that point: no band
    e = paired_effect("meta-OCL", "d1consis", "d2consis", [0.32, 0.33, 0.35], [0.30, 0.30, 0.31], measure="em", stage=2)
    table = markdown_effects_table([e], {("meta-OCL", 2): 0.03})
    assert "| (all) | meta-OCL | em/d1consis - em/d2consis | 2 | +0.030 |" in table
    assert table.splitlines()[0].endswith("| paper (approx.) | verdict |") and "| +0.030 | reproduced |" in table
