"""Read one sweep invocation back from MLflow (the only input of the report and of the end-of-sweep summary).

Follows the layout of ``docs/architecture.md`` ("MLflow layout"): experiment ``metaocl/{sweep}``
(``-smoke`` for smoke runs), one parent run per ``metaocl sweep`` invocation tagged
``metaocl.role=sweep``, one child run per trial tagged ``metaocl.role=trial`` with
``metaocl.trial_id``, ``metaocl.grid`` (JSON of the trial's grid values) and ``seed``; params = the
flattened resolved config; per-epoch metrics with ``step = epoch`` including a ``stage`` metric.

**Which runs.** Exactly one invocation: the ``metaocl.role=trial`` children of one parent run (the
newest parent of the experiment unless one is named). Runs without a parent (or of another parent,
or with another role, e.g. per-configuration aggregates) are never read. A ``--resume``d sweep
reattaches to its parent, so it stays one invocation. Only FINISHED runs count; RUNNING (a driver
that died or is still going), FAILED and KILLED runs are left out and named.

**Grouping.** Trials are grouped into *configurations* by their ``metaocl.grid``; a configuration's
trials are its seeds. Grid keys that are themselves seeds (leaf name ending in ``seed``, e.g.
``train.stage1_seed`` of the two-stage sweep) are *replicate axes*, not configurations: trials that
differ only in them belong to one configuration. Trials sharing a replicate value (e.g. three stage-2
seeds branching from one cached stage-1 model) are not independent, so statistics treat each
replicate value as one unit (a *cluster*: the mean of its trials); without replicate axes every trial
is its own unit. The trials of one configuration must have the same resolved config (MLflow params)
but for ``seed`` and the replicate axes; anything else is refused (:class:`ConfigError`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from metaocl import mlflow_layout as layout
from metaocl.config import ConfigError

USED_STATUS = "FINISHED"
SEED_PARAM = "seed"  # the param (flattened config) and the tag (layout.SEED_TAG) of a trial's seed


@dataclass
class TrialRun:
    """One trial (one configuration x one seed) with its full per-epoch metric history."""

    run_id: str
    trial_id: str
    grid: dict[str, Any]
    seed: int
    status: str
    params: dict[str, str]
    history: dict[str, dict[int, float]]  # metric -> {step: value}

    def stage_ends(self) -> dict[int, int]:
        """Stage -> its last epoch (the last step whose ``stage`` metric equals that stage).

        A run without a ``stage`` metric is read as a single stage ending at its last logged step.
        """
        ends: dict[int, int] = {}
        if "stage" not in self.history:
            steps = [s for h in self.history.values() for s in h]
            return {1: max(steps)} if steps else {}
        for step, stage in self.history.get("stage", {}).items():
            s = int(round(stage))
            ends[s] = max(ends.get(s, step), step)
        return dict(sorted(ends.items()))

    @classmethod
    def from_history(cls, trial_id: str, grid: Mapping[str, Any], seed: int, rows: Sequence[Mapping[str, float]],
                     run_id: str = "", params: Mapping[str, str] | None = None) -> "TrialRun":
        """A trial from the metric dicts its runner reported in order (``epoch`` is the step), e.g. a
        ``metaocl run --no-track``; what MLflow would hold for it."""
        history: dict[str, dict[int, float]] = {}
        for row in rows:
            step = int(row.get("epoch", 0))
            for k, v in row.items():
                if k != "epoch":
                    history.setdefault(k, {})[step] = float(v)
        return cls(run_id=run_id, trial_id=trial_id, grid=dict(grid), seed=int(seed), status=USED_STATUS,
                   params=dict(params or {}), history=history)

    def value(self, metric: str, step: int) -> float:
        return self.history.get(metric, {}).get(step, math.nan)

    def at_stage_end(self, metric: str, stage: int) -> float:
        step = self.stage_ends().get(stage)
        return math.nan if step is None else self.value(metric, step)


def is_replicate_key(key: str) -> bool:
    """``train.stage1_seed`` -> True: a grid key that replicates rather than configures."""
    return key.rsplit(".", 1)[-1].endswith("seed")


@dataclass
class Configuration:
    """All seeds of one grid point (replicate axes excluded from ``grid``)."""

    grid: dict[str, Any]
    trials: list[TrialRun] = field(default_factory=list)
    replicate_keys: list[str] = field(default_factory=list)

    def clusters(self) -> list[list[TrialRun]]:
        """Independent units: trials grouped by their replicate-axis values (each trial alone if none)."""
        if not self.replicate_keys:
            return [[t] for t in self.trials]
        groups: dict[str, list[TrialRun]] = {}
        for t in self.trials:
            key = json.dumps([t.grid.get(k) for k in self.replicate_keys])
            groups.setdefault(key, []).append(t)
        return list(groups.values())

    def unit_values(self, metric: str, stage: int) -> list[float]:
        """``metric`` at the end of ``stage``, one value per independent unit (cluster mean, NaNs skipped)."""
        out = []
        for cluster in self.clusters():
            vals = [v for v in (t.at_stage_end(metric, stage) for t in cluster) if math.isfinite(v)]
            out.append(sum(vals) / len(vals) if vals else math.nan)
        return out

    def unit_matrix(self, metric: str, steps: list[int]) -> np.ndarray:
        """``units x steps`` values of ``metric``, averaged within clusters (for bands over independent units)."""
        rows = []
        for cluster in self.clusters():
            m = np.array([[t.value(metric, s) for s in steps] for t in cluster], dtype=float).reshape(len(cluster), len(steps))
            finite = np.isfinite(m)
            counts = finite.sum(axis=0)
            rows.append(np.where(counts > 0, np.where(finite, m, 0.0).sum(axis=0) / np.maximum(counts, 1), np.nan))
        return np.array(rows, dtype=float).reshape(len(rows), len(steps))

    @property
    def label(self) -> str:
        """``train.batch_size=128`` (``""`` when the sweep has no grid)."""
        return ", ".join(f"{k}={_short(v)}" for k, v in self.grid.items())

    @property
    def slug(self) -> str:
        """A file-name-safe form of the label (``all`` without a grid)."""
        text = "_".join(f"{k.split('.')[-1]}-{_short(v)}" for k, v in self.grid.items()) or "all"
        return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80]

    def stages(self) -> list[int]:
        found = set()
        for t in self.trials:
            found.update(t.stage_ends())
        return sorted(found)

    def metric_names(self) -> set[str]:
        names: set[str] = set()
        for t in self.trials:
            names.update(t.history)
        return names

    def steps(self) -> list[int]:
        found: set[int] = set()
        for t in self.trials:
            for name, h in t.history.items():
                if name == "stage" or name.startswith(("acc/", "em/", "gap/", "grad/")):
                    found.update(h)
        return sorted(found)

    def stage_boundaries(self) -> list[float]:
        """Epochs at which a new stage starts (midway between the stages' last/first epochs)."""
        by_stage: dict[int, list[int]] = {}
        for t in self.trials:
            for step, stage in t.history.get("stage", {}).items():
                by_stage.setdefault(int(round(stage)), []).append(step)
        stages = sorted(by_stage)
        return [
            (max(by_stage[a]) + min(by_stage[b])) / 2.0 for a, b in zip(stages, stages[1:]) if by_stage[b]
        ]


@dataclass
class SweepRuns:
    """One invocation of a sweep, as the report and the summary see it: read from MLflow and nothing else."""

    sweep: str
    experiment_name: str
    tracking_uri: str
    kind: str
    parent_run_id: str | None
    configurations: list[Configuration]
    left_out: dict[str, list[str]] = field(default_factory=dict)  # status -> ["s3 (run 1a2b...)", ...]
    # A group-sequential sweep's design, "pocock:6,12" (parent tag metaocl.sequential), and the
    # parent runs whose trials are joined here (the looks so far, oldest first); "" for an ordinary sweep.
    sequential: str = ""
    looks_parents: list[str] = field(default_factory=list)
    smoke: bool = False  # the sweep's smoke variant (parent tag metaocl.smoke): a plumbing check

    @property
    def kind_spec(self):
        """The :class:`~metaocl.experiments.base.ExperimentKind` (headline measure, effect pairs)."""
        from metaocl.config import kind

        return kind(self.kind)

    @property
    def measure(self) -> str:
        """The headline measure: ``acc`` (set inclusion, MNIST) or ``em`` (language models)."""
        return self.kind_spec.measure

    @property
    def replicate_keys(self) -> list[str]:
        keys: list[str] = []
        for c in self.configurations:
            keys.extend(k for k in c.replicate_keys if k not in keys)
        return keys

    @property
    def grid_keys(self) -> list[str]:
        keys: list[str] = []
        for c in self.configurations:
            keys.extend(k for k in c.grid if k not in keys)
        return keys

    @property
    def n_trials(self) -> int:
        return sum(len(c.trials) for c in self.configurations)

    def invocation_text(self) -> str:
        """``sweep invocation 3f2c...``; the looks of a group-sequential sweep joined here:
        ``2 looks joined: sweep invocations 1a2b... (look 1), 3f2c... (look 2)``."""
        if not self.looks_parents:
            return f"sweep invocation {self.parent_run_id}"
        looks = ", ".join(f"{p} (look {k})" for k, p in enumerate(self.looks_parents, start=1))
        return f"{len(self.looks_parents)} looks joined: sweep invocations {looks}"

    def left_out_text(self) -> str:
        """``left out: 1 running run (s3 ...); 2 failed runs (...)`` or ``""``."""
        parts = []
        for status, names in self.left_out.items():
            parts.append(f"{len(names)} {status.lower()} run{'s' if len(names) != 1 else ''} ({', '.join(names)})")
        return "left out: " + "; ".join(parts) if parts else ""


def _short(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, str) and "/" in v:
        return v.rsplit("/", 1)[-1]  # EleutherAI/pythia-1b -> pythia-1b
    return str(v)


def _parse_grid(text: str | None, run_id: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        grid = json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"MLflow run {run_id}: tag {layout.GRID_TAG} is not JSON: {text[:60]!r}") from None
    if not isinstance(grid, dict):
        raise ConfigError(f"MLflow run {run_id}: tag {layout.GRID_TAG} must be a JSON object, got {text[:60]!r}")
    return grid


def group_trials(trials: Iterable[TrialRun]) -> list[Configuration]:
    """Trials -> configurations (replicate axes are not configurations; see the module docstring).

    The one grouping the report, the end-of-sweep summary and the MLflow UI aggregates use. Raises
    :class:`ConfigError` when two trials of one configuration differ in a resolved-config value other
    than ``seed`` and the replicate axes.
    """
    groups: dict[str, Configuration] = {}
    for trial in trials:
        config_grid = {k: v for k, v in trial.grid.items() if not is_replicate_key(k)}
        replicate = sorted(k for k in trial.grid if is_replicate_key(k))
        key = json.dumps(config_grid, sort_keys=True)
        groups.setdefault(key, Configuration(grid=config_grid, replicate_keys=replicate)).trials.append(trial)
    configurations = list(groups.values())
    for c in configurations:
        c.trials.sort(key=lambda t: (t.seed, [json.dumps(t.grid.get(k)) for k in c.replicate_keys], t.trial_id))
        check_same_config(c)
    configurations.sort(key=lambda c: _grid_sort_key(c.grid))
    return configurations


def check_same_config(c: Configuration) -> None:
    """Refuse a configuration whose trials' resolved configs differ in anything but the seed(s)."""
    ignored = {SEED_PARAM, *c.replicate_keys}
    ref = next((t for t in c.trials if t.params), None)
    if ref is None:
        return
    for t in c.trials:
        if not t.params or t is ref:
            continue
        for k in sorted(set(ref.params) | set(t.params)):
            if k not in ignored and ref.params.get(k) != t.params.get(k):
                where = f" ({c.label})" if c.label else ""
                raise ConfigError(
                    f"runs {ref.trial_id} ({ref.run_id}) and {t.trial_id} ({t.run_id}) of one configuration{where} "
                    f"differ in {k}: {ref.params.get(k)!r} vs {t.params.get(k)!r}; refusing to pool them as seeds")


def _run_history(client, run_id: str, metrics) -> dict[str, dict[int, float]]:
    history: dict[str, dict[int, float]] = {}
    for metric in metrics:
        points = client.get_metric_history(run_id, metric)
        # Several values at one step (a re-logged epoch): the last logged wins.
        ordered = sorted(points, key=lambda m: (m.step, m.timestamp))
        history[metric] = {int(m.step): float(m.value) for m in ordered}
    return history


def _stitch(history: dict[str, dict[int, float]], stage1: dict[str, dict[int, float]]) -> None:
    """Put the stage-1 unit's reports before a branching trial's own (its steps before the trial's first)."""
    first = min((s for points in history.values() for s in points), default=None)
    for metric, points in stage1.items():
        mine = history.setdefault(metric, {})
        for step, value in points.items():
            if first is None or step < first:
                mine.setdefault(step, value)
        history[metric] = dict(sorted(mine.items()))


def _trial_from_run(client, run, stage1_cache: dict | None = None) -> TrialRun:
    """One trial run; a trial that branched from a stage-1 unit (tag ``metaocl.stage1_run``) gets the
    unit's curves before its own, so every trial reads as one whole run."""
    tags = run.data.tags
    history = _run_history(client, run.info.run_id, run.data.metrics)
    unit = tags.get(layout.STAGE1_RUN_TAG)
    if unit:
        cache = {} if stage1_cache is None else stage1_cache
        if unit not in cache:
            cache[unit] = _run_history(client, unit, client.get_run(unit).data.metrics)
        _stitch(history, cache[unit])
    seed_text = tags.get(layout.SEED_TAG, run.data.params.get(SEED_PARAM, "0"))
    try:
        seed = int(float(seed_text))
    except ValueError:
        seed = 0
    return TrialRun(
        run_id=run.info.run_id, trial_id=tags.get(layout.TRIAL_ID_TAG, run.info.run_id),
        grid=_parse_grid(tags.get(layout.GRID_TAG), run.info.run_id), seed=seed, status=run.info.status,
        params=dict(run.data.params), history=history,
    )


def load_invocation(tracking_uri: str, experiment: str | None, parent_run_id: str | None = None,
                    allow_empty: bool = False) -> SweepRuns:
    """The FINISHED trial runs of one sweep invocation (children of one parent run), grouped.

    ``parent_run_id`` defaults to the newest ``metaocl.role=sweep`` run of ``experiment`` (which may
    be ``None`` when ``parent_run_id`` is given). RUNNING, FAILED and KILLED children are left out
    and named in :attr:`SweepRuns.left_out`. Raises :class:`ConfigError` (one line) for a missing
    experiment, parent or store, for trials of one configuration whose configs differ in more than
    the seed, and, unless ``allow_empty``, when no trial run is usable.
    """
    client = layout.client(tracking_uri, f"report {experiment or parent_run_id}")
    if experiment is None:
        if parent_run_id is None:
            raise ValueError("load_invocation needs an experiment or a parent run id")
        try:
            exp = client.get_experiment(client.get_run(parent_run_id).info.experiment_id)
        except Exception:  # MlflowException: no such run
            raise ConfigError(f"parent run {parent_run_id}: no such run at {tracking_uri}") from None
    else:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ConfigError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
    return _load(client, exp, tracking_uri, parent_run_id, allow_empty)


def _load(client, exp, tracking_uri: str, parent_run_id: str | None, allow_empty: bool) -> SweepRuns:
    name = exp.name
    if parent_run_id is None:
        parents = layout.sweep_parents(client, exp.experiment_id)
        if not parents:
            raise ConfigError(f"experiment {name!r} at {tracking_uri} has no sweep (parent) run; "
                              "runs of `metaocl run` are never part of a report")
        parent = parents[0]  # newest first
    else:
        try:
            parent = client.get_run(parent_run_id)
        except Exception:  # MlflowException: no such run
            raise ConfigError(f"--parent {parent_run_id}: no such run at {tracking_uri}") from None
        if parent.info.experiment_id != exp.experiment_id:
            raise ConfigError(f"--parent {parent_run_id}: that run is not in experiment {name!r}")
        if parent.data.tags.get(layout.ROLE_TAG) != layout.SWEEP_ROLE:
            raise ConfigError(f"--parent {parent_run_id}: not a sweep run (tag {layout.ROLE_TAG}="
                              f"{parent.data.tags.get(layout.ROLE_TAG)!r}, expected {layout.SWEEP_ROLE!r})")
    pid = parent.info.run_id
    children = layout.child_runs(client, exp.experiment_id, pid, layout.TRIAL_ROLE)
    chosen: dict[str, Any] = {}
    left_out: dict[str, list[str]] = {}
    # A look of a group-sequential sweep: the trials of the looks before it belong to the same test.
    looks_parents = [pid]
    previous = parent.data.tags.get(layout.PREVIOUS_INVOCATION_TAG)
    while previous and previous not in looks_parents:
        looks_parents.insert(0, previous)
        children += layout.child_runs(client, exp.experiment_id, previous, layout.TRIAL_ROLE)
        try:
            previous = client.get_run(previous).data.tags.get(layout.PREVIOUS_INVOCATION_TAG)
        except Exception:  # MlflowException: the earlier look's run is gone
            raise ConfigError(f"parent run {pid}: its earlier look {previous} is not at {tracking_uri}") from None
    for run in children:  # newest first: should a trial id occur twice, the newest run counts
        tid = run.data.tags.get(layout.TRIAL_ID_TAG, run.info.run_id)
        if run.info.status != USED_STATUS:
            left_out.setdefault(run.info.status, []).append(f"{tid} (run {run.info.run_id})")
            continue
        chosen.setdefault(tid, run)
    for names in left_out.values():
        names.sort()
    units: dict = {}  # stage-1 unit run id -> its history, read once for all its trials
    kind = parent.data.tags.get(layout.KIND_TAG) or next(
        (r.data.tags[layout.KIND_TAG] for r in children if r.data.tags.get(layout.KIND_TAG)), None)
    if kind is None:
        raise ConfigError(f"parent run {pid} of {name!r} has no tag {layout.KIND_TAG}; cannot tell the headline measure")
    runs = SweepRuns(
        sweep=parent.data.tags.get(layout.SWEEP_TAG) or layout.sweep_of_experiment(name),
        experiment_name=name, tracking_uri=tracking_uri, kind=kind, parent_run_id=pid,
        configurations=group_trials(_trial_from_run(client, chosen[t], units) for t in sorted(chosen)),
        left_out=left_out, sequential=parent.data.tags.get(layout.SEQUENTIAL_TAG, ""),
        looks_parents=looks_parents if len(looks_parents) > 1 else [], smoke=parent.data.tags.get(layout.SMOKE_TAG) == "true",
    )
    if not runs.configurations and not allow_empty:
        extra = f"; {runs.left_out_text()}" if left_out else ""
        raise ConfigError(f"parent run {pid} of {name!r} at {tracking_uri} has no finished trial runs{extra}")
    return runs


def load_sweep_runs(sweep: str, tracking_uri: str, smoke: bool = False, parent_run_id: str | None = None) -> SweepRuns:
    """:func:`load_invocation` of ``metaocl report NAME [--smoke] [--parent RUN_ID]``, with hints
    naming the experiments the store does hold when ``metaocl/NAME`` is not there."""
    name = layout.experiment_name(sweep, smoke)
    client = layout.client(tracking_uri, f"report {sweep}")
    exp = client.get_experiment_by_name(name)
    if exp is None:
        known = sorted(e.name for e in client.search_experiments() if e.name.startswith(layout.EXPERIMENT_PREFIX))
        hint = f"; experiments there: {', '.join(known)}" if known else "; it has no metaocl experiments"
        other = layout.experiment_name(sweep, not smoke)
        if other in known:
            hint = f" (it has {other!r}: {'drop' if smoke else 'add'} --smoke)"
        raise ConfigError(f"report {sweep}: no MLflow experiment {name!r} at {tracking_uri}{hint}")
    try:
        return _load(client, exp, tracking_uri, parent_run_id, allow_empty=False)
    except ConfigError as e:
        raise ConfigError(f"report {sweep}: {e}") from None


def _grid_sort_key(grid: dict[str, Any]) -> tuple:
    out = []
    for k in sorted(grid):
        v = grid[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            out.append((1, 0.0, str(v)))
        else:
            out.append((0, float(v), ""))
    return tuple(out)


def split_family(split: str, templates: Sequence[str] = ()) -> tuple[str, str]:
    """``qd1consis`` -> ("in-distribution", "qd1consis"); with the kind's entity ``templates``,
    ``ent_stands_for_d1consis`` ->
    ("entity attribution: stands_for", "d1consis"); ``ent_name_qd2incons_defent`` ->
    ("entity attribution: name", "qd2incons_defent")."""
    if split.startswith("ent_"):
        rest = split[4:]
        for template in sorted(templates, key=len, reverse=True):
            if rest.startswith(template + "_"):
                return f"entity attribution: {template}", rest[len(template) + 1 :]
        template, _, subset = rest.partition("_")
        return f"entity attribution: {template}", subset
    return "in-distribution", split
