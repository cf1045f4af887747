"""MLflow tracking: one experiment per sweep, a parent run per invocation, a child run per trial.

:class:`SweepTracker` writes what a sweep (or ``metaocl run``) produces into MLflow as it runs; the
names it writes (experiments, tags, roles) and the store URI rules are :mod:`metaocl.mlflow_layout`'s.
When a sweep ends, the report's code publishes its aggregates and verdicts onto the parent run
(:mod:`metaocl.report.publish`); this module never imports the report.

Only the process that drives a sweep writes to MLflow; trials hand their metrics to it through
``tune.report``. That keeps the embedded SQLite store (``sqlite:///mlflow.db`` in the working
directory, MLflow's own default, so ``mlflow ui`` there shows it) free of concurrent writers, and
means a trial never needs to reach the tracking server. The layout is specified in
``docs/architecture.md`` and read back by ``metaocl report``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

import yaml

from metaocl import mlflow_layout as layout
from metaocl.config import ConfigError, Sweep, Trial, flatten


def metric_items(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics a runner reported (``a/b`` names, ``epoch``, ``stage``), without Ray's bookkeeping."""
    out = {}
    for k, v in metrics.items():
        if ("/" in k or k in ("epoch", "stage")) and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


class SweepTracker:
    """Writes one sweep invocation into MLflow. All calls come from the driver process."""

    def __init__(self, uri: str, experiment_name: str, run_name: str, tags: Mapping[str, str]):
        self.uri = uri
        self.client = layout.client(uri)
        exp = self.client.get_experiment_by_name(experiment_name)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment_name)
        if exp is None or layout.EXPERIMENT_KIND_TAG not in exp.tags:  # a kind chosen in the UI is kept
            self.client.set_experiment_tag(self.experiment_id, layout.EXPERIMENT_KIND_TAG, layout.EXPERIMENT_KIND)
        self.parent_id: str | None = None
        self._parent_tags = dict(tags)
        self._run_name = run_name
        self.trial_runs: dict[str, str] = {}
        self.trial_status: dict[str, str] = {}  # status of reattached child runs (``--resume``)
        self.trial_tags: dict[str, dict[str, str]] = {}

    @classmethod
    def reattach(cls, uri: str, parent_id: str) -> "SweepTracker":
        """The tracker of an earlier invocation (``--resume``): same parent run, same child runs.

        Child runs are found by their ``mlflow.parentRunId`` tag, so a child created just before the
        old driver died is found too and never duplicated.
        """
        client = layout.client(uri)
        try:
            parent = client.get_run(parent_id)
        except Exception as e:  # MlflowException for an unknown run id
            raise ConfigError(f"cannot resume: parent run {parent_id} is not in the MLflow store {uri} "
                              f"({str(e).splitlines()[0]})") from None
        exp = client.get_experiment(parent.info.experiment_id)
        tracker = cls.__new__(cls)
        tracker.uri, tracker.client, tracker.experiment_id = uri, client, exp.experiment_id
        tracker.parent_id, tracker._parent_tags, tracker._run_name = parent_id, dict(parent.data.tags), parent.info.run_name
        tracker.trial_runs = {}
        tracker.trial_status: dict[str, str] = {}
        tracker.trial_tags: dict[str, dict[str, str]] = {}
        children = layout.child_runs(client, exp.experiment_id, parent_id)
        for run in sorted(children, key=lambda r: r.info.start_time or 0):
            tid = run.data.tags.get(layout.TRIAL_ID_TAG)
            if tid and tid not in tracker.trial_runs:
                tracker.trial_runs[tid] = run.info.run_id
                tracker.trial_status[tid] = run.info.status
                tracker.trial_tags[tid] = dict(run.data.tags)
        client.update_run(parent_id, status="RUNNING")
        return tracker

    def last_step(self, run_id: str) -> int:
        """The last ``epoch`` logged to a run (0 when none): a resumed trial logs only later epochs."""
        history = self.client.get_metric_history(run_id, "epoch")
        return max((m.step for m in history), default=0)

    def load_history(self, run_id: str) -> list[dict[str, float]]:
        """The per-epoch metrics of a run as the runner reported them, one dict per step."""
        rows: dict[int, dict[str, float]] = {}
        for key in self.client.get_run(run_id).data.metrics:
            for m in self.client.get_metric_history(run_id, key):
                rows.setdefault(m.step, {})[key] = m.value
        return [rows[s] for s in sorted(rows)]

    def set_status(self, run_id: str, status: str) -> None:
        self.client.update_run(run_id, status=status)

    @classmethod
    def for_sweep(cls, sweep: Sweep, uri: str, note: str = "") -> "SweepTracker":
        """A new parent run for ``sweep``. ``note``: the parent's description until the sweep ends
        (:func:`metaocl.report.publish.starting_note`: what a smoke run is)."""
        tracker = cls(uri, sweep.experiment_name, f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                      layout.parent_tags(sweep.name, sweep.kind, sweep.smoke))
        if sweep.description:  # the experiment page's description: what the sweep is
            tracker.client.set_experiment_tag(tracker.experiment_id, layout.NOTE_TAG, sweep.description)
        tracker.start_parent()
        if note:
            tracker.client.set_tag(tracker.parent_id, layout.NOTE_TAG, note)
        tracker.client.log_text(tracker.parent_id, sweep.path.read_text(), f"sweep/{sweep.path.name}")
        tracker.client.log_text(tracker.parent_id, yaml.safe_dump(
            {"base": sweep.base, "grid": sweep.grid, "seeds": sweep.seeds}, sort_keys=False), "sweep/resolved.yaml")
        return tracker

    def start_parent(self) -> str:
        run = self.client.create_run(self.experiment_id, run_name=self._run_name, tags=self._parent_tags)
        self.parent_id = run.info.run_id
        self.client.set_tag(self.parent_id, layout.SWEEP_RUN_TAG, self.parent_id)
        return self.parent_id

    def start_trial(self, trial: Trial, sweep_name: str, kind: str, role: str = layout.TRIAL_ROLE,
                    extra_tags: Mapping[str, str] | None = None) -> str:
        """A child run of the parent for ``trial``. ``role``: ``trial``, or ``stage1`` for a stage-1 unit
        (its curves once; the trials branching from it carry ``metaocl.stage1_run`` in ``extra_tags``)."""
        from mlflow.entities import Param

        tags = {layout.ROLE_TAG: role, layout.SWEEP_TAG: sweep_name, layout.KIND_TAG: kind,
                layout.TRIAL_ID_TAG: trial.trial_id, layout.GRID_TAG: json.dumps(trial.grid_values, sort_keys=True),
                layout.SEED_TAG: str(trial.seed), layout.STAGE_TAG: "1", **(extra_tags or {})}
        if self.parent_id:
            tags[layout.PARENT_TAG] = self.parent_id
            tags[layout.SWEEP_RUN_TAG] = self.parent_id
        run = self.client.create_run(self.experiment_id, run_name=trial.trial_id, tags=tags)
        run_id = run.info.run_id
        params = [Param(k, str(v)[:layout.MAX_PARAM_LENGTH]) for k, v in flatten(trial.config_dict()).items()]
        for i in range(0, len(params), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(run_id, params=params[i : i + 100])
        self.client.log_text(run_id, yaml.safe_dump(trial.config_dict(), sort_keys=False), "config.yaml")
        self.client.set_tag(run_id, layout.CONFIG_TAG, "config.yaml")
        self.trial_runs[trial.trial_id] = run_id
        return run_id

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        values = metric_items(metrics)
        step = int(values.get("epoch", 0))
        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(run_id, metrics=batch[i : i + 1000])
        if "stage" in values:
            self.client.set_tag(run_id, layout.STAGE_TAG, str(int(values["stage"])))

    def end_trial(self, run_id: str, ok: bool, error: str | None = None) -> None:
        if error:
            self.client.set_tag(run_id, layout.ERROR_TAG, error[:layout.MAX_TAG_LENGTH])
            self.client.log_text(run_id, error, "error.txt")
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    def end(self, ok: bool, status: str | None = None) -> None:
        if self.parent_id:
            self.client.set_terminated(self.parent_id, status or ("FINISHED" if ok else "FAILED"))
