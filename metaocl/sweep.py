"""Run a sweep on Ray Tune: one trial per (grid point, seed), tracked in MLflow by the driver.

    metaocl sweep quickstart              # local Ray on loopback, ./mlflow.db
    metaocl sweep batch_size --address ray://head:10001 --tracking-uri http://mlflow:5000

The planner (:func:`metaocl.config.load_sweep`) has already validated every trial config; this
module only schedules them. Each trial runs ``experiments/<kind>.run(config, reporter)`` in a Ray
worker; its reporter forwards metrics with ``tune.report``; a driver-side callback writes them to
MLflow (parent run for the invocation, child run per trial) and keeps them for the end summary.
"""

from __future__ import annotations

import os
import platform
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ray import tune

from metaocl.config import ConfigError, Sweep, Trial, config_class, from_dict, runner_module
from metaocl.summary import summarize
from metaocl.tracking import SweepTracker, _metric_items

LOCAL_NODE_IP = "127.0.0.2" if platform.system() == "Linux" else "127.0.0.1"


def default_storage() -> Path:
    """Where Ray keeps trial state: ``$METAOCL_RESULTS`` or ``./metaocl-results``."""
    return Path(os.environ.get("METAOCL_RESULTS", Path.cwd() / "metaocl-results")).resolve()


class _TuneReporter:
    """Inside a Ray worker: hand each evaluation to the driver through ``tune.report``."""

    interactive = False

    def __call__(self, metrics: Mapping[str, float]) -> None:
        from ray import tune

        tune.report(dict(metrics))


def _trainable(param: dict) -> None:
    """The Ray Tune function trainable: rebuild the trial's config and run its experiment."""
    spec = param["trial"]
    os.environ["METAOCL_TRIAL_CPUS"] = str(spec["cpus"])
    config = from_dict(config_class(spec["kind"]), spec["config"], f"trial {spec['trial_id']}")
    runner_module(spec["kind"]).run(config, _TuneReporter())


@dataclass
class SweepOutcome:
    histories: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    params: dict[str, dict] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        return summarize(self.histories, self.params)


class MlflowDriverCallback(tune.Callback):
    """Runs in the driver: the only MLflow writer of the sweep.

    Ray checkpoints callbacks with the experiment state, so the driver-side handles (MLflow client,
    progress bar) are left out of the pickled state.
    """

    def __init__(self, tracker: SweepTracker, sweep: Sweep, trial_by_id: dict[str, Trial],
                 outcome: SweepOutcome, bar=None):
        self.tracker, self.sweep, self.trial_by_id, self.outcome, self.bar = tracker, sweep, trial_by_id, outcome, bar

    def __getstate__(self):
        return {}

    @staticmethod
    def _tid(trial) -> str:
        return trial.config["trial"]["trial_id"]

    def on_trial_start(self, iteration, trials, trial, **info):
        tid = self._tid(trial)
        if tid not in self.tracker.trial_runs:
            self.tracker.start_trial(self.trial_by_id[tid], self.sweep.name, self.sweep.kind)
        self.outcome.histories[tid] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = self._tid(trial)
        self.tracker.log_metrics(self.tracker.trial_runs[tid], result)
        self.outcome.histories.setdefault(tid, []).append(_metric_items(result))
        if self.bar is not None:
            self.bar.update(1)

    def on_trial_recover(self, iteration, trials, trial, **info):
        tid = self._tid(trial)
        self.outcome.retried[tid] = self.outcome.retried.get(tid, 0) + 1
        self.tracker.client.set_tag(self.tracker.trial_runs[tid], "metaocl.retries", str(self.outcome.retried[tid]))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.tracker.end_trial(self.tracker.trial_runs[self._tid(trial)], ok=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        tid = self._tid(trial)
        error = _trial_error_text(trial)
        self.outcome.failed[tid] = error.strip().splitlines()[-1] if error.strip() else "failed"
        self.tracker.end_trial(self.tracker.trial_runs[tid], ok=False, error=error)


def _trial_error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        return Path(path).read_text()
    return str(getattr(trial, "error_msg", "") or "trial failed")


def expected_reports(trial: Trial) -> int | None:
    """How many evaluations a trial will report (for the progress bar), when the config says."""
    cfg = trial.config
    train = getattr(cfg, "train", None)
    every = getattr(getattr(cfg, "eval", None), "every", 1) or 1
    if train is not None and hasattr(train, "stage1_epochs"):
        stages = [train.stage1_epochs] + ([] if getattr(train, "joint", False) else [train.stage2_epochs])
        return sum(-(-e // every) for e in stages if e > 0)
    return None


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or ``$RAY_ADDRESS``), else start a local instance bound to loopback."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    common = dict(log_to_driver=False, configure_logging=True, logging_level="ERROR")
    if address:
        try:
            ray.init(address=address, **common)
        except Exception as e:  # Ray raises ConnectionError, RuntimeError, ... for a bad address
            raise ConfigError(f"Ray address {address} is unreachable ({str(e).splitlines()[0]})") from None
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 _node_ip_address=LOCAL_NODE_IP, **common)


def run_sweep(sweep: Sweep, tracking: str, address: str | None = None, storage: Path | None = None,
              progress: bool = True) -> SweepOutcome:
    """Run every trial of ``sweep`` on Ray Tune and track it into MLflow at ``tracking``."""
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    trials = {t.trial_id: t for t in sweep.trials()}
    tracker = SweepTracker.for_sweep(sweep, tracking)
    outcome = SweepOutcome(params={tid: t.params for tid, t in trials.items()})
    total = [expected_reports(t) for t in trials.values()]
    bar = None
    if progress and all(n is not None for n in total):
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(total), desc=f"{sweep.name}: {len(trials)} trials", unit="eval", file=sys.stderr)
    ok = False
    try:
        init_ray(address)
        # gpu: auto is decided by the cluster (the driver itself may have no GPU)
        resources = sweep.trial_resources(ray.cluster_resources().get("GPU", 0) > 0)
        space = [{"trial_id": tid, "kind": sweep.kind, "cpus": resources["cpu"], "config": t.config_dict()}
                 for tid, t in trials.items()]
        tuner = tune.Tuner(
            tune.with_resources(_trainable, resources),
            param_space={"trial": tune.grid_search(space)},
            tune_config=tune.TuneConfig(num_samples=1),
            run_config=tune.RunConfig(
                name=sweep.experiment_name.replace("/", "-") + "-" + tracker.parent_id[:8],
                storage_path=str(storage or default_storage()),
                callbacks=[MlflowDriverCallback(tracker, sweep, trials, outcome, bar)],
                failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                verbose=0,
            ),
        )
        tuner.fit()
        ok = outcome.ok
    except KeyboardInterrupt:
        print("\ninterrupted: the sweep was stopped; finished trials are in MLflow", file=sys.stderr)
        raise
    finally:
        if bar is not None:
            bar.close()
        tracker.end(ok)
        if ray.is_initialized():
            ray.shutdown()
    return outcome


def run_single(trial: Trial, kind: str, sweep_name: str, tracking: str | None, echo: bool = True) -> dict[str, Any]:
    """``metaocl run``: one trial in this process, no Ray; tracked into MLflow when ``tracking`` is set."""
    from metaocl.experiments import PrintReporter

    tracker = run_id = None
    if tracking:
        tracker = SweepTracker(tracking, f"metaocl/{sweep_name}", trial.trial_id, {})
        run_id = tracker.start_trial(trial, sweep_name, kind)
    reporter = PrintReporter(interactive=sys.stderr.isatty(), echo=echo)

    class _Tracked:
        interactive = reporter.interactive

        def __call__(self, metrics):
            reporter(metrics)
            if tracker:
                tracker.log_metrics(run_id, metrics)

    try:
        final = runner_module(kind).run(trial.config, _Tracked())
    except BaseException:
        if tracker:
            tracker.end_trial(run_id, ok=False, error=traceback.format_exc())
        raise
    if tracker:
        tracker.end_trial(run_id, ok=True)
    return {"final": final, "history": reporter.history, "run_id": run_id}
