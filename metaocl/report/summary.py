"""The summary a sweep prints when it ends (and ``metaocl run`` after its one trial).

Per configuration, the headline measure per split at the end of each stage (mean and t-based 95% CI
over independent units), then the verdict lines. It is computed by the report's own code from the
report's own input: :func:`summarize_invocation` reads the just-finished invocation back from MLflow
with :func:`metaocl.report.runs.load_invocation` and :func:`metaocl.report.effects.analyse`, so its
grouping (seed-like grid keys such as ``train.stage1_seed`` are replicates), seed counts, numbers
and verdict lines are those of ``metaocl report NAME`` on the same store, word for word.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from metaocl.config import ConfigError
from metaocl.configs.lm_data import ALL_SUBSETS
from metaocl.report.effects import analyse, verdict_lines
from metaocl.report.runs import SweepRuns, TrialRun, group_trials, load_invocation
from metaocl.report.stats import mean_ci_text

CELL = 26


def _split_order(split: str) -> tuple[int, str]:
    return (ALL_SUBSETS.index(split) if split in ALL_SUBSETS else len(ALL_SUBSETS), split)


def smoke_note(sweep: str) -> str:
    """What a smoke run is, and the command that gives real results (sweep output, report, MLflow)."""
    return (f"SMOKE RUN: a plumbing check (tiny data, a few epochs, 2 seeds) that every part is wired; "
            f"its accuracies stay near chance and its verdicts inconclusive by design. "
            f"Real results: metaocl sweep {sweep}, then metaocl report {sweep}")


SMOKE_TITLE = "smoke run: plumbing check, near chance by design"  # appended to the report's figure titles


def summary_text(runs: SweepRuns) -> str:
    """Text of the summary of ``runs`` (one block per configuration, then the verdict lines)."""
    measure = runs.measure
    lines = []
    if runs.smoke:
        lines += [smoke_note(runs.sweep), ""]
    if runs.parent_run_id:
        lines.append(f"{runs.experiment_name}: {runs.invocation_text()}, "
                     f"{runs.n_trials} finished trial run{'s' if runs.n_trials != 1 else ''}")
    if runs.left_out:
        lines.append(runs.left_out_text())
    analysed = analyse(runs)
    for r in analysed:
        c = r.configuration
        units = len(c.clusters())
        count = f"{units} seed{'s' if units != 1 else ''}" + (f" ({len(c.trials)} runs)" if c.replicate_keys else "")
        if lines:
            lines.append("")
        lines.append(f"{c.label or 'all trials'}  ({count}; {measure}, mean [95% CI])")
        lines.append(f"  {'split':<28}" + "".join(f"{'after stage ' + str(s):>{CELL}}" for s in r.stages))
        prefix = measure + "/"
        splits = sorted((m[len(prefix):] for m in c.metric_names() if m.startswith(prefix)), key=_split_order)
        for split in splits:
            cells = [mean_ci_text(c.unit_values(prefix + split, s)) for s in r.stages]
            lines.append(f"  {split:<28}" + "".join(f"{cell:>{CELL}}" for cell in cells))
    verdicts = verdict_lines(analysed)
    if verdicts:
        lines += ["", "verdicts:"] + verdicts
    return "\n".join(lines)


def summarize_invocation(tracking_uri: str, parent_run_id: str, experiment: str | None = None) -> str:
    """The summary of one sweep invocation (parent run) as MLflow holds it (only the left-out runs,
    or "", when no trial finished). A store the report would refuse gives that one line instead of
    failing the sweep that just ended."""
    try:
        runs = load_invocation(tracking_uri, experiment, parent_run_id, allow_empty=True)
    except ConfigError as e:
        return f"no summary: {e}"
    if not runs.configurations:
        return runs.left_out_text()
    return summary_text(runs)


def summarize_trial(kind: str, trial_id: str, grid: Mapping[str, Any], seed: int,
                    history: Sequence[Mapping[str, float]], experiment: str = "") -> str:
    """The summary of a single trial from the metrics it reported (``metaocl run``, tracked or not)."""
    trial = TrialRun.from_history(trial_id, grid, seed, history)
    runs = SweepRuns(sweep=experiment, experiment_name=experiment, tracking_uri="", kind=kind, parent_run_id=None,
                     configurations=group_trials([trial]) if history else [])
    return summary_text(runs)
