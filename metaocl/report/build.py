"""``make_report``: one sweep invocation in MLflow -> figures, effect statistics, verdicts, summary.md.

Reads only MLflow, and only one invocation: the finished trial runs of one parent run (the newest by
default; see :mod:`metaocl.report.runs`). Effects and verdicts come from :mod:`metaocl.report.effects`,
the same code that prints the summary at the end of a sweep. ``summary.md`` names the parent run it
read and every run it left out.

Outputs are written into a temporary folder next to ``out_dir`` and moved into place only when
complete, then logged as artifacts (``report/``) of that parent run.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metaocl.report import figures
from metaocl.report.effects import ConfigurationEffects, analyse, verdict_lines
from metaocl.report.paper_values import PaperReference, match_reference
from metaocl.report.runs import Configuration, SweepRuns, load_sweep_runs, split_family
from metaocl.report.stats import METHOD_NOTE, markdown_effects_table, mean_ci_text
from metaocl.report.summary import SMOKE_TITLE, smoke_note

GRAD_METRICS = ("grad/cos_def1_qa", "grad/cos_def2_qa")


@dataclass
class ConfigurationReport(ConfigurationEffects):
    paper: PaperReference | None = None
    figures: list[Path] = field(default_factory=list)


def default_out_dir(sweep: str, smoke: bool = False) -> Path:
    return Path("reports") / (sweep + ("-smoke" if smoke else ""))


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def _curve_panels(c: Configuration, measure: str, paper: PaperReference | None,
                  templates: tuple[str, ...]) -> dict[str, list[figures.CurveSet]]:
    """``{"curves": [in-distribution panel], "entity": [one panel per template]}``."""
    steps = c.steps()
    ends = {}
    for t in c.trials:
        for stage, step in t.stage_ends().items():
            ends[stage] = max(ends.get(stage, step), step)
    families: dict[str, dict[str, np.ndarray]] = {}
    for metric in sorted(c.metric_names()):
        if not metric.startswith(f"{measure}/"):
            continue
        split = metric.split("/", 1)[1]
        family, subset = split_family(split, templates)
        families.setdefault(family, {})[subset] = c.unit_matrix(metric, steps)

    def paper_points(prefix: str, subsets) -> dict[str, list[tuple[float, float]]] | None:
        if paper is None:
            return None
        pts = {}
        for subset in subsets:
            for (split, stage), value in paper.subsets.items():
                if split == prefix + subset and stage in ends:
                    pts.setdefault(subset, []).append((float(ends[stage]), value))
        return pts or None

    out: dict[str, list[figures.CurveSet]] = {"curves": [], "entity": []}
    if "in-distribution" in families:
        subs = families["in-distribution"]
        out["curves"].append(figures.CurveSet("in-distribution questions", steps, subs, paper_points("", subs)))
    templates = sorted((f for f in families if f.startswith("entity attribution")), key=lambda f: (not f.endswith(": name"), f))
    for family in templates:
        template = family.split(": ", 1)[1]
        subs = families[family]
        title = {"name": '"What is the name of xyz?"', "who": '"Who is xyz?"', "meaning": '"What does xyz mean?"',
                 "stands_for": '"What does xyz stand for?"'}.get(template, template)
        out["entity"].append(figures.CurveSet(title, steps, subs, paper_points(f"ent_{template}_", subs)))
    return out


def _paired_gaps(r: ConfigurationReport, runs: SweepRuns) -> list[figures.PairedGaps]:
    """OCL and meta-OCL (in-distribution) of one configuration: the effects at each stage end, and
    each seed's gap per epoch (a - b, or the logged gap when only it is there)."""
    from metaocl.report.effects import verdict_stages

    c = r.configuration
    measure = runs.measure
    names = c.metric_names()
    steps = c.steps()
    wanted = verdict_stages(r.stages) if r.stages else {}
    out = []
    for pair in runs.kind_spec.effect_pairs:
        if pair.template is not None:
            continue
        ends = [e for e in r.effects if e.name == pair.name]
        if not ends:
            continue
        ma, mb = f"{measure}/{pair.a}", f"{measure}/{pair.b}"
        if ma in names and mb in names:
            matrix = c.unit_matrix(ma, steps) - c.unit_matrix(mb, steps)
        else:
            matrix = c.unit_matrix(pair.metric, steps)
        out.append(figures.PairedGaps(pair.name, ends, wanted.get(pair.effect), steps, matrix))
    return out


def _coupled_keys(key: str, grids: list[dict]) -> set[str]:
    """Keys whose value (or absence) follows from ``key``'s, e.g. the epochs of each batch size in a
    sweep file's coupled ``points``: they label no separate panel of the summary figure."""
    seen: dict[str, dict[str, set[str]]] = {}
    others = {k for g in grids for k in g if k != key}
    for g in grids:
        x = json.dumps(g.get(key), sort_keys=True)
        for k in others:
            seen.setdefault(k, {}).setdefault(x, set()).add(json.dumps(g.get(k), sort_keys=True))
    return {k for k, per_x in seen.items() if all(len(v) == 1 for v in per_x.values())}


def _primary_key(keys: list[str]) -> str | None:
    if not keys:
        return None
    for k in keys:
        if figures.key_style(k).xlabel != k:  # a key with a known summary layout
            return k
    return keys[0]


def _write_figures(runs: SweepRuns, reports: list[ConfigurationReport], out: Path) -> list[Path]:
    measure = runs.measure
    templates = runs.kind_spec.entity_templates
    written: list[Path] = []
    many = len(reports) > 1
    smoke = f"\n({SMOKE_TITLE})" if runs.smoke else ""  # every figure title says what a smoke run is
    for r in reports:  # first: the paired gaps, as the verdicts compute them
        c = r.configuration
        gaps = _paired_gaps(r, runs)
        if gaps:
            where = f" — {c.label}" if c.label else ""
            r.figures += figures.plot_paired_gaps(
                gaps, c.stage_boundaries(), measure,
                f"{runs.sweep}{where}: the paired gaps the verdicts test{smoke}",
                out / f"gaps_{c.slug}" if many else out / "gaps")
    for r in reports:
        c = r.configuration
        panels = _curve_panels(c, measure, r.paper, templates)
        where = f" — {c.label}" if c.label else ""
        n_units = len(c.clusters())
        spread = f"mean, 95% CI over {n_units} seeds" if n_units > 1 else "1 seed, no CI"
        if panels["curves"]:
            r.figures += figures.plot_curves(
                panels["curves"], c.stage_boundaries(), measure,
                f"{runs.sweep}{where}: test {measure} per subset ({spread}){smoke}",
                out / f"curves_{c.slug}" if many else out / "curves",
            )
        if panels["entity"]:
            r.figures += figures.plot_curves(
                panels["entity"], c.stage_boundaries(), measure,
                f"{runs.sweep}{where}: entity attribution ({spread}){smoke}",
                out / f"entity_{c.slug}" if many else out / "entity",
            )
        written += r.figures

    key = _primary_key(runs.grid_keys)
    if key is not None and many:
        coupled = _coupled_keys(key, [r.configuration.grid for r in reports])
        points = []
        for r in reports:
            c = r.configuration
            others = ", ".join(f"{k}={v}" for k, v in c.grid.items() if k != key and k not in coupled)
            paper = None
            if r.paper is not None:
                paper = {name: value for (name, stage), value in r.paper.effects.items()
                         if any(e.name == name and e.stage == stage for e in r.headline)}
            points.append(figures.GapPoint(x=c.grid.get(key), panel=others, effects=r.headline, paper=paper))
        leaf = key.rsplit(".", 1)[-1]
        written += figures.plot_gaps_vs_key(key, points, measure, out / f"summary_{leaf}")
    elif not many and reports:
        r = reports[0]
        values = {
            stage: {
                m.split("/", 1)[1]: r.configuration.unit_values(m, stage)
                for m in r.configuration.metric_names()
                if m.startswith(f"{measure}/") and split_family(m.split("/", 1)[1], templates)[0] == "in-distribution"
            }
            for stage in r.stages
        }
        if any(values.values()):
            written += figures.plot_stage_end_bars(
                values, measure, f"{runs.sweep}: test {measure} at the end of each stage (mean, 95% CI){smoke}",
                out / "stage_ends", r.paper.subsets if r.paper else None,
            )

    grad_series = []
    for r in reports:
        c = r.configuration
        present = [m for m in GRAD_METRICS if m in c.metric_names()]
        if not present:
            continue
        steps = sorted({s for t in c.trials for m in present for s in t.history.get(m, {})})
        grad_series.append(figures.GradSeries(
            label=c.label, x=c.grid.get(key) if key else None, steps=steps,
            curves={m: c.unit_matrix(m, steps) for m in present}, boundaries=c.stage_boundaries(),
        ))
    if grad_series:
        written += figures.plot_grad_alignment(grad_series, key if many else None, out / "grad_alignment")
    return written


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------
def _subset_table(r: ConfigurationReport, measure: str, templates: tuple[str, ...]) -> str:
    c = r.configuration

    def order(m: str) -> tuple:
        family, subset = split_family(m.split("/", 1)[1], templates)
        return family != "in-distribution", family, figures.subset_sort_key(subset)

    metrics = sorted((m for m in c.metric_names() if m.startswith(f"{measure}/")), key=order)
    head = ["split"] + [f"end of stage {s}" for s in r.stages]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in metrics:
        split = m.split("/", 1)[1]
        cells = [f"`{split}`"]
        for s in r.stages:
            text = mean_ci_text(c.unit_values(m, s))
            if r.paper is not None and (split, s) in r.paper.subsets:
                text += f" (paper ~{r.paper.subsets[(split, s)]:.2f})"
            cells.append(text)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _summary_markdown(runs: SweepRuns, reports: list[ConfigurationReport], verdicts: list[str],
                      figure_paths: list[Path], out: Path) -> str:
    measure = runs.measure
    seeds = sorted({len(r.configuration.clusters()) for r in reports})
    if runs.looks_parents:  # a group-sequential sweep: this look's invocation and the looks before it
        looks = ", ".join(f"`{p}` (look {k})" for k, p in enumerate(runs.looks_parents, start=1))
        which = (f"the finished trial runs of the {len(runs.looks_parents)} looks of this group-sequential sweep, "
                 f"joined: sweep invocations (parent runs) {looks}")
    else:
        which = f"the finished trial runs of sweep invocation (parent run) `{runs.parent_run_id}` only"
    lines = [
        f"# Report: {runs.sweep}",
        "",
        f"- MLflow experiment `{runs.experiment_name}` at `{runs.tracking_uri}`: {which}",
        f"- kind: {runs.kind or 'unknown'}; headline measure: `{measure}`; {runs.n_trials} trial runs in "
        f"{len(reports)} configuration(s), {'/'.join(map(str, seeds))} seed(s) each"
        + (f"; grid: {', '.join(f'`{k}`' for k in runs.grid_keys)}" if runs.grid_keys else "")
        + (f"; replicate axes (counted as seeds, runs averaged within each value): "
           f"{', '.join(f'`{k}`' for k in runs.replicate_keys)}" if runs.replicate_keys else ""),
        f"- generated {_dt.datetime.now().isoformat(timespec='seconds')}",
    ]
    if runs.smoke:
        lines[2:2] = [f"> **{smoke_note(runs.sweep)}**", ""]
    if runs.left_out:
        lines.append(f"- {runs.left_out_text()}")
    matched = [r for r in reports if r.paper is not None]
    if matched:
        lines.append(f"- paper values: {matched[0].paper.title}; {matched[0].paper.source}")
    lines += ["", "## Verdicts", ""]
    lines += [f"- {v}" for v in verdicts] or ["- no OCL / meta-OCL subsets were logged; no verdict"]
    gap_figures = [p for p in figure_paths if p.suffix == ".png" and p.stem.split("_")[0] == "gaps"]
    if gap_figures:
        lines += ["", "What the verdicts test: each seed's gap (OCL: qd1consis - qd2incons; meta-OCL: "
                  "d1consis - d2consis) as a dot, the mean and its 95% CI; the verdict reads the marked stage.", ""]
        lines += [f"![{p.stem}]({p.name})" for p in gap_figures]
    lines += ["", "## Effects at the end of each stage", ""]
    all_effects = [e for r in reports for e in r.effects]
    paper = {}
    for r in matched:
        paper.update(r.paper.effects)
    if all_effects:
        lines.append(markdown_effects_table(all_effects, paper if matched else None))
    else:
        lines.append("(none measurable)")
    lines += ["", f"## Test {measure} per split at the end of each stage (mean [95% CI] over seeds)", ""]
    for r in reports:
        if len(reports) > 1:
            lines += [f"### {r.configuration.label}", ""]
        lines += [_subset_table(r, measure, runs.kind_spec.entity_templates), ""]
    lines += ["## Figures", ""]
    for p in figure_paths:
        if p.suffix == ".png" and p not in gap_figures:
            lines.append(f"![{p.stem}]({p.name})")
    lines += ["", "## Method", "", METHOD_NOTE, ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
def make_report(
    sweep_name: str,
    tracking_uri: str,
    out_dir: str | Path | None = None,
    smoke: bool = False,
    log_to_mlflow: bool = True,
    parent_run_id: str | None = None,
) -> tuple[list[str], SweepRuns]:
    """Write figures + ``summary.md`` for one invocation of ``sweep_name`` into ``out_dir``.

    Returns the verdict lines and the runs read. The invocation is ``parent_run_id``, else the
    newest sweep parent run. ``out_dir`` defaults to ``reports/{sweep}`` (``reports/{sweep}-smoke``).
    Raises ``ConfigError`` when the sweep has no experiment, parent or usable trial runs at
    ``tracking_uri``, or when the runs of one configuration differ in more than the seed.
    """
    runs = load_sweep_runs(sweep_name, tracking_uri, smoke=smoke, parent_run_id=parent_run_id)
    out = Path(out_dir) if out_dir is not None else default_out_dir(sweep_name, smoke)

    reports = []
    for r in analyse(runs):
        params = r.configuration.trials[0].params if r.configuration.trials else {}
        reports.append(ConfigurationReport(r.configuration, r.stages, r.effects, r.headline,
                                           paper=match_reference(runs.kind, params, len(r.stages))))
    verdicts = verdict_lines(reports)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        figure_paths = _write_figures(runs, reports, tmp)
        (tmp / "summary.md").write_text(_summary_markdown(runs, reports, verdicts, figure_paths, tmp))
        (tmp / "verdicts.txt").write_text("\n".join(verdicts) + ("\n" if verdicts else ""))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    if log_to_mlflow and runs.parent_run_id is not None:
        from metaocl import mlflow_layout as layout

        layout.client(tracking_uri).log_artifacts(runs.parent_run_id, str(out), artifact_path="report")
    return verdicts, runs
