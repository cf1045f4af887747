"""Read a sweep's trials back from MLflow (the report's only input).

Follows the layout of ``docs/architecture.md`` ("MLflow layout"): experiment ``metaocl/{sweep}``
(``-smoke`` for smoke runs), parent runs tagged ``metaocl.role=sweep``, one child run per trial
tagged ``metaocl.role=trial`` with ``metaocl.trial_id``, ``metaocl.grid`` (JSON of the trial's grid
values) and ``seed``; per-epoch metrics with ``step = epoch`` including a ``stage`` metric.

Trials are grouped into *configurations* by their ``metaocl.grid``; a configuration's trials are
its seeds. Grid keys that are themselves seeds (leaf name ending in ``seed``, e.g.
``train.stage1_seed`` of the two-stage sweep) are *replicate axes*, not configurations: trials that
differ only in them belong to one configuration. Trials sharing a replicate value (e.g. three stage-2
seeds branching from one cached stage-1 model) are not independent, so statistics treat each
replicate value as one unit (a *cluster*: the mean of its trials); without replicate axes every trial
is its own unit. If a sweep was run more than once (a resume), the newest run of each trial id wins.
Failed and killed runs are left out (and counted), so a crashed seed never pulls an average down.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metaocl.config import ConfigError

ENTITY_TEMPLATES = ("who", "meaning", "stands_for", "name")
SKIPPED_STATUSES = ("FAILED", "KILLED")


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
        """``units x steps``: :meth:`matrix` averaged within clusters (for bands over independent units)."""
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

    @property
    def seeds(self) -> list[int]:
        return [t.seed for t in self.trials]

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

    def matrix(self, metric: str, steps: list[int]) -> np.ndarray:
        """``seeds x steps`` values of ``metric`` (NaN where a seed did not log that step)."""
        return np.array([[t.value(metric, s) for s in steps] for t in self.trials], dtype=float).reshape(
            len(self.trials), len(steps)
        )

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
    """What the report knows about a sweep: read from MLflow and nothing else."""

    sweep: str
    experiment_name: str
    experiment_id: str
    tracking_uri: str
    kind: str | None
    parent_run_id: str | None
    configurations: list[Configuration]
    skipped: dict[str, int]  # status -> count of runs left out

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
    def measure(self) -> str:
        """The headline measure: ``acc`` (set inclusion, MNIST) or ``em`` (language models)."""
        names = set().union(*(c.metric_names() for c in self.configurations)) if self.configurations else set()
        if any(n.startswith("acc/") for n in names):
            return "acc"
        return "em"

    @property
    def n_trials(self) -> int:
        return sum(len(c.trials) for c in self.configurations)


def _short(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, str) and "/" in v:
        return v.rsplit("/", 1)[-1]  # EleutherAI/pythia-1b -> pythia-1b
    return str(v)


def experiment_name(sweep: str, smoke: bool = False) -> str:
    return f"metaocl/{sweep}" + ("-smoke" if smoke else "")


def _search_all(client, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=1000, page_token=token,
            order_by=["attributes.start_time DESC"],
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _parse_grid(text: str | None, run_id: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        grid = json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"MLflow run {run_id}: tag metaocl.grid is not JSON: {text[:60]!r}") from None
    if not isinstance(grid, dict):
        raise ConfigError(f"MLflow run {run_id}: tag metaocl.grid must be a JSON object, got {text[:60]!r}")
    return grid


def load_sweep_runs(sweep: str, tracking_uri: str, smoke: bool = False) -> SweepRuns:
    """All trials of ``sweep`` grouped into configurations, with full metric histories.

    Raises :class:`ConfigError` (one line) when the experiment does not exist or has no trial runs.
    """
    from mlflow.tracking import MlflowClient

    name = experiment_name(sweep, smoke)
    if tracking_uri.startswith("sqlite:///"):
        path = tracking_uri[len("sqlite:///"):]
        if not os.path.isfile(path):  # do not let MLflow create an empty store as a side effect
            raise ConfigError(f"report {sweep}: no MLflow store at {path} (run `metaocl sweep {sweep}` first, "
                              "or pass --tracking-uri)")
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        known = sorted(e.name for e in client.search_experiments() if e.name.startswith("metaocl/"))
        hint = f"; experiments there: {', '.join(known)}" if known else "; it has no metaocl experiments"
        other = experiment_name(sweep, not smoke)
        if other in known:
            hint = f" (it has {other!r}: {'drop' if smoke else 'add'} --smoke)"
        raise ConfigError(f"report {sweep}: no MLflow experiment {name!r} at {tracking_uri}{hint}")

    parents = _search_all(client, exp.experiment_id, "tags.`metaocl.role` = 'sweep'")
    parent = parents[0] if parents else None  # newest first
    trial_runs = _search_all(client, exp.experiment_id, "tags.`metaocl.role` = 'trial'")

    newest: dict[str, Any] = {}
    skipped: dict[str, int] = {}
    for run in trial_runs:  # newest first: the first run of a trial id wins
        status = run.info.status
        if status in SKIPPED_STATUSES:
            skipped[status] = skipped.get(status, 0) + 1
            continue
        tid = run.data.tags.get("metaocl.trial_id", run.info.run_id)
        newest.setdefault(tid, run)
    if not newest:
        extra = f" ({', '.join(f'{n} {s.lower()}' for s, n in skipped.items())})" if skipped else ""
        raise ConfigError(f"report {sweep}: experiment {name!r} at {tracking_uri} has no usable trial runs{extra}")

    groups: dict[str, Configuration] = {}
    for tid, run in sorted(newest.items()):
        tags = run.data.tags
        grid = _parse_grid(tags.get("metaocl.grid"), run.info.run_id)
        config_grid = {k: v for k, v in grid.items() if not is_replicate_key(k)}
        replicate = sorted(k for k in grid if is_replicate_key(k))
        key = json.dumps(config_grid, sort_keys=True)
        history: dict[str, dict[int, float]] = {}
        for metric in run.data.metrics:
            points = client.get_metric_history(run.info.run_id, metric)
            # Several values at one step (a re-logged epoch): the last logged wins.
            ordered = sorted(points, key=lambda m: (m.step, m.timestamp))
            history[metric] = {int(m.step): float(m.value) for m in ordered}
        seed_text = tags.get("seed", run.data.params.get("seed", "0"))
        try:
            seed = int(float(seed_text))
        except ValueError:
            seed = 0
        trial = TrialRun(
            run_id=run.info.run_id, trial_id=tid, grid=grid, seed=seed, status=run.info.status,
            params=dict(run.data.params), history=history,
        )
        groups.setdefault(key, Configuration(grid=config_grid, replicate_keys=replicate)).trials.append(trial)

    configurations = list(groups.values())
    for c in configurations:
        c.trials.sort(key=lambda t: t.seed)
    configurations.sort(key=lambda c: _grid_sort_key(c.grid))
    kind = parent.data.tags.get("metaocl.kind") if parent is not None else None
    if kind is None:
        kind = next((r.data.tags.get("metaocl.kind") for r in newest.values() if r.data.tags.get("metaocl.kind")), None)
    return SweepRuns(
        sweep=sweep, experiment_name=name, experiment_id=exp.experiment_id, tracking_uri=tracking_uri,
        kind=kind, parent_run_id=parent.info.run_id if parent is not None else None,
        configurations=configurations, skipped=skipped,
    )


def _grid_sort_key(grid: dict[str, Any]) -> tuple:
    out = []
    for k in sorted(grid):
        v = grid[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            out.append((1, 0.0, str(v)))
        else:
            out.append((0, float(v), ""))
    return tuple(out)


def split_family(split: str) -> tuple[str, str]:
    """``qd1consis`` -> ("in-distribution", "qd1consis"); ``ent_stands_for_d1consis`` ->
    ("entity attribution: stands_for", "d1consis"); ``ent_name_qd2incons_defent`` ->
    ("entity attribution: name", "qd2incons_defent")."""
    if split.startswith("ent_"):
        rest = split[4:]
        for template in sorted(ENTITY_TEMPLATES, key=len, reverse=True):
            if rest.startswith(template + "_"):
                return f"entity attribution: {template}", rest[len(template) + 1 :]
        template, _, subset = rest.partition("_")
        return f"entity attribution: {template}", subset
    return "in-distribution", split
