"""Effect statistics over seeds: t-based confidence intervals, paired tests and verdicts.

The paper reports learning curves without error bars or tests. Here every effect is a *paired*
difference measured inside one trial (e.g. meta-OCL = EM on d1consis - EM on d2consis of the same
model), so the unit of replication is the seed and the statistics run over the per-seed
differences:

- mean difference with the 95% CI of the paired t-test, and its two-sided p-value (the headline p),
  both from one ``scipy.stats.ttest_rel`` result, so the CI excludes 0 exactly when p < 0.05;
- as a distribution-free check, a two-sided sign-flip permutation p-value
  (``scipy.stats.permutation_test``; exact for up to 16 seeds, Monte Carlo above);
- a one-line verdict whose wording never claims more than the numbers show::

    meta-OCL reproduced: d1consis - d2consis = +0.031 [0.012, 0.050], p=0.003, 10 seeds

Degenerate cases: fewer than 2 seeds give no CI and no p; differences that are all equal (zero
variance, where t is undefined) give the CI ``[d, d]`` and the exact sign-flip p (1 when d = 0).

Per-split means in tables and bars use the same t interval (one sample). Learning-curve bands use a
seeded percentile bootstrap over seeds (:func:`bootstrap_band`), which handles seeds that did not
log every point.

Verdict rule (``alpha`` = 0.05):

- ``reproduced``   mean > 0, CI lower bound > 0 and p < alpha;
- ``reversed``     mean < 0, CI upper bound < 0 and p < alpha (the opposite of the paper);
- ``not shown``    mean <= 0 and the test is not significant (no sign of the effect);
- ``inconclusive`` mean > 0 but the CI covers 0 or p >= alpha, or fewer than 2 seeds.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

ALPHA = 0.05
LEVEL = 0.95
N_SIGN_FLIPS = 2**16  # >= 2^n for n <= 16 seeds: scipy then enumerates every sign pattern (exact)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------
def _constant(d: np.ndarray) -> bool:
    return bool(np.allclose(d, d[0], rtol=0.0, atol=1e-15))


def paired_t(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """``(p, lo, hi)`` of the two-sided paired t-test of ``mean(a - b) == 0`` and its CI (scipy ``ttest_rel``).

    Fewer than 2 pairs -> all NaN. All differences equal (zero variance) -> CI ``[d, d]`` and the
    exact sign-flip p-value (1 when d = 0), since the t statistic is undefined there.
    """
    from scipy import stats

    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    d = x - y
    if d.size < 2:
        return math.nan, math.nan, math.nan
    if _constant(d):
        return (1.0 if d[0] == 0 else sign_flip_pvalue(d)), float(d[0]), float(d[0])
    res = stats.ttest_rel(x, y)
    ci = res.confidence_interval(level)
    return float(res.pvalue), float(ci.low), float(ci.high)


def paired_t_pvalue(a: Sequence[float], b: Sequence[float]) -> float:
    """The p-value of :func:`paired_t`."""
    return paired_t(a, b)[0]


PROPORTION = (0.0, 1.0)  # accuracies and exact-match rates: every kind's measure
DIFFERENCE = (-1.0, 1.0)  # a difference of two proportions; a cosine


def mean_ci(values: Sequence[float], level: float = LEVEL,
            bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the mean of the finite ``values`` and its t-based CI (NaN CI below 2 values).

    ``bounds``: the range the quantity lives in (:data:`PROPORTION`, :data:`DIFFERENCE`); the CI is
    clipped to it (a t interval of accuracies near 1 would otherwise reach past 1)."""
    x = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    if x.size < 2:
        return float(x[0]), math.nan, math.nan
    _, lo, hi = paired_t(x, np.zeros_like(x), level)
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return float(x.mean()), lo, hi


def bootstrap_band(
    matrix: np.ndarray, level: float = LEVEL, n_boot: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column mean and bootstrap CI of a ``seeds x points`` matrix (NaN = missing).

    Used for the bands of learning curves: the same seeds are resampled for every point, so a band
    shows the spread of whole seeds. Columns with fewer than 2 finite values get a NaN band.
    """
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2:
        raise ValueError("bootstrap_band expects a 2-d seeds x points array")
    n_seeds, n_points = m.shape
    finite = np.isfinite(m)
    counts = finite.sum(axis=0)
    with np.errstate(invalid="ignore"):
        mean = np.where(counts > 0, np.nansum(m, axis=0) / np.maximum(counts, 1), np.nan)
    lo = np.full(n_points, np.nan)
    hi = np.full(n_points, np.nan)
    if n_seeds < 2:
        return mean, lo, hi
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    samples = m[idx]  # n_boot x n_seeds x n_points
    with np.errstate(invalid="ignore"), _quiet_nanmean():
        boot_means = np.nanmean(samples, axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    ok = counts >= 2
    if ok.any():
        with _quiet_nanmean():
            qs = np.nanpercentile(boot_means[:, ok], [tail, 100.0 - tail], axis=0)
        lo[ok], hi[ok] = qs[0], qs[1]
    return mean, lo, hi


class _quiet_nanmean:
    """Silence numpy's 'Mean of empty slice' for resamples that drew only missing values."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def sign_flip_pvalue(diffs: Sequence[float], n_resamples: int = N_SIGN_FLIPS, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value for ``mean(diffs) == 0`` (``scipy.stats.permutation_test``).

    Under the null each paired difference is symmetric around 0, so flipping signs gives its
    distribution. Exact (all 2^n sign patterns) when 2^n <= ``n_resamples``, else that many seeded
    draws (scipy counts the observed pattern, so p is never 0). With n seeds the smallest possible
    exact p is 2 / 2^n: 3 seeds can never reach p < 0.05.
    """
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return math.nan
    if d.size == 1:  # both sign patterns are as extreme as the observed one
        return 1.0
    res = stats.permutation_test((d,), np.mean, permutation_type="samples", vectorized=True,
                                 n_resamples=n_resamples, alternative="two-sided", random_state=seed)
    return float(res.pvalue)


# --------------------------------------------------------------------------------------------
# Effects and verdicts
# --------------------------------------------------------------------------------------------
@dataclass
class Effect:
    """One paired effect (``a - b``) of one configuration at the end of one stage, over seeds."""

    name: str  # "OCL", "meta-OCL", "meta-OCL (entity attribution, name)"
    a: str  # "d1consis"
    b: str  # "d2consis"
    measure: str  # "em" or "acc"
    stage: int
    a_values: list[float]
    b_values: list[float]
    seeds: list[int] = field(default_factory=list)
    configuration: str = ""  # "train.batch_size=128" ("" for a sweep without a grid)
    n_runs: int = 0  # trials behind the units when units are clusters of runs (0 = one run per unit)
    mean: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    p: float = math.nan  # paired t-test
    p_sign_flip: float = math.nan
    alpha: float = ALPHA  # the test's level; a group-sequential look's nominal level (CI at 1 - alpha)
    look: tuple[int, int] | None = None  # (k, K): look k of a K-look group-sequential test
    decided: bool = True  # a look that was not the design's last and did not stop the test: False

    @property
    def n(self) -> int:
        return len(self.a_values)

    @property
    def diffs(self) -> np.ndarray:
        return np.asarray(self.a_values, dtype=float) - np.asarray(self.b_values, dtype=float)

    @property
    def outcome(self) -> str:
        if not self.decided:
            return "continued"
        return classify(self.mean, self.lo, self.hi, self.p, self.n, self.alpha)


def paired_effect(
    name: str,
    a: str,
    b: str,
    a_values: Sequence[float],
    b_values: Sequence[float],
    *,
    measure: str,
    stage: int,
    seeds: Sequence[int] = (),
    configuration: str = "",
    n_runs: int = 0,
    seed: int = 0,
    alpha: float = ALPHA,
) -> Effect:
    """Mean, paired-t CI and p, and sign-flip p of ``a - b`` over seeds (pairs with a NaN are dropped).

    ``alpha``: the test's level; the CI is the ``1 - alpha`` interval, so it excludes 0 exactly when
    p < alpha (0.05 and the 95% CI unless a group-sequential look asks for its nominal level)."""
    x = np.asarray(a_values, dtype=float)
    y = np.asarray(b_values, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    kept_seeds = [s for s, k in zip(seeds, keep) if k] if len(seeds) == len(keep) else list(seeds)
    d = x - y
    eff = Effect(
        name=name, a=a, b=b, measure=measure, stage=stage, a_values=x.tolist(), b_values=y.tolist(),
        seeds=kept_seeds, configuration=configuration, n_runs=n_runs, alpha=alpha,
    )
    if d.size:
        eff.mean = float(d.mean())
        eff.p, eff.lo, eff.hi = paired_t(x, y, 1.0 - alpha)
        eff.p_sign_flip = sign_flip_pvalue(d, seed=seed)
    return eff


def classify(mean: float, lo: float, hi: float, p: float, n: int, alpha: float = ALPHA) -> str:
    """``reproduced`` | ``reversed`` | ``not shown`` | ``inconclusive`` (see the module docstring)."""
    if n < 2 or not all(math.isfinite(v) for v in (mean, lo, hi, p)):
        return "inconclusive"
    significant = p < alpha
    if mean > 0 and lo > 0 and significant:
        return "reproduced"
    if mean < 0 and hi < 0 and significant:
        return "reversed"
    if mean <= 0:
        return "not shown"
    return "inconclusive"


def format_p(p: float) -> str:
    if not math.isfinite(p):
        return "p=n/a"
    if p < 0.001:
        return "p<0.001"
    return f"p={p:.3f}"


def format_effect(e: Effect) -> str:
    """``d1consis - d2consis = +0.031 [0.012, 0.050], p=0.003, 10 seeds``."""
    seeds = f"{e.n} seed" + ("" if e.n == 1 else "s")
    if e.n_runs > e.n:
        seeds += f" ({e.n_runs} runs)"
    if not math.isfinite(e.mean):
        return f"{e.a} - {e.b} = n/a, {seeds}"
    ci = f" [{e.lo:.3f}, {e.hi:.3f}]" if math.isfinite(e.lo) else " [no CI]"
    return f"{e.a} - {e.b} = {e.mean:+.3f}{ci}, {format_p(e.p)}, {seeds}"


def verdict_line(e: Effect, with_context: bool = True) -> str:
    """``meta-OCL reproduced: d1consis - d2consis = +0.031 [0.012, 0.050], p=0.003, 10 seeds``.

    ``with_context`` prefixes the configuration (for sweeps with a grid) and appends the measure and
    the stage the effect was measured at.
    """
    outcome = e.outcome
    why = ""
    if outcome == "inconclusive" and e.n < 2:
        why = " (need at least 2 seeds for a CI and a test)"
    if e.look is not None:  # a group-sequential look: which look, and whether it decided
        k, K = e.look
        outcome = (f"not decided at look {k} of {K} (the next look adds seeds)" if outcome == "continued"
                   else f"{outcome} at look {k} of {K}")
    line = f"{e.name} {outcome}: {format_effect(e)}{why}"
    if not with_context:
        return line
    prefix = f"{e.configuration}: " if e.configuration else ""
    rule = ""
    if e.look is not None:
        rule = f"; group-sequential: p < {e.alpha:.4f} at this look, {100 * (1 - e.alpha):.1f}% CI"
    return f"{prefix}{line} ({e.measure}, end of stage {e.stage}{rule})"


# --------------------------------------------------------------------------------------------
# Group-sequential tests (a second block of seeds only when the first look is not decisive)
# --------------------------------------------------------------------------------------------
POCOCK = "pocock"  # the same nominal level at every look
OBRIEN_FLEMING = "obrien-fleming"  # z boundaries C * sqrt(n_K / n_k): strict early, near alpha at the end
BOUNDARIES = (POCOCK, OBRIEN_FLEMING)
SEQUENTIAL_DRAWS = 2_000_000


def _check_looks(looks: Sequence[int], boundary: str) -> tuple[int, ...]:
    looks = tuple(int(n) for n in looks)
    if not looks or looks[0] < 2 or any(b <= a for a, b in zip(looks, looks[1:])):
        raise ValueError(f"looks {list(looks)}: expected increasing seed counts, the first at least 2")
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary {boundary!r}: expected one of {', '.join(BOUNDARIES)}")
    return looks


def _boundary_shape(looks: tuple[int, ...], boundary: str) -> np.ndarray:
    n = np.asarray(looks, dtype=float)
    return np.ones_like(n) if boundary == POCOCK else np.sqrt(n[-1] / n)


def z_boundaries(looks: Sequence[int], boundary: str = POCOCK, alpha: float = ALPHA) -> tuple[float, ...]:
    """Two-sided critical |z| per look of a group-sequential z-test (known variance) at overall ``alpha``.

    The classical constants (Jennison & Turnbull 2000, tables 2.1 and 2.3): with two equally spaced
    looks at alpha = 0.05, Pocock 2.178 at both, O'Brien-Fleming 2.797 then 1.977. The z statistics
    of nested samples are jointly normal with corr(Z_i, Z_j) = sqrt(n_i / n_j).
    """
    from scipy import optimize, stats

    looks = _check_looks(looks, boundary)
    shape = _boundary_shape(looks, boundary)
    if len(looks) == 1:
        return (float(stats.norm.isf(alpha / 2)),)
    n = np.asarray(looks, dtype=float)
    cov = np.sqrt(np.minimum.outer(n, n) / np.maximum.outer(n, n))
    mvn = stats.multivariate_normal(mean=np.zeros(len(n)), cov=cov, seed=0)

    def excess(c: float) -> float:
        b = c * shape
        return 1.0 - float(mvn.cdf(b, lower_limit=-b)) - alpha

    c = optimize.brentq(excess, 1.0, 6.0, xtol=1e-6)
    return tuple(float(v) for v in c * shape)


def _null_t_pvalues(looks: tuple[int, ...], draws: int, seed: int) -> np.ndarray:
    """``draws x looks`` two-sided paired-t p-values at each look of nested samples of N(0, 1)
    differences, from each block's sum and within-block sum of squares (exact, 2 numbers a block)."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    total = np.zeros(draws)
    sumsq = np.zeros(draws)
    p = np.empty((draws, len(looks)))
    before = 0
    for k, n in enumerate(looks):
        m = n - before
        block = rng.standard_normal(draws) * math.sqrt(m)  # the block's sum
        within = rng.chisquare(m - 1, draws) if m > 1 else np.zeros(draws)
        total += block
        sumsq += within + block**2 / m  # sum of the squared differences so far
        ss = np.maximum(sumsq - total**2 / n, 1e-300)
        t = (total / n) / np.sqrt(ss / ((n - 1) * n))
        p[:, k] = 2.0 * stats.t.sf(np.abs(t), n - 1)
        before = n
    return p


@functools.lru_cache(maxsize=32)
def _sequential_levels(looks: tuple[int, ...], boundary: str, alpha: float, draws: int, seed: int) -> tuple[float, ...]:
    from scipy import stats

    shape = _boundary_shape(looks, boundary)
    if len(looks) == 1:
        return (alpha,)
    p = _null_t_pvalues(looks, draws, seed)
    lo, hi = 1.0, 6.0  # the z-scale constant C: more rejections as C falls
    for _ in range(60):
        c = (lo + hi) / 2
        levels = 2.0 * stats.norm.sf(c * shape)
        if np.mean((p < levels).any(axis=1)) > alpha:
            lo = c
        else:
            hi = c
    return tuple(float(v) for v in 2.0 * stats.norm.sf(hi * shape))


def sequential_levels(looks: Sequence[int], boundary: str = POCOCK, alpha: float = ALPHA,
                      draws: int = SEQUENTIAL_DRAWS, seed: int = 0) -> tuple[float, ...]:
    """Nominal two-sided levels, one per look, of the group-sequential paired t-test over ``looks`` seeds.

    Look k rejects when the paired t-test over the first ``looks[k]`` seeds has p below its level;
    the boundary fixes the levels' shape (Pocock: all equal; O'Brien-Fleming: the z shape
    ``C * sqrt(n_K / n_k)``) and the constant is chosen so that the chance of any rejection when
    the differences are normal with mean 0 is ``alpha`` (both directions together; "reproduced"
    alone: alpha / 2). The t-tests of small nested samples reject a little more often together than
    z-tests, so the constant is calibrated for them, by simulation with a fixed seed (``draws``
    null samples: exact sufficient statistics, Monte Carlo error of the overall level ~0.0002).
    Looks (6, 12), alpha 0.05: Pocock 0.0283 at each look (the z-test's 0.0294 gives 0.052 here),
    O'Brien-Fleming 0.0049 then 0.0468. A single look is the fixed test: ``(alpha,)``.
    """
    looks = _check_looks(looks, boundary)
    return _sequential_levels(looks, boundary, float(alpha), int(draws), int(seed))


def sequential_effects(
    name: str,
    a: str,
    b: str,
    a_values: Sequence[float],
    b_values: Sequence[float],
    *,
    looks: Sequence[int],
    boundary: str = POCOCK,
    measure: str,
    stage: int,
    seeds: Sequence[int] = (),
    configuration: str = "",
    n_runs: int = 0,
    levels: Sequence[float] | None = None,
) -> list[Effect]:
    """The effect at every look the values reach, in order, up to the look that decides.

    The values are in the order the seeds were run (by seed): look k uses the first ``looks[k]``
    pairs, its CI and p at the look's nominal level (:func:`sequential_levels`). A look that
    rejects (``reproduced`` or ``reversed``) stops the test; so does the last look, whatever it
    says. An earlier look that does not reject is ``decided=False`` (outcome ``continued``): the
    next look runs; when the values do not reach it, the last effect returned is that undecided one.
    With fewer values than the first look, the one effect returned (all the values, at the first
    look's level) is undecided too.
    """
    looks = _check_looks(looks, boundary)
    levels = tuple(levels) if levels is not None else sequential_levels(looks, boundary)
    if len(levels) != len(looks):
        raise ValueError(f"{len(levels)} levels for {len(looks)} looks")
    x = [float(v) for v in a_values]
    y = [float(v) for v in b_values]
    seeds = list(seeds)
    K = len(looks)
    out: list[Effect] = []
    for k, (n, level) in enumerate(zip(looks, levels), start=1):
        if len(x) < n and k > 1:
            break
        m = min(n, len(x))
        eff = paired_effect(name, a, b, x[:m], y[:m], measure=measure, stage=stage,
                            seeds=seeds[:m] if len(seeds) == len(x) else seeds, configuration=configuration,
                            n_runs=n_runs, alpha=level)
        eff.look = (k, K)
        rejected = classify(eff.mean, eff.lo, eff.hi, eff.p, eff.n, level) in ("reproduced", "reversed")
        eff.decided = (rejected or k == K) and m == n
        out.append(eff)
        if eff.decided or m < n:
            break
    return out


def needs_next_look(effects: Sequence[Effect]) -> bool:
    """Whether the last look of :func:`sequential_effects` left the test undecided (run more seeds)."""
    return bool(effects) and not effects[-1].decided


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------
def _fmt(v: float, signed: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def markdown_effects_table(effects: Sequence[Effect], paper: dict[tuple[str, int], float] | None = None) -> str:
    """A Markdown table of effects; ``paper`` maps ``(effect name, stage)`` to the paper's value."""
    paper = paper or {}
    show_paper = any((e.name, e.stage) in paper for e in effects)
    head = ["configuration", "effect", "difference", "stage", "mean", "95% CI", "p (paired t)", "p (sign-flip)", "seeds"]
    if show_paper:
        head.append("paper (approx.)")
    head.append("verdict")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in effects:
        ci = f"[{_fmt(e.lo)}, {_fmt(e.hi)}]" if math.isfinite(e.lo) else "n/a"
        name = e.name + (f" (look {e.look[0]} of {e.look[1]}, p < {e.alpha:.4f})" if e.look else "")
        cells = [
            e.configuration or "(all)", name, f"{e.measure}/{e.a} - {e.measure}/{e.b}", str(e.stage),
            _fmt(e.mean, signed=True), ci, format_p(e.p).removeprefix("p=").removeprefix("p"),
            format_p(e.p_sign_flip).removeprefix("p=").removeprefix("p"), str(e.n),
        ]
        if show_paper:
            pv = paper.get((e.name, e.stage))
            cells.append(_fmt(pv, signed=True) if pv is not None else "")
        cells.append(e.outcome)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def mean_ci_text(values: Sequence[float], bounds: tuple[float, float] | None = PROPORTION) -> str:
    """``0.512 [0.498, 0.526]`` (mean and t-based 95% CI, clipped to ``bounds``), or just the mean for one value."""
    mean, lo, hi = mean_ci(values, bounds=bounds)
    if not math.isfinite(mean):
        return "n/a"
    if not math.isfinite(lo):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


METHOD_NOTE = (
    "Each effect is a paired difference inside a trial (same model, same seed); statistics run over "
    "seeds. Where a grid key is itself a seed (e.g. `train.stage1_seed`, whose runs share a stage-1 "
    "model), each of its values is one unit (the mean of its runs), so shared models are not counted "
    "as independent evidence. Mean with the 95% CI of the paired t-test over seeds and its two-sided p "
    "(one `scipy.stats.ttest_rel`, so the CI excludes 0 exactly when p < 0.05), with a two-sided "
    "sign-flip permutation test (exact up to 16 seeds) as a distribution-free check. Per-split values: "
    "mean and t-based 95% CI, clipped to [0, 1]; learning-curve bands: percentile bootstrap over seeds. Verdicts: *reproduced* = mean > 0, CI above 0 and p < 0.05; "
    "*reversed* = significantly below 0; *not shown* = mean <= 0 without significance; "
    "*inconclusive* = positive but the CI covers 0, p >= 0.05, or fewer than 2 seeds."
)
