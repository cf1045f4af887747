"""Paper-style figures of a sweep, written as PNG (for eyes) and PDF (for papers).

What each figure shows and which paper figure it mirrors:

- ``curves_{config}``: in-distribution test accuracy/EM per subset over epochs, mean over seeds with
  a bootstrap 95% band, a dotted vertical line at each stage boundary (paper Fig. 2a, Fig. 3 for
  the in-context sweep, Fig. 20 left for MNIST).
- ``entity_{config}``: the same for entity-attribution questions, one panel per question template
  ("name" first; paper Fig. 2b and Fig. 8).
- ``summary_{key}``: OCL and meta-OCL gaps (mean and 95% CI over seeds) against the swept grid key:
  batch size (Fig. 6), tag-consistency p (section 2.6), word order (Fig. 4b), model size (Fig. 4c),
  in-context, number of variable-entity pairs (MNIST, Fig. 20 right); any other key gets the same
  plot with a plain axis.
- ``gaps_{config}``: the paired gaps the verdicts test, OCL and meta-OCL: each seed's gap as a dot,
  the mean and its t-based 95% CI at the end of each stage (the verdict's stage marked), and the same
  over epochs (each seed a thin line, the mean with its CI band). The report's first figure.
- ``stage_ends``: per-subset value at the end of each stage (bar chart; sweeps without a grid).
- ``grad_alignment``: cosine between the mean gradient of tag-1 (tag-2) definitions and of QA pairs
  over training, and, for a grid, its average against the swept key (gradient-alignment
  hypothesis, paper section 4).

Colours belong to subsets, not to positions: qd1consis is always the same blue, everything with
tag 2 is red/orange, baselines are grey/black, so figures can be compared at a glance. Subsets
trained in stage 2 (d*) are dashed; entity-attribution splits about the *definition's* entity
(``_defent``) are dotted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from metaocl.report.stats import Effect, bootstrap_band  # noqa: E402

# subset -> (colour, line style, legend label)
SUBSET_STYLE: dict[str, tuple[str, str]] = {
    "qd1consis": ("#1f77b4", "-"),
    "qd2incons": ("#d62728", "-"),
    "qd1incons": ("#9ecae1", "-"),
    "qd2consis": ("#ff9896", "-"),
    "qd4consis": ("#e377c2", "-"),
    "q": ("#2ca02c", "-"),
    "q_no_replacement_baseline": ("#7f7f7f", "-"),
    "d1consis": ("#08306b", "--"),
    "d2consis": ("#ff7f0e", "--"),
    "d3consis": ("#9467bd", "--"),
    "no_qd_baseline": ("#000000", "--"),
}
SUBSET_ORDER = list(SUBSET_STYLE)
GAP_STYLE = {"OCL": ("#1f77b4", "o"), "meta-OCL": ("#d62728", "s")}
GRAD_STYLE = {"grad/cos_def1_qa": ("#1f77b4", "-", "tag 1 defs vs QA"), "grad/cos_def2_qa": ("#d62728", "--", "tag 2 defs vs QA")}
_EXTRA_COLOURS = ["#8c564b", "#bcbd22", "#17becf", "#393b79", "#637939", "#843c39"]

WORD_ORDERS = ["TVE", "VTE", "VET", "TEV", "ETV", "EVT"]  # paper Fig. 4b groups variable-first orders first
_MODEL_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([mb])\b", re.IGNORECASE)


def subset_style(subset: str) -> tuple[str, str, str]:
    """(colour, line style, label) of a subset; ``_defent`` variants are dotted in the base colour."""
    defent = subset.endswith("_defent")
    base = subset.removesuffix("_defent")
    if base in SUBSET_STYLE:
        colour, ls = SUBSET_STYLE[base]
    else:
        colour, ls = _EXTRA_COLOURS[sum(map(ord, base)) % len(_EXTRA_COLOURS)], "-."
    label = f"{base} (definition's entity)" if defent else base
    return colour, (":" if defent else ls), label


def subset_sort_key(subset: str) -> tuple[int, str]:
    base = subset.removesuffix("_defent")
    pos = SUBSET_ORDER.index(base) if base in SUBSET_ORDER else len(SUBSET_ORDER)
    return pos, subset


def save(fig, base: Path) -> list[Path]:
    """Write ``base.png`` and ``base.pdf``; close the figure."""
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, kw in (("png", {"dpi": 130}), ("pdf", {})):
        path = base.with_suffix(f".{ext}")
        fig.savefig(path, bbox_inches="tight", **kw)
        paths.append(path)
    plt.close(fig)
    return paths


def _stage_lines(ax, boundaries: Sequence[float], label_stages: bool = True, headroom: bool = True) -> None:
    """Dotted vertical lines at stage boundaries, labelled in headroom added above the data."""
    if boundaries and label_stages and headroom:
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi + 0.1 * (hi - lo))
    for i, x in enumerate(boundaries):
        ax.axvline(x, color="0.35", linestyle=":", linewidth=1.2, zorder=0)
        if label_stages:
            ax.text(x, 0.985, f" stage {i + 2} ", transform=ax.get_xaxis_transform(), va="top", ha="left",
                    fontsize=8, color="0.35")
            if i == 0:
                ax.text(x, 0.985, " stage 1 ", transform=ax.get_xaxis_transform(), va="top", ha="right",
                        fontsize=8, color="0.35")


def _measure_label(measure: str) -> str:
    return {"em": "exact match", "acc": "accuracy"}.get(measure, measure)


# --------------------------------------------------------------------------------------------
# Learning curves
# --------------------------------------------------------------------------------------------
@dataclass
class CurveSet:
    """Curves of one panel: subset -> seeds x steps matrix, over common ``steps``."""

    title: str
    steps: list[int]
    curves: dict[str, np.ndarray]
    paper: dict[str, list[tuple[float, float]]] | None = None  # subset -> [(epoch, value)]


def _draw_curves(ax, panel: CurveSet, boundaries: Sequence[float], measure: str) -> None:
    x = np.asarray(panel.steps, dtype=float)
    for subset in sorted(panel.curves, key=subset_sort_key):
        colour, ls, label = subset_style(subset)
        mean, lo, hi = bootstrap_band(panel.curves[subset])
        ok = np.isfinite(mean)
        ax.plot(x[ok], mean[ok], color=colour, linestyle=ls, linewidth=1.8, label=label)
        band = np.isfinite(lo) & np.isfinite(hi)
        if band.any():
            ax.fill_between(x[band], lo[band], hi[band], color=colour, alpha=0.18, linewidth=0)
        for ex, ey in (panel.paper or {}).get(subset, []):
            ax.plot([ex], [ey], marker="*", markersize=11, color=colour, markeredgecolor="black",
                    markeredgewidth=0.6, linestyle="none", zorder=5)
    if panel.paper:
        ax.plot([], [], marker="*", markersize=11, color="white", markeredgecolor="black", linestyle="none",
                label="paper (approx.)")
    ax.set_title(panel.title, fontsize=10)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"test {_measure_label(measure)}")
    ax.grid(alpha=0.25)
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))


def plot_curves(panels: Sequence[CurveSet], boundaries: Sequence[float], measure: str, title: str, base: Path) -> list[Path]:
    """One row (or 2x2 block for 4) of learning-curve panels with a shared legend."""
    n = len(panels)
    cols = 2 if n == 4 else n
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 3.9 * rows), squeeze=False, sharey=True)
    for ax, panel in zip(axes.flat, panels):
        _draw_curves(ax, panel, boundaries, measure)
    for i, ax in enumerate(axes.flat[:n]):  # after all panels: the y axis is shared, add headroom once
        _stage_lines(ax, boundaries, headroom=i == 0)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles, labels = {}, []
    for ax in axes.flat[:n]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels], labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9,
               frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save(fig, base)


# --------------------------------------------------------------------------------------------
# Per-sweep summaries: gaps against a grid key
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyStyle:
    """How a grid key is drawn on the x axis of a summary."""

    xlabel: str
    title: str
    scale: str  # "log2" | "linear" | "category"
    order: tuple[str, ...] = ()


def key_style(key: str) -> KeyStyle:
    """Pick the summary layout from the grid key's name (see the module docstring)."""
    k = key.lower()
    leaf = k.rsplit(".", 1)[-1]
    if "batch_size" in k:
        return KeyStyle("batch size", "Batch size vs OCL / meta-OCL (paper Fig. 6)", "log2")
    if leaf == "p" or "consisten" in leaf:
        return KeyStyle("p (tag-consistency correlation)", "Tag-consistency p vs gaps (paper 2.6)", "linear")
    if "word_order" in k or leaf == "order":
        return KeyStyle("word order in definitions", "Word order vs gaps (paper Fig. 4b)", "category", tuple(WORD_ORDERS))
    if "in_context" in k:
        return KeyStyle("definitions in context", "In-context vs out-of-context (paper Fig. 3)", "category")
    if "pairs" in leaf or "n_variables" in leaf or "num_variables" in leaf or "n_entities" in leaf:
        return KeyStyle("number of variable-entity pairs", "Number of pairs vs gaps (paper Fig. 20)", "log2")
    if "model" in k:
        return KeyStyle("model", "Model size vs gaps (paper Fig. 4c)", "category")
    return KeyStyle(key, f"{key} vs gaps", "linear")


def _model_params(name: str) -> float:
    m = _MODEL_SIZE.search(name.replace("-", " ").replace("_", " "))
    if not m:
        return math.inf
    return float(m.group(1)) * (1e9 if m.group(2).lower() == "b" else 1e6)


def category_order(key: str, values: Sequence[Any]) -> list[Any]:
    style = key_style(key)
    uniq = list(dict.fromkeys(values))
    if style.order:
        return sorted(uniq, key=lambda v: (style.order.index(str(v)) if str(v) in style.order else 99, str(v)))
    if "model" in key.lower():
        return sorted(uniq, key=lambda v: (_model_params(str(v)), str(v)))
    return sorted(uniq, key=str)


def _is_numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _label(v: Any) -> str:
    s = str(v)
    return s.rsplit("/", 1)[-1] if "/" in s else s


def x_axis(key: str, values: Sequence[Any]) -> tuple[bool, list[Any], list[str]]:
    """(numeric?, ordered distinct values, tick labels) of a summary's x axis.

    A batch size of 0 means full batch: the axis becomes ordinal with "full" at the right end.
    """
    style = key_style(key)
    uniq = list(dict.fromkeys(values))
    if "batch_size" in key.lower() and _is_numeric(uniq) and 0 in uniq:
        order = sorted(v for v in uniq if v != 0) + [0]
        return False, order, [_label(v) if v != 0 else "full" for v in order]
    if style.scale != "category" and _is_numeric(uniq):
        order = sorted(uniq)
        return True, order, [_label(v) for v in order]
    order = category_order(key, uniq)
    return False, order, [_label(v) for v in order]


def _format_x(ax, style: KeyStyle, numeric: bool, order: list[Any], labels: list[str]) -> None:
    if numeric:
        if style.scale == "log2" and all(float(v) > 0 for v in order):
            ax.set_xscale("log", base=2)
            ax.set_xticks([float(v) for v in order])
            ax.set_xticklabels(labels)
            ax.minorticks_off()
    else:
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(labels, rotation=0 if len(order) < 7 else 30)
        ax.set_xlim(-0.6, len(order) - 0.4)


@dataclass
class GapPoint:
    """One configuration's effects for a summary plot."""

    x: Any  # the value of the summary key
    panel: str  # the other grid keys' values ("" when the key is the only one)
    effects: list[Effect]
    paper: Mapping[str, float] | None = None  # effect name -> the paper's value for this configuration


def plot_gaps_vs_key(key: str, points: Sequence[GapPoint], measure: str, base: Path) -> list[Path]:
    """OCL and meta-OCL gap (mean, 95% CI) against ``key``; one panel per value of the other keys."""
    style = key_style(key)
    panels = list(dict.fromkeys(p.panel for p in points))
    numeric, order, labels = x_axis(key, [p.x for p in points])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels) + 1.6, 3.9), squeeze=False, sharey=True)
    names = list(dict.fromkeys(e.name for p in points for e in p.effects))
    for ax, panel in zip(axes[0], panels):
        mine = [p for p in points if p.panel == panel]
        for j, name in enumerate(names):
            colour, marker = GAP_STYLE.get(name.split(" (")[0], (_EXTRA_COLOURS[j % len(_EXTRA_COLOURS)], "D"))
            hollow = "(" in name  # entity-attribution variants: hollow markers, thinner lines
            rows, stars = [], []
            for p in mine:
                for e in p.effects:
                    if e.name == name and math.isfinite(e.mean):
                        rows.append((p.x, e))
                if p.paper and name in p.paper:
                    stars.append((p.x, p.paper[name]))
            if not rows:
                continue
            if numeric:
                rows.sort(key=lambda r: float(r[0]))
                x = np.array([float(r[0]) for r in rows])
            else:
                offset = (j - (len(names) - 1) / 2) * 0.12
                x = np.array([order.index(r[0]) + offset for r in rows], dtype=float)
            y = np.array([r[1].mean for r in rows])
            lo = np.array([r[1].lo if math.isfinite(r[1].lo) else r[1].mean for r in rows])
            hi = np.array([r[1].hi if math.isfinite(r[1].hi) else r[1].mean for r in rows])
            stage = rows[0][1].stage
            ax.errorbar(x, y, yerr=[y - lo, hi - y], color=colour, marker=marker, capsize=3,
                        markerfacecolor="white" if hollow else colour, linestyle="-" if numeric else "none",
                        linewidth=1.0 if hollow else 1.6, label=f"{name}, end of stage {stage}")
            for sx, sy in stars:
                px = float(sx) if numeric else order.index(sx) + offset
                ax.plot([px], [sy], marker="*", markersize=12, color=colour, markeredgecolor="black",
                        linestyle="none", zorder=5)
        if any(p.paper for p in mine):
            ax.plot([], [], marker="*", markersize=12, color="white", markeredgecolor="black", linestyle="none",
                    label="paper (approx.)")
        ax.axhline(0.0, color="black", linewidth=0.8)
        _format_x(ax, style, numeric, order, labels)
        ax.set_xlabel(style.xlabel)
        ax.set_title(panel or style.title, fontsize=10)
        ax.grid(alpha=0.25)
    axes[0][0].set_ylabel(f"gap in test {_measure_label(measure)}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)
    if len(panels) > 1:
        fig.suptitle(style.title, fontsize=11)
    fig.tight_layout()
    return save(fig, base)


# --------------------------------------------------------------------------------------------
# Paired gaps: what the verdicts test
# --------------------------------------------------------------------------------------------
@dataclass
class PairedGaps:
    """One effect (``OCL``, ``meta-OCL``) of one configuration, paired over seeds.

    ``ends``: the effects at the end of every stage (:class:`~metaocl.report.stats.Effect`, whose
    ``diffs`` are each seed's gap and whose mean/CI the verdict uses); ``verdict_stage``: the stage
    whose end the verdict reads; ``steps``/``matrix``: each seed's gap (a - b) per epoch."""

    name: str
    ends: list[Effect]
    verdict_stage: int | None
    steps: list[int]
    matrix: np.ndarray  # seeds x steps


def plot_paired_gaps(gaps: Sequence[PairedGaps], boundaries: Sequence[float], measure: str, title: str,
                     base: Path) -> list[Path]:
    """Left: at each stage end, each seed's gap as a dot, the mean and its t-based 95% CI (the numbers
    of the verdict, whose stage is marked). Right: the same over epochs (each seed a thin line, the
    mean with its 95% CI band). One colour per effect; 0 = no effect."""
    from metaocl.report.stats import DIFFERENCE, mean_ci

    fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 4.2), gridspec_kw={"width_ratios": [1, 1.5]})
    stages = sorted({e.stage for g in gaps for e in g.ends})
    width = 0.8 / max(1, len(gaps))
    rng = np.random.default_rng(0)  # fixed jitter: the same report draws the same figure
    for j, g in enumerate(gaps):
        colour, marker = GAP_STYLE.get(g.name, (_EXTRA_COLOURS[j % len(_EXTRA_COLOURS)], "D"))
        for e in g.ends:
            x0 = stages.index(e.stage) + (j - (len(gaps) - 1) / 2) * width
            d = e.diffs[np.isfinite(e.diffs)]
            left.scatter(x0 + rng.uniform(-0.12, 0.12, d.size) * width / 0.4, d, s=16, color=colour, alpha=0.45,
                         linewidths=0, zorder=2)
            if math.isfinite(e.mean):
                lo = e.lo if math.isfinite(e.lo) else e.mean
                hi = e.hi if math.isfinite(e.hi) else e.mean
                verdict = e.stage == g.verdict_stage
                left.errorbar([x0 + 0.2 * width], [e.mean], yerr=[[e.mean - lo], [hi - e.mean]], color=colour,
                              marker=marker, markersize=7 if verdict else 5, capsize=4, linewidth=2 if verdict else 1,
                              markerfacecolor=colour if verdict else "white", zorder=3)
        x = np.asarray(g.steps, dtype=float)
        for row in g.matrix:
            ok = np.isfinite(row)
            right.plot(x[ok], row[ok], color=colour, alpha=0.18, linewidth=0.8)
        stats = [mean_ci(g.matrix[:, k], bounds=DIFFERENCE) for k in range(len(g.steps))] if g.steps else []
        mean = np.array([m for m, _, _ in stats], dtype=float)
        lo = np.array([a for _, a, _ in stats], dtype=float)
        hi = np.array([b for _, _, b in stats], dtype=float)
        ok = np.isfinite(mean)
        n = g.matrix.shape[0]
        right.plot(x[ok], mean[ok], color=colour, linewidth=2, marker=marker, markersize=3,
                   label=f"{g.name}: mean of {n} seed{'s' if n != 1 else ''}, 95% CI")
        band = np.isfinite(lo) & np.isfinite(hi)
        if band.any():
            right.fill_between(x[band], lo[band], hi[band], color=colour, alpha=0.2, linewidth=0)
    for ax in (left, right):
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.grid(alpha=0.25)
    left.set_xticks(range(len(stages)))
    marks = {g.verdict_stage: g.name for g in gaps}
    left.set_xticklabels([f"end of stage {s}" + "".join(f"\n({n} verdict)" for v, n in marks.items() if v == s)
                          for s in stages], fontsize=9)
    left.set_xlim(-0.6, len(stages) - 0.4)
    left.set_ylabel(f"gap in test {_measure_label(measure)} (a - b, per seed)")
    left.set_title("each seed's gap (dots), mean and 95% CI", fontsize=10)
    right.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    right.set_xlabel("epoch")
    right.set_title("over training: each seed (thin), mean and 95% CI", fontsize=10)
    _stage_lines(right, boundaries)
    right.legend(fontsize=8, frameon=False, loc="best")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save(fig, base)


# --------------------------------------------------------------------------------------------
# End-of-stage bars (sweeps without a grid)
# --------------------------------------------------------------------------------------------
def plot_stage_end_bars(values: Mapping[int, Mapping[str, Sequence[float]]], measure: str, title: str,
                        base: Path, paper: Mapping[tuple[str, int], float] | None = None) -> list[Path]:
    """``values[stage][subset]`` = per-seed values at the end of ``stage``; bars with t-based 95% CIs."""
    from metaocl.report.stats import PROPORTION, mean_ci

    stages = sorted(values)
    fig, axes = plt.subplots(1, len(stages), figsize=(4.8 * len(stages), 3.9), squeeze=False, sharey=True)
    for ax, stage in zip(axes[0], stages):
        subsets = sorted(values[stage], key=subset_sort_key)
        for i, subset in enumerate(subsets):
            v = np.asarray([x for x in values[stage][subset] if math.isfinite(x)], dtype=float)
            if not v.size:
                continue
            colour, ls, _ = subset_style(subset)
            m, lo, hi = mean_ci(v, bounds=PROPORTION)
            err = [[m - lo], [hi - m]] if math.isfinite(lo) else None
            ax.bar(i, m, color=colour, alpha=0.85, hatch="//" if ls == "--" else None, edgecolor="white")
            if err is not None:
                ax.errorbar(i, m, yerr=err, color="black", capsize=3, linewidth=1)
            pv = (paper or {}).get((subset, stage))
            if pv is not None:
                ax.plot([i], [pv], marker="*", markersize=11, color=colour, markeredgecolor="black", linestyle="none")
        ax.set_xticks(range(len(subsets)))
        ax.set_xticklabels([subset_style(s)[2] for s in subsets], rotation=40, ha="right", fontsize=8)
        ax.set_title(f"end of stage {stage}", fontsize=10)
        ax.grid(alpha=0.25, axis="y")
    axes[0][0].set_ylabel(f"test {_measure_label(measure)}")
    if paper:
        axes[0][-1].plot([], [], marker="*", markersize=11, color="white", markeredgecolor="black",
                         linestyle="none", label="paper (approx.)")
        axes[0][-1].legend(fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save(fig, base)


# --------------------------------------------------------------------------------------------
# Gradient alignment
# --------------------------------------------------------------------------------------------
@dataclass
class GradSeries:
    """Gradient cosines of one configuration: metric -> seeds x steps, and per-seed averages."""

    label: str
    x: Any  # the summary key's value (None without a grid)
    steps: list[int]
    curves: dict[str, np.ndarray]
    boundaries: list[float]


def plot_grad_alignment(series: Sequence[GradSeries], key: str | None, base: Path) -> list[Path]:
    """Cosines over training (left) and, with a grid key, their mean over training vs the key (right)."""
    from metaocl.report.stats import DIFFERENCE, mean_ci

    with_summary = key is not None and len(series) > 1
    fig, axes = plt.subplots(1, 2 if with_summary else 1, figsize=(11.5 if with_summary else 6.4, 3.9), squeeze=False)
    ax = axes[0][0]
    if with_summary:  # colour configurations in axis order (e.g. batch size ascending, full batch last)
        _, order, _ = x_axis(key, [s.x for s in series])
        series = sorted(series, key=lambda s: order.index(s.x) if s.x in order else len(order))
    cmap = plt.get_cmap("viridis")
    for i, s in enumerate(series):
        shade = cmap(0.05 + 0.7 * i / max(1, len(series) - 1)) if len(series) > 1 else None
        x = np.asarray(s.steps, dtype=float)
        for metric, (colour, ls, label) in GRAD_STYLE.items():
            if metric not in s.curves:
                continue
            mean, lo, hi = bootstrap_band(s.curves[metric])
            ok = np.isfinite(mean)
            c = shade if shade is not None else colour
            name = f"{label}, {s.label}" if s.label else label
            ax.plot(x[ok], mean[ok], color=c, linestyle=ls, linewidth=1.6, label=name)
            band = np.isfinite(lo) & np.isfinite(hi)
            if band.any():
                ax.fill_between(x[band], lo[band], hi[band], color=c, alpha=0.15, linewidth=0)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if series:
        _stage_lines(ax, series[0].boundaries)
    ax.set_xlabel("epoch")
    ax.set_ylabel("cosine(mean grad defs, mean grad QA)")
    ax.set_title("Gradient alignment over training", fontsize=10)
    ax.grid(alpha=0.25)
    if len(series) > 1:
        ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    else:
        ax.legend(fontsize=8, frameon=False, loc="best")
    if with_summary:
        ax2 = axes[0][1]
        style = key_style(key)
        numeric, order, labels = x_axis(key, [s.x for s in series])
        for j, (metric, (colour, ls, label)) in enumerate(GRAD_STYLE.items()):
            px, py, plo, phi = [], [], [], []
            for s in series:
                if metric not in s.curves:
                    continue
                per_seed = np.nanmean(np.where(np.isfinite(s.curves[metric]), s.curves[metric], np.nan), axis=1)
                per_seed = per_seed[np.isfinite(per_seed)]
                if not per_seed.size:
                    continue
                m, lo, hi = mean_ci(per_seed, bounds=DIFFERENCE)  # cosines
                px.append(float(s.x) if numeric else order.index(s.x) + (j - 0.5) * 0.12)
                py.append(m)
                plo.append(m - lo if math.isfinite(lo) else 0.0)
                phi.append(hi - m if math.isfinite(hi) else 0.0)
            if px:
                idx = np.argsort(px)
                ax2.errorbar(np.array(px)[idx], np.array(py)[idx], yerr=[np.array(plo)[idx], np.array(phi)[idx]],
                             color=colour, marker="o", capsize=3, linestyle="-" if numeric else "none", label=label)
        ax2.axhline(0.0, color="black", linewidth=0.8)
        _format_x(ax2, style, numeric, order, labels)
        ax2.set_xlabel(style.xlabel)
        ax2.set_ylabel("mean cosine over training")
        ax2.set_title(f"Gradient alignment vs {style.xlabel}", fontsize=10)
        ax2.grid(alpha=0.25)
        ax2.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return save(fig, base)
