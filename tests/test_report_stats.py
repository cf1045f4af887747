"""Effect statistics: t-based CIs, paired p-values and verdict wording, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metaocl.report.stats import (
    DIFFERENCE,
    PROPORTION,
    bootstrap_band,
    classify,
    markdown_effects_table,
    mean_ci,
    mean_ci_text,
    paired_effect,
    paired_t,
    paired_t_pvalue,
    sign_flip_pvalue,
    verdict_line,
)

T_975 = {2: 4.302652729911275, 4: 2.7764451051977987}  # t-table: 97.5% quantile with 2 and 4 degrees of freedom


def test_paired_t_ci_is_the_hand_computed_interval_and_agrees_with_p():
    a = np.array([0.31, 0.33, 0.35, 0.32, 0.34])
    d = np.array([0.02, 0.03, 0.04, 0.025, 0.035])
    # mean 0.03; sd = sqrt(sum((d - 0.03)^2) / 4) = sqrt(0.00025 / 4) = 0.0079057; se = sd / sqrt(5) = 0.0035355
    # CI = 0.03 -+ 2.7764 * 0.0035355 = [0.020184, 0.039816]
    p, lo, hi = paired_t(a, a - d)
    assert lo == pytest.approx(0.03 - T_975[4] * 0.0079057 / math.sqrt(5), abs=1e-6)
    assert hi == pytest.approx(0.03 + T_975[4] * 0.0079057 / math.sqrt(5), abs=1e-6)
    assert (lo, hi) == pytest.approx((0.020184, 0.039816), abs=1e-6)
    assert p == pytest.approx(0.0010576, rel=1e-3)
    # CI and p agree by construction: a difference whose CI just covers 0 has p just above 0.05.
    for shift in (0.0, 0.01, 0.019, 0.0205, 0.03):
        p, lo, hi = paired_t(d - shift, np.zeros(5))
        assert (lo > 0) == (p < 0.05), (shift, p, lo)
    # Degenerate cases: fewer than 2 pairs; zero variance (CI collapses to the value, exact sign-flip p)
    assert all(math.isnan(v) for v in paired_t([0.5], [0.4]))
    assert paired_t([1.0, 2.0, 3.0], [0.0, 1.0, 2.0]) == pytest.approx((2 / 8, 1.0, 1.0))
    assert paired_t([1.0, 2.0], [1.0, 2.0]) == (1.0, 0.0, 0.0)


def test_mean_ci_is_the_one_sample_t_interval():
    # [0.2, 0.4, 0.6]: mean 0.4, sd 0.2, se 0.2/sqrt(3) = 0.11547; t(2) = 4.3027 -> 0.4 -+ 0.49683
    mean, lo, hi = mean_ci([0.2, 0.4, 0.6, math.nan])
    assert mean == pytest.approx(0.4) and (lo, hi) == pytest.approx((0.4 - 0.496837, 0.4 + 0.496837), abs=1e-5)
    assert mean_ci_text([0.2, 0.4, 0.6], bounds=None) == "0.400 [-0.097, 0.897]"
    assert mean_ci_text([0.2, 0.4, 0.6]) == "0.400 [0.000, 0.897]"  # an accuracy: clipped to [0, 1]
    assert mean_ci_text([0.25]) == "0.250" and mean_ci_text([]) == "n/a"
    # accuracies near 1: 0.95 +- 4.3027 * 0.05/sqrt(3) reaches 1.074 unclipped
    assert mean_ci([0.9, 0.95, 1.0], bounds=PROPORTION) == pytest.approx((0.95, 0.95 - 0.124208, 1.0), abs=1e-5)
    assert mean_ci([-0.9, -0.95, -1.0], bounds=DIFFERENCE)[1:] == pytest.approx((-1.0, -0.95 + 0.124208), abs=1e-5)


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
    assert sign_flip_pvalue([0.0, 0.0, 0.0]) == 1.0
    # 16 values: all 65536 patterns are enumerated; only the all-plus and all-minus reach |mean| = 1
    assert sign_flip_pvalue(np.ones(16)) == pytest.approx(2 / 2**16)
    big = np.full(20, 0.05) + np.linspace(-0.01, 0.01, 20)
    p = sign_flip_pvalue(big, n_resamples=5000, seed=0)
    assert p == pytest.approx(2 / 5001)  # Monte Carlo: the observed pattern counts, so never 0


def test_verdict_wording_for_each_outcome():
    good = paired_effect("meta-OCL", "d1consis", "d2consis", [0.32, 0.33, 0.35, 0.31, 0.34],
                         [0.30, 0.30, 0.31, 0.285, 0.305], measure="em", stage=2, seeds=range(5),
                         configuration="train.batch_size=128")
    assert good.mean == pytest.approx(0.03)
    line = verdict_line(good)
    assert line.startswith("train.batch_size=128: meta-OCL reproduced: d1consis - d2consis = +0.030 [0.020, 0.040]")
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


# ----------------------------------------------------------------------------------------------
# Group-sequential tests (the quickstart's 6 + 6 seeds)
# ----------------------------------------------------------------------------------------------
from metaocl.report.stats import (  # noqa: E402
    OBRIEN_FLEMING, POCOCK, _null_t_pvalues, needs_next_look, sequential_effects, sequential_levels, z_boundaries,
)

LOOK1_P0037 = [0.04, 0.01, 0.06, -0.01, 0.05, 0.03]  # paired t over 6 seeds: p = 0.0372 (fixed test: reproduced)
LOOK2_MORE = [0.02, 0.04, 0.03, 0.05, 0.01, 0.04]
STRONG = [0.02, 0.03, 0.04, 0.05, 0.06, 0.07]  # p = 0.0020


def test_z_boundaries_are_the_classical_constants():
    # Jennison & Turnbull (2000), two equally spaced looks, two-sided 0.05
    assert z_boundaries([6, 12], POCOCK) == pytest.approx((2.178, 2.178), abs=1e-3)
    assert z_boundaries([6, 12], OBRIEN_FLEMING) == pytest.approx((2.797, 1.977), abs=1e-3)
    assert z_boundaries([6], POCOCK) == pytest.approx((1.960,), abs=1e-3)


def test_sequential_levels_calibrated_for_the_t_test():
    pocock = sequential_levels([6, 12], POCOCK, draws=400_000)
    assert pocock[0] == pocock[1] == pytest.approx(0.0283, abs=0.0008)  # below the z-test's 0.0294
    obf = sequential_levels([6, 12], OBRIEN_FLEMING, draws=400_000)
    assert obf == pytest.approx((0.0049, 0.0468), abs=0.0008)
    # many seeds per look: the t-test is the z-test, and the level is Pocock's 2 * (1 - Phi(2.178))
    assert sequential_levels([300, 600], POCOCK, draws=400_000)[0] == pytest.approx(0.0294, abs=0.001)
    assert sequential_levels([6]) == (0.05,)
    # overall level on independent null draws: 0.05
    p = _null_t_pvalues((6, 12), 400_000, seed=123)
    assert np.mean((p < np.array(pocock)).any(axis=1)) == pytest.approx(0.05, abs=0.002)
    with pytest.raises(ValueError):
        sequential_levels([6, 6])
    with pytest.raises(ValueError):
        sequential_levels([6, 12], "haybittle")


def _seq(d, looks=(6, 12)):
    d = list(d)
    return sequential_effects("meta-OCL", "d1consis", "d2consis", d, [0.0] * len(d), looks=looks,
                              measure="acc", stage=1, seeds=list(range(len(d))), levels=(0.0283, 0.0283))


def test_sequential_stops_at_look_1_when_it_rejects():
    effs = _seq(STRONG + LOOK2_MORE)
    assert len(effs) == 1 and effs[0].look == (1, 2) and effs[0].n == 6
    assert effs[0].outcome == "reproduced" and not needs_next_look(effs)
    line = verdict_line(effs[0])
    assert line.startswith("meta-OCL reproduced at look 1 of 2: d1consis - d2consis = +0.045 [")
    assert line.endswith("p=0.002, 6 seeds (acc, end of stage 1; group-sequential: p < 0.0283 at this look, 97.2% CI)")
    reversed_ = _seq([-v for v in STRONG])
    assert reversed_[0].outcome == "reversed" and reversed_[0].decided


def test_sequential_continues_where_the_fixed_test_would_stop():
    fixed = paired_effect("meta-OCL", "d1consis", "d2consis", LOOK1_P0037, [0.0] * 6, measure="acc", stage=1)
    assert fixed.outcome == "reproduced" and fixed.p == pytest.approx(0.0372, abs=1e-4)
    look1 = _seq(LOOK1_P0037)  # only look 1 has run
    assert len(look1) == 1 and look1[0].outcome == "continued" and needs_next_look(look1)
    assert look1[0].lo < 0 < look1[0].hi  # its 97.2% CI covers 0
    assert verdict_line(look1[0]).startswith("meta-OCL not decided at look 1 of 2 (the next look adds seeds): ")
    both = _seq(LOOK1_P0037 + LOOK2_MORE)
    assert [e.look for e in both] == [(1, 2), (2, 2)] and [e.n for e in both] == [6, 12]
    assert both[1].outcome == "reproduced" and both[1].decided and not needs_next_look(both)
    assert both[1].mean == pytest.approx(np.mean(LOOK1_P0037 + LOOK2_MORE))
    assert both[1].seeds == list(range(12))


def test_sequential_last_look_decides_whatever_it_says():
    flat = [0.01, -0.01, 0.02, -0.02, 0.0, 0.005]
    effs = _seq(flat + [0.01, -0.01, 0.0, 0.01, -0.02, 0.0])
    assert effs[-1].look == (2, 2) and effs[-1].decided and effs[-1].outcome in ("inconclusive", "not shown")
    short = _seq(flat[:4])  # fewer than the first look's seeds: undecided
    assert len(short) == 1 and short[0].n == 4 and needs_next_look(short)
    partial = _seq(flat + [0.01, 0.02])  # look 2 not reached yet
    assert len(partial) == 1 and partial[0].outcome == "continued"
