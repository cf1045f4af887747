"""The table a sweep prints when it ends: per subset, the headline measure after each stage.

Mean and 95% confidence interval over seeds (Student t), then the OCL gap (qd1consis - qd2incons)
and the meta-OCL gap (d1consis - d2consis), each with a plain verdict that says what was measured:
an effect is "shown" only when the whole 95% interval of the paired per-seed gap lies above zero.
``metaocl report`` gives the fuller statistics (bootstrap CIs, p-values, figures) from MLflow.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Mapping, Sequence

GAPS = {"OCL": ("qd1consis", "qd2incons"), "meta-OCL": ("d1consis", "d2consis")}
SUBSET_ORDER = ["qd1consis", "qd2incons", "qd1incons", "qd2consis", "qd4consis", "q", "q_no_replacement_baseline",
                "d1consis", "d2consis", "d3consis", "no_qd_baseline"]


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval (the interval collapses to the mean for a single value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean
    from scipy import stats

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def end_of_stage(history: Sequence[Mapping[str, float]]) -> dict[int, Mapping[str, float]]:
    """The last report of each stage of one trial."""
    out: dict[int, Mapping[str, float]] = {}
    for row in history:
        out[int(row.get("stage", 1))] = row
    return out


def headline_measure(rows: Sequence[Mapping[str, float]]) -> str:
    keys = {k for r in rows for k in r}
    return "acc" if any(k.startswith("acc/") for k in keys) else "em"


def summarize(histories: Mapping[str, Sequence[Mapping[str, float]]], params: Mapping[str, Mapping]) -> str:
    """Text of the end-of-sweep summary, one block per grid configuration.

    ``histories``: trial id -> the metrics it reported, in order; ``params``: trial id -> its grid values.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for tid in histories:
        groups[json.dumps(params.get(tid, {}), sort_keys=True)].append(tid)
    blocks = []
    for key, tids in groups.items():
        ends = [end_of_stage(histories[t]) for t in tids if histories[t]]
        if not ends:
            continue
        stages = sorted({s for e in ends for s in e})
        measure = headline_measure([r for e in ends for r in e.values()])
        subsets = sorted({k.split("/", 1)[1] for e in ends for r in e.values() for k in r if k.startswith(measure + "/")},
                         key=lambda s: (SUBSET_ORDER.index(s) if s in SUBSET_ORDER else len(SUBSET_ORDER), s))
        title = ", ".join(f"{k}={v}" for k, v in json.loads(key).items()) or "configuration"
        lines = [f"{title}  ({len(ends)} seed{'s' if len(ends) != 1 else ''}; {measure}, mean [95% CI])"]
        lines.append(f"  {'subset':<28}" + "".join(f"{'after stage ' + str(s):>26}" for s in stages))
        for sub in subsets:
            cells = []
            for s in stages:
                vals = [e[s][f"{measure}/{sub}"] for e in ends if s in e and f"{measure}/{sub}" in e[s]]
                m, lo, hi = mean_ci(vals)
                cells.append(f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if vals else "-")
            lines.append(f"  {sub:<28}" + "".join(f"{c:>26}" for c in cells))
        # OCL is read where stage-1 training ends; meta-OCL after the last stage (X2 definitions)
        for name, (a, b) in GAPS.items():
            at = stages[0] if name == "OCL" else stages[-1]
            diffs = [e[at][f"{measure}/{a}"] - e[at][f"{measure}/{b}"] for e in ends
                     if at in e and f"{measure}/{a}" in e[at] and f"{measure}/{b}" in e[at]]
            if diffs:
                lines.append("  " + verdict(name, a, b, diffs, at))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def verdict(name: str, a: str, b: str, diffs: Sequence[float], stage: int) -> str:
    m, lo, hi = mean_ci(diffs)
    n = len(diffs)
    where = f"{a} - {b} = {m:+.3f} [{lo:+.3f}, {hi:+.3f}] after stage {stage}, {n} seed{'s' if n != 1 else ''}"
    if n < 2:
        return f"{name}: {where} (one seed: no interval, no verdict)"
    if lo > 0:
        return f"{name} shown: {where}"
    if hi < 0:
        return f"{name} reversed: {where}"
    return f"{name} not shown: {where} (interval includes 0)"
