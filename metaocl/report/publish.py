"""The report's result where the MLflow UI shows it first: a sweep's aggregates, verdicts and description
on its parent run (and, for a grid, on one ``metaocl.role=configuration`` child run per grid point).

:func:`log_sweep_aggregates` (the driver calls it when a sweep ends) writes per epoch the mean over
seeds of each subset's headline measure and of every gap, with t-based 95% CI bounds
(``gap/meta_ocl``, ``gap/meta_ocl_lo``, ``gap/meta_ocl_hi``), and the verdicts as tags
(``metaocl.verdict.meta_ocl``); :func:`log_interim_verdicts` the verdicts so far while it runs.
Grouping and statistics are the report's own (:mod:`metaocl.report.runs`, :mod:`metaocl.report.stats`,
:mod:`metaocl.report.effects`); names, tags and queries are :mod:`metaocl.mlflow_layout`'s.
"""

from __future__ import annotations

import json
import math
import time

from metaocl import mlflow_layout as layout
from metaocl.report.effects import analyse
from metaocl.report.runs import SEED_PARAM, load_invocation, split_family
from metaocl.report.stats import DIFFERENCE, PROPORTION, format_p, mean_ci, verdict_line
from metaocl.report.summary import smoke_note


def starting_note(sweep) -> str:
    """A new parent run's description until the sweep ends: what a smoke run is ("" otherwise)."""
    return f"**{smoke_note(sweep.name)}**" if sweep.smoke else ""


def aggregate_metrics(configuration, kind) -> list[tuple[str, int, float]]:
    """``(name, step, value)`` per epoch: mean over independent units (seeds) and t-based 95% CI
    bounds (``name_lo``, ``name_hi``) of each in-distribution subset's headline measure and of each
    gap of ``kind.effect_pairs``. Bounds need 2 units; a step where no unit has a value is skipped."""
    names = configuration.metric_names()
    prefix = kind.measure + "/"
    subsets = sorted(m for m in names if m.startswith(prefix)
                     and split_family(m[len(prefix):], kind.entity_templates)[0] == "in-distribution")
    gaps = [pair.metric for pair in kind.effect_pairs if pair.metric in names]
    steps = configuration.steps()
    out = []
    for name in subsets + [g for g in gaps if g not in subsets]:
        matrix = configuration.unit_matrix(name, steps)
        for j, step in enumerate(steps):
            mean, lo, hi = mean_ci(matrix[:, j], bounds=DIFFERENCE if name in gaps else PROPORTION)
            if math.isfinite(mean):
                out.append((name, step, mean))
            if math.isfinite(lo) and math.isfinite(hi):
                out += [(f"{name}_lo", step, lo), (f"{name}_hi", step, hi)]
    return out


def _common_params(trials, ignore: set[str]) -> dict[str, str]:
    """Params with one value in every trial (the resolved config they share), minus ``ignore``."""
    if not trials:
        return {}
    common = {k: v for k, v in trials[0].params.items() if k not in ignore}
    for t in trials[1:]:
        common = {k: v for k, v in common.items() if t.params.get(k) == v}
    return common


def _log_batch(client, run_id: str, metrics=(), params=()) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, step) for k, step, v in metrics]
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i : i + 1000])
    plist = [Param(k, str(v)[:layout.MAX_PARAM_LENGTH]) for k, v in params]
    for i in range(0, len(plist), 100):
        client.log_batch(run_id, params=plist[i : i + 100])


def _verdicts(analysed, kind) -> dict[str, list[str]]:
    """Verdict tag -> its lines (one per configuration), from :func:`metaocl.report.effects.analyse`."""
    metric_of = {pair.name: pair.metric for pair in kind.effect_pairs}
    verdicts: dict[str, list[str]] = {}
    for r in analysed:
        for e in r.headline:
            verdicts.setdefault(layout.verdict_tag(metric_of.get(e.name, "gap/" + e.name)), []).append(verdict_line(e))
    return verdicts


def run_description(runs, analysed, parent_run_id: str, so_far: str = "") -> str:
    """The Markdown description (``mlflow.note.content``) of a sweep's parent run or of one
    configuration run (``analysed`` = its configurations): the verdict lines, the seeds they count,
    the ``metaocl report`` command that draws the figures, then the verdicts as a table (MLflow shows
    the first lines and folds the rest). ``so_far`` marks interim verdicts."""
    headline = [e for r in analysed for e in r.headline]
    lines = []
    if getattr(runs, "smoke", False):
        lines += [f"**{smoke_note(runs.sweep)}**", ""]
    summary = "; ".join(verdict_line(e, with_context=False).split(":", 1)[0] for e in headline)
    lines += [f"### {summary or 'no verdict'}{so_far}", ""]
    lines += [f"- {verdict_line(e)}" for e in headline]
    for r in analysed:
        c = r.configuration
        seeds = sorted({t.seed for t in c.trials})
        where = f"{c.label}: " if c.label and len(analysed) > 1 else ""
        lines.append(f"- {where}{len(c.clusters())} seed{'s' if len(c.clusters()) != 1 else ''} counted "
                     f"({len(c.trials)} finished trial run{'s' if len(c.trials) != 1 else ''}; seeds "
                     f"{', '.join(map(str, seeds))}); {runs.measure} at the end of each stage, paired over seeds")
    if runs.left_out:
        lines.append(f"- {runs.left_out_text()}")
    smoke = " --smoke" if getattr(runs, "smoke", False) else ""
    lines += ["", f"Figures and statistics: `metaocl report {runs.sweep}{smoke} --parent {parent_run_id}`"]
    if headline:
        lines += ["", "| configuration | effect | stage | gap | 95% CI | p | seeds | verdict |", "|---" * 8 + "|"]
        for e in headline:
            ci = f"[{e.lo:.3f}, {e.hi:.3f}]" if math.isfinite(e.lo) and math.isfinite(e.hi) else "n/a"
            lines.append(f"| {e.configuration or '(all)'} | {e.name}: {e.a} - {e.b} | {e.stage} | {e.mean:+.3f} | {ci} "
                         f"| {format_p(e.p).removeprefix('p=')} | {e.n} | {e.outcome} |")
    return "\n".join(lines)


def log_interim_verdicts(uri: str, parent_run_id: str, finished: int, total: int) -> None:
    """While a sweep runs: the verdicts over its trials finished so far, in the parent's verdict tags,
    each line ending ``(so far: 2 of 6 trials)``, so the MLflow UI's runs table shows the result
    building up during an hours-long sweep. :func:`log_sweep_aggregates` overwrites them at the end;
    after Ctrl-C they stay, saying how many trials they count."""
    runs = load_invocation(uri, None, parent_run_id, allow_empty=True)
    if not runs.configurations:
        return
    client = layout.client(uri)
    note = f" (so far: {finished} of {total} trials)"
    analysed = analyse(runs)
    for key, lines in _verdicts(analysed, runs.kind_spec).items():
        client.set_tag(parent_run_id, key, "\n".join(line + note for line in lines)[:layout.MAX_TAG_LENGTH])
    client.set_tag(parent_run_id, layout.NOTE_TAG, run_description(runs, analysed, parent_run_id, note))


def log_sweep_aggregates(uri: str, parent_run_id: str) -> list[str]:
    """Write the invocation's result where the MLflow UI shows it first; returns the verdict lines.

    Reads the FINISHED trials of the invocation with the report's loader. A sweep without a grid
    gets, on the parent run, per-epoch means and t-based 95% CI bounds over seeds
    (:func:`aggregate_metrics`), the params its trials share and the verdicts as tags
    (``metaocl.verdict.ocl``, ``metaocl.verdict.meta_ocl``, ...). A grid sweep gets one child run per
    configuration (``metaocl.role=configuration``, named by its grid values, its params including the
    grid keys) holding that configuration's aggregates and verdicts; the parent gets the params all
    trials share and every configuration's verdict line, one per line, in the same tags.

    Metrics are appended, never replaced (MLflow cannot delete a metric), so the parent's per-epoch
    aggregates are written once: a later call (``--resume`` of an ended sweep) updates tags and
    re-creates the configuration runs, but leaves the parent's metric curves as first written.
    """
    runs = load_invocation(uri, None, parent_run_id, allow_empty=True)
    if not runs.configurations:
        return []
    client = layout.client(uri)
    parent = client.get_run(parent_run_id)
    kind = runs.kind_spec
    analysed = analyse(runs)
    grid = len(runs.configurations) > 1 or bool(runs.configurations[0].grid)
    replicate = set(runs.replicate_keys)
    all_trials = [t for c in runs.configurations for t in c.trials]

    # The parent: what every trial shares, and the verdicts.
    parent_params = _common_params(all_trials, {SEED_PARAM, *replicate, *runs.grid_keys})
    parent_params = {k: v for k, v in parent_params.items() if parent.data.params.get(k, v) == v}
    verdicts = _verdicts(analysed, kind)
    already = bool(parent.data.metrics) and any(k.endswith("_lo") for k in parent.data.metrics)
    metrics = [] if grid or already else aggregate_metrics(runs.configurations[0], kind)
    _log_batch(client, parent_run_id, metrics, [(k, v) for k, v in parent_params.items()
                                                 if k not in parent.data.params])
    for key, lines in verdicts.items():
        client.set_tag(parent_run_id, key, "\n".join(lines)[:layout.MAX_TAG_LENGTH])
    seeds = sorted({t.seed for t in all_trials})
    client.set_tag(parent_run_id, layout.SEEDS_TAG, ",".join(map(str, seeds)))
    client.set_tag(parent_run_id, layout.NOTE_TAG, run_description(runs, analysed, parent_run_id))

    # One run per configuration of a grid (made afresh on every call, so it never holds stale curves).
    old = layout.child_runs(client, parent.info.experiment_id, parent_run_id, layout.CONFIGURATION_ROLE)
    for run in old:
        client.delete_run(run.info.run_id)
    if grid:
        for r in analysed:
            c = r.configuration
            tags = {layout.PARENT_TAG: parent_run_id, layout.SWEEP_RUN_TAG: parent_run_id,
                    layout.ROLE_TAG: layout.CONFIGURATION_ROLE, layout.SWEEP_TAG: runs.sweep, layout.KIND_TAG: runs.kind,
                    layout.GRID_TAG: json.dumps(c.grid, sort_keys=True),
                    layout.SEEDS_TAG: ",".join(str(t.seed) for t in c.trials),
                    layout.TRIALS_TAG: ",".join(t.trial_id for t in c.trials)}
            tags.update({key: "\n".join(lines)[:layout.MAX_TAG_LENGTH] for key, lines in _verdicts([r], kind).items()})
            tags[layout.NOTE_TAG] = run_description(runs, [r], parent_run_id)
            run = client.create_run(parent.info.experiment_id, run_name=c.label, tags=tags)
            params = _common_params(c.trials, {SEED_PARAM, *replicate})
            _log_batch(client, run.info.run_id, aggregate_metrics(c, kind), params.items())
            client.set_terminated(run.info.run_id, "FINISHED")
    return [line for lines in verdicts.values() for line in lines]
