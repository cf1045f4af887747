"""The sweep driver: schedule the trials on Ray Tune, track them into MLflow, report the outcome.

    metaocl sweep quickstart              # local Ray on loopback, ./mlflow.db
    metaocl sweep batch_size --address head:6379 --tracking-uri http://mlflow:5000 --storage /nfs/runs
    metaocl sweep batch_size --resume     # after the driver was killed or interrupted

The planner (:func:`metaocl.config.load_sweep`) has already validated every trial config; the
pre-flight checks (:mod:`metaocl.sweep.preflight`) then check what only a running cluster can tell
(resources, shared storage, inputs of every trial) *before* anything is written. Each trial runs in a
Ray worker (:mod:`metaocl.sweep.worker`); :class:`MlflowDriverCallback`, in this process, writes what
it reports to MLflow (a parent run for the invocation, a child run per trial), feeds the progress
display and keeps the histories for the end-of-sweep summary (:func:`_after_sweep`).

Faults, and why each is handled where it is (docs/architecture.md, "Resume, retries, checkpoints"):

- A trial that raises (or whose worker dies) is retried by Ray up to ``max_failures`` times, from its
  last checkpoint. The driver logs each epoch of a trial once, so a replayed epoch is not logged
  twice; a trial that still fails ends FAILED with its error. A ``ConfigError`` (a user mistake) is
  never retried: the worker reports it and returns, and the trial ends FAILED with that line.
- The ledger (:mod:`metaocl.sweep.ledger`) keeps ``finished/<trial>`` markers, so after ``kill -9``
  of the driver a finished trial is never trained again.
- ``--resume`` restores the Ray experiment (``Tuner.restore``) and reattaches the MLflow runs of the
  same parent run by their tags, so runs are never duplicated.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ray import tune

from metaocl import mlflow_layout as layout
from metaocl.config import ConfigError, Sweep, Trial, kind as kind_of
from metaocl.experiments.base import ExperimentKind
from metaocl.fetch import OFFLINE_ENV, fetch_for, use_trial_env
from metaocl.runtime import simulating_gpus
from metaocl.sweep import preflight, stage1
from metaocl.sweep.ledger import (Ledger, default_storage, experiment_prefix, find_resumable, fingerprint, is_uri, join,
                                  same_trials, trial_configs)
from metaocl.sweep.ledger import resume_command as make_resume_command
from metaocl.sweep.progress import SweepProgress
from metaocl.sweep.prune import CheckpointPruner
from metaocl.sweep.worker import CHECKPOINT_KEY, CONFIG_ERROR_KEY, TRACEBACK_KEY, TrialResources, trainable
from metaocl.tables import text_table
from metaocl.tracking import SweepTracker, metric_items


@dataclass
class SweepOutcome:
    """What happened to every trial of one invocation (plus what earlier invocations finished)."""

    grid_values: dict[str, dict] = field(default_factory=dict)  # trial id -> its grid values
    histories: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)
    replayed: dict[str, int] = field(default_factory=dict)  # evaluations reported again by a retried attempt
    finished: set[str] = field(default_factory=set)
    interrupted: bool = False
    resume_command: str = ""
    parent_run_id: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted

    def unfinished(self) -> list[str]:
        return [t for t in self.grid_values if t not in self.finished and t not in self.failed]

    def table(self) -> str:
        """Per trial: status, retries, epochs reported, error; then the totals line."""
        rows = []
        for tid in self.grid_values:
            status = "FAILED" if tid in self.failed else "done" if tid in self.finished else "unfinished"
            epochs = max((int(r.get("epoch", 0)) for r in self.histories.get(tid, [])), default=0)
            rows.append([tid, status, self.retried.get(tid, 0), epochs, self.failed.get(tid, "")])
        lines = [text_table(["trial", "status", "retries", "epochs", "error"], rows)]
        lines.append(f"trials: {sum(1 for t in self.finished if t in self.grid_values)} done, "
                     f"{sum(1 for t in self.failed if t in self.grid_values)} failed, "
                     f"{sum(1 for n in self.retried.values() if n)} retried"
                     + (f", {len(self.unfinished())} unfinished" if self.unfinished() else ""))
        return "\n".join(lines)


@dataclass
class _Driver:
    """What the callbacks of the running ``run_sweep`` write to (handed over by :func:`_driving`)."""

    tracker: SweepTracker
    sweep: Sweep
    kind: ExperimentKind
    trials: dict[str, Trial]
    outcome: SweepOutcome
    ledger: Ledger
    progress: SweepProgress
    finished_before: set[str] = field(default_factory=set)
    last_step: dict[str, int] = field(default_factory=dict)
    pruner: CheckpointPruner | None = None
    units: dict = field(default_factory=dict)  # stage-1 units (metaocl.sweep.stage1): id -> Unit
    unit_of: dict[str, str] = field(default_factory=dict)  # trial id -> its unit's id
    verdicts_at: float = -1e9  # when the interim verdicts were last written (time.monotonic)
    verdicts_warned: bool = False


# The hand-off to the callbacks. Ray pickles callbacks into its experiment state and restores them on
# --resume, so a callback cannot hold the tracker; it reads the driver of the sweep that is running
# in this process, set for exactly the duration of ``Tuner.fit`` by ``with _driving(driver):``.
_ACTIVE: list[_Driver] = []


@contextlib.contextmanager
def _driving(driver: _Driver) -> Iterator[_Driver]:
    _ACTIVE.append(driver)
    try:
        yield driver
    finally:
        _ACTIVE.remove(driver)


def _history_put(history: list[dict[str, float]], row: dict[str, float]) -> None:
    """Add ``row`` to a trial's history, replacing a row of the same epoch (a replayed epoch)."""
    for i, old in enumerate(history):
        if old.get("epoch") == row.get("epoch"):
            history[i] = row
            return
    history.append(row)


class MlflowDriverCallback(tune.Callback):
    """Runs in the driver: the only MLflow writer of the sweep (see :func:`_driving`); also has old
    trial checkpoints deleted once no resume can need them (:mod:`metaocl.sweep.prune`)."""

    @staticmethod
    def _driver() -> _Driver | None:
        return _ACTIVE[-1] if _ACTIVE else None

    @staticmethod
    def _tid(trial) -> str:
        return trial.config["trial"]["trial_id"]

    @staticmethod
    def _run(d: _Driver, tid: str) -> str:
        """The MLflow run of trial ``tid``, created on first use (never twice: see reattach)."""
        if tid not in d.tracker.trial_runs:
            unit_run = d.tracker.trial_runs.get(d.unit_of.get(tid, ""))
            if tid in d.units:
                d.tracker.start_trial(d.units[tid].trial, d.sweep.name, d.sweep.kind, role=layout.STAGE1_ROLE)
            else:
                d.tracker.start_trial(d.trials[tid], d.sweep.name, d.sweep.kind,
                                      extra_tags={layout.STAGE1_RUN_TAG: unit_run} if unit_run else None)
            d.tracker.trial_status[tid] = "RUNNING"
            d.last_step[tid] = 0
        return d.tracker.trial_runs[tid]

    def on_step_end(self, iteration, trials, **info):
        d = self._driver()
        if d is not None and d.pruner is not None:
            d.pruner.maybe_prune()

    def on_trial_start(self, iteration, trials, trial, **info):
        d, tid = self._driver(), self._tid(trial)
        if d is None or tid in d.finished_before:
            return
        tracker = d.tracker
        if tid not in tracker.trial_runs:
            self._run(d, tid)
        elif tracker.trial_status.get(tid, "RUNNING") != "RUNNING":
            if tracker.trial_status[tid] == "FAILED":  # failed before, tried again by --resume
                tracker.client.delete_tag(tracker.trial_runs[tid], layout.ERROR_TAG)
            tracker.set_status(tracker.trial_runs[tid], "RUNNING")  # reattached after --resume
            tracker.trial_status[tid] = "RUNNING"
        d.outcome.failed.pop(tid, None)
        d.progress.trial_started(tid)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        d, tid = self._driver(), self._tid(trial)
        if d is None or CHECKPOINT_KEY in result or tid in d.finished_before:
            return
        if CONFIG_ERROR_KEY in result:  # a user mistake found inside the trial: failed, never retried
            line = str(result[CONFIG_ERROR_KEY])
            d.outcome.failed[tid] = line
            d.tracker.end_trial(self._run(d, tid), ok=False, error=str(result.get(TRACEBACK_KEY) or line))
            d.tracker.trial_status[tid] = "FAILED"
            d.progress.trial_ended(tid, ok=False, error=line)
            return
        row = metric_items(result)
        step = int(row.get("epoch", 0))
        if step > d.last_step.get(tid, 0):  # an epoch replayed by a retry is logged once
            d.tracker.log_metrics(self._run(d, tid), result)
            d.last_step[tid] = step
        elif tid in d.tracker.trial_runs:  # counted: the work a retry redid (tag metaocl.replayed)
            d.outcome.replayed[tid] = d.outcome.replayed.get(tid, 0) + 1
            d.tracker.client.set_tag(d.tracker.trial_runs[tid], layout.REPLAYED_TAG, str(d.outcome.replayed[tid]))
        history = d.outcome.histories.setdefault(tid, [])
        _history_put(history, row)
        d.progress.report(tid, len(history), row)

    def on_trial_recover(self, iteration, trials, trial, **info):
        d, tid = self._driver(), self._tid(trial)
        if d is None:
            return
        d.outcome.retried[tid] = d.outcome.retried.get(tid, 0) + 1
        run_id = self._run(d, tid)
        d.tracker.client.set_tag(run_id, layout.RETRIES_TAG, str(d.outcome.retried[tid]))
        error = _trial_error_text(trial)
        d.tracker.client.log_text(run_id, error, f"errors/attempt-{d.outcome.retried[tid]}.txt")
        d.progress.trial_retried(tid, d.outcome.retried[tid], _last_line(error))  # one line; Tune's traceback is off

    def on_trial_complete(self, iteration, trials, trial, **info):
        d, tid = self._driver(), self._tid(trial)
        if d is None or not _completed(trial):  # Ray also "completes" trials it stops on Ctrl-C
            return
        if CONFIG_ERROR_KEY in (trial.last_result or {}):  # ended FAILED in on_trial_result
            return
        if tid not in d.finished_before:
            d.ledger.mark_finished(tid)  # first: a killed driver must never lead to a second training
            d.tracker.end_trial(self._run(d, tid), ok=True)
            d.tracker.trial_status[tid] = "FINISHED"
        d.outcome.finished.add(tid)
        d.progress.trial_ended(tid, ok=True)
        _interim_verdicts(d)

    def on_trial_error(self, iteration, trials, trial, **info):
        d, tid = self._driver(), self._tid(trial)
        if d is None:
            return
        error = _trial_error_text(trial)
        d.outcome.failed[tid] = _last_line(error)
        d.tracker.end_trial(self._run(d, tid), ok=False, error=error)
        d.tracker.trial_status[tid] = "FAILED"
        d.progress.trial_ended(tid, ok=False, error=d.outcome.failed[tid])


INTERIM_VERDICTS_S = 30.0  # at most this often: each reads every finished trial back from MLflow


def _interim_verdicts(d: _Driver) -> None:
    """The verdicts over the trials finished so far onto the parent run (the UI's runs table shows
    them while the sweep runs); the end of the sweep overwrites them with the final ones."""
    from metaocl.report.publish import log_interim_verdicts

    now = time.monotonic()
    if now - d.verdicts_at < INTERIM_VERDICTS_S or d.tracker.parent_id is None:
        return
    d.verdicts_at = now
    try:
        log_interim_verdicts(d.tracker.uri, d.tracker.parent_id, len(d.outcome.finished), len(d.trials))
    except Exception as e:  # the UI's interim view only: the sweep goes on
        if not d.verdicts_warned:
            d.verdicts_warned = True
            print(f"metaocl: warning: could not log the verdicts so far to MLflow ({type(e).__name__}: {e})",
                  file=sys.stderr)


def _completed(trial) -> bool:
    """Whether the trial's function returned (Ray marks its last result ``done``), not merely stopped."""
    return bool((getattr(trial, "last_result", None) or {}).get("done"))


def _last_line(error: str) -> str:
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "failed"


def _strip_colours(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _trial_error_text(trial) -> str:
    """The error (traceback) of the trial's last failed attempt, without terminal colour codes."""
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        text = Path(path).read_text()
    else:
        text = str(getattr(trial, "error_msg", "") or "trial failed")
    return _strip_colours(text)


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------
def run_sweep(sweep: Sweep, tracking: str, address: str | None = None, storage: str | Path | None = None,
              progress: bool = True, resume: bool = False, tracking_explicit: bool = False,
              max_failures: int | None = None, show_plan: bool = False, gpu_type: str | None = None,
              fetch: bool = True) -> SweepOutcome:
    """Run every trial of ``sweep`` on Ray Tune and track it into MLflow at ``tracking``.

    Every user mistake (unreachable cluster, resources no node has, node-local storage on a cluster,
    missing inputs, a config error every trial would hit, nothing to resume) raises ``ConfigError``
    before MLflow or the storage is written; so does a GPU node whose GPUs CUDA cannot use (the GPU
    probe). What the trials read from outside and is missing (data, hub models) is fetched first, once
    (:mod:`metaocl.fetch`; ``fetch=False``: only what is here); the trials then run with the hub
    offline. ``show_plan``: print the plan (:mod:`metaocl.sweep.plan`) on the cluster found, first.
    ``gpu_type``: the GPUs' type when the probe cannot tell (logical GPUs). When the sweep has
    ended, :func:`_after_sweep` prints the summary.
    """
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # A failed attempt is one progress line (trial, attempt, cause), not Tune's whole traceback between
    # the progress lines: the traceback goes to the trial's MLflow run (errors/attempt-N.txt).
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    # Against an MLflow server, MLflow prints two "View run ... at: <url>" lines for every run it ends:
    # 200 lines between the progress lines of a 100-trial sweep. The summary says where to look.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    kind = kind_of(sweep.kind)
    storage = str(storage) if storage else default_storage()
    if not is_uri(storage):
        storage = str(Path(storage).resolve())
    trials = {t.trial_id: t for t in sweep.trials()}
    print_fingerprint = fingerprint(trials)
    exp_dir = state = None
    if resume:
        exp_dir, state = find_resumable(sweep, storage)
        same, added = same_trials(trials, state)
        if not same:
            raise ConfigError(f"--resume: the trials of {sweep.name} differ from those the sweep started with "
                              f"({exp_dir}); resume with the same sweep file, --smoke, --seeds and --set")
        if added:
            print(f"--resume: {len(added)} configuration field(s) added to metaocl since this sweep started, each at "
                  f"its default (what the code did before it): {', '.join(added)}")
        if tracking != state["tracking_uri"]:
            if tracking_explicit:
                raise ConfigError(f"--resume: this sweep tracks into {state['tracking_uri']}, not {tracking}; "
                                  f"resume with --tracking-uri {state['tracking_uri']}")
            tracking = state["tracking_uri"]
    outcome = SweepOutcome(
        grid_values={tid: t.grid_values for tid, t in trials.items()},
        resume_command=make_resume_command(sweep, storage if storage != default_storage() else None, address,
                                           tracking if tracking_explicit else None))
    tracker = shown = pruner = None
    started = False
    local = not (address or os.environ.get("RAY_ADDRESS"))
    env = fetch_for([sweep], no_fetch=not fetch) if local else dict(OFFLINE_ENV)  # local: before Ray starts
    restore_env = use_trial_env(env)  # the trials run with the hub offline: nothing downloads in a trial
    try:
        if local:
            preflight.check_inputs(sweep, trials, local=True)  # before Ray starts: a missing file costs nothing
        where = preflight.init_ray(address, env_vars=None if local else env)
        _one_line_node_deaths()
        _retry_failed_actor_resets()
        cluster = preflight.probe_gpus(sweep, where, gpu_type)  # a GPU that CUDA cannot use: exit 2 here
        the_plan = _plan(sweep, cluster, show_plan)
        resources = preflight.check_resources(sweep, where, the_plan)
        gpus = preflight.trial_gpus(sweep, trials, resources, the_plan)  # gpu: auto: each trial its own share
        preflight.check_devices(sweep, trials, resources)
        preflight.check_shared_storage(storage, where)
        if not local:
            fetch_for([sweep], address_is_cluster=True, no_fetch=not fetch)  # once, into the cache nodes share
            preflight.check_inputs(sweep, trials, local=False)  # asked of every node, where trials read them

        # From here on things are written: the MLflow parent run, the experiment folder.
        if resume:
            layout.check_reachable(tracking)
            tracker = SweepTracker.reattach(tracking, state["parent_run_id"])
        else:
            from metaocl.report.publish import starting_note

            tracker = SweepTracker.for_sweep(sweep, tracking, note=starting_note(sweep))
            exp_dir = join(storage, experiment_prefix(sweep) + tracker.parent_id[:8])
        outcome.parent_run_id = tracker.parent_id
        for key, value in ((layout.INVOCATION_TAG, "sweep"), (layout.FINGERPRINT_TAG, print_fingerprint),
                           (layout.RAY_EXPERIMENT_TAG, exp_dir)) + sweep.sequential_tags():
            tracker.client.set_tag(tracker.parent_id, key, value)
        ledger = Ledger(exp_dir)
        if not resume:
            ledger.write_state({"parent_run_id": tracker.parent_id, "tracking_uri": tracking, "sweep": sweep.name,
                                "experiment": sweep.experiment_name, "smoke": sweep.smoke,
                                "fingerprint": print_fingerprint, "configs": trial_configs(trials),
                                "created": time.time()})
        finished_before = ledger.finished() & set(trials)
        last_step: dict[str, int] = {}
        for tid in tracker.trial_status:  # reattached runs: what they already hold
            outcome.histories[tid] = tracker.load_history(tracker.trial_runs[tid])
            last_step[tid] = max((int(r.get("epoch", 0)) for r in outcome.histories[tid]), default=0)
            retries = int(tracker.trial_tags.get(tid, {}).get(layout.RETRIES_TAG, "0"))
            if retries:
                outcome.retried[tid] = retries
            replayed = int(tracker.trial_tags.get(tid, {}).get(layout.REPLAYED_TAG, "0"))
            if replayed:
                outcome.replayed[tid] = replayed
        for tid in finished_before:
            outcome.finished.add(tid)
            if tracker.trial_status.get(tid) != "FINISHED" and tid in tracker.trial_runs:
                tracker.end_trial(tracker.trial_runs[tid], ok=True)  # the old driver died in between
        units, unit_of = stage1.plan(trials, kind) if os.environ.get("METAOCL_STAGE1_UNITS", "1") != "0" else ({}, {})
        expected = (stage1.expected_reports(trials, units, unit_of, kind) if units
                    else {tid: kind.n_reports(t.config) for tid, t in trials.items()})
        shown = SweepProgress(sweep.name, kind, expected,
                              done={tid: len(h) for tid, h in outcome.histories.items()},
                              finished=set(finished_before), enabled=progress,
                              units={u.unit_id: u.members for u in units.values()})
        pruner = CheckpointPruner(exp_dir)
        driver = _Driver(tracker, sweep, kind, trials, outcome, ledger, shown, finished_before, last_step, pruner,
                         units=units, unit_of=unit_of)

        trainable_ = tune.with_resources(trainable, TrialResources(resources))  # a spec's cpus and gpus
        if resume:
            tuner = tune.Tuner.restore(exp_dir, trainable_, resume_unfinished=True, resume_errored=True)
        else:
            simulate = simulating_gpus()
            # METAOCL_REUSE_ACTORS=1: a worker process that finished a trial runs the next one (same
            # resources), so many short trials pay Python, torch and the actor's start-up once per
            # process, not once per trial (bench/chaos.py). Off by default: long trials gain nothing.
            reuse = os.environ.get("METAOCL_REUSE_ACTORS", "0") == "1"
            space = {tid: {"trial_id": tid, "kind": sweep.kind, "cpus": resources["cpu"], "gpus": gpus[tid],
                           "exp_dir": exp_dir, "simulate_gpus": simulate, "config": t.config_dict()}
                     for tid, t in trials.items()}
            if units:  # stage-1 units first; a unit's trials once it completed (metaocl.sweep.stage1)
                stores = {u.unit_id: stage1.store(exp_dir, u.key) for u in units.values()}
                unit_specs = [{"trial_id": u.unit_id, "kind": sweep.kind, "cpus": resources["cpu"],
                               "gpus": max(gpus[m] for m in u.members), "exp_dir": exp_dir,
                               "simulate_gpus": simulate, "config": u.trial.config_dict(), "role": stage1.UNIT_ROLE,
                               "store": stores[u.unit_id]}
                              for u in units.values()]
                waiting = {u.unit_id: [dict(space[tid], role=stage1.BRANCH_ROLE, store=stores[u.unit_id])
                                       for tid in u.members] for u in units.values()}
                searcher = stage1.Stage1FirstSearcher(unit_specs, [space[t] for t in trials if t not in unit_of],
                                                      waiting, stores)
                param_space, tune_config = {}, tune.TuneConfig(search_alg=searcher, num_samples=len(units) + len(trials),
                                                               reuse_actors=reuse)
            else:
                param_space = {"trial": tune.grid_search(list(space.values()))}
                tune_config = tune.TuneConfig(num_samples=1, reuse_actors=reuse)
            tuner = tune.Tuner(
                trainable_,
                param_space=param_space,
                tune_config=tune_config,
                run_config=tune.RunConfig(
                    name=exp_dir.rstrip("/").rsplit("/", 1)[1],
                    storage_path=storage,
                    callbacks=[MlflowDriverCallback()],
                    failure_config=tune.FailureConfig(
                        max_failures=sweep.max_failures if max_failures is None else max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # Ray gets none: metaocl/checkpoints/
                    verbose=0,
                ),
            )
        started = True
        with _driving(driver):
            results = tuner.fit()
        _reconcile(driver, results)
    except KeyboardInterrupt:
        outcome.interrupted = True
        if not started:  # nothing ran yet: nothing to resume either
            raise
    finally:
        if shown is not None:
            shown.close()
        if pruner is not None and started:  # Ray has saved its final state: each trial keeps its last
            pruner.prune()
        if tracker is not None:
            if outcome.unfinished() and started:
                outcome.interrupted = True
            if outcome.interrupted:
                for tid in outcome.unfinished():
                    if tid in tracker.trial_runs and tracker.trial_status.get(tid) != "KILLED":
                        tracker.set_status(tracker.trial_runs[tid], "KILLED")
                tracker.end(False, status="KILLED")
            else:
                tracker.end(outcome.ok)
        if ray.is_initialized():
            ray.shutdown()
        restore_env()
    if tracker is not None:
        _after_sweep(tracking, tracker.parent_id, outcome)
    return outcome


def _plan(sweep: Sweep, cluster, show: bool):
    """The sweep's plan on ``cluster`` (printed when ``show``), when packing, refusal or the user need
    it; None otherwise (a CPU sweep does not pay for the estimates)."""
    if not (show or cluster.gpus):
        return None
    from metaocl.sweep import plan as planning

    try:
        the_plan = planning.plan_for([sweep], cluster)
    except ConfigError:
        raise
    except Exception as e:  # an estimate is advice: the sweep runs (a whole GPU per trial) without it
        print(f"metaocl: warning: no plan ({type(e).__name__}: {e}); each trial gets a whole GPU", file=sys.stderr)
        return None
    if show:
        print(planning.render(the_plan), flush=True)
    return the_plan


def _retry_failed_actor_resets() -> None:
    """With ``reuse_actors`` (``METAOCL_REUSE_ACTORS=1``), Ray Tune hands a waiting trial the actor of
    a finished one and resets it. When that actor's node has died in between, the reset fails while
    the trial is still PENDING (and so can a late second report of the same dead actor), and Tune
    (``TuneController._process_trial_failure``, Ray 2.x) ends a PENDING trial ERROR at once, whatever
    ``max_failures`` allows: one node kill could fail a trial for good. Here a PENDING trial's actor
    failure is one failed attempt like any other (retried from the last checkpoint while
    ``max_failures`` allows), handled as Tune itself handles a pending trial whose actor failed to
    start (``_actor_failed``: the trial counts as running when the failure is processed)."""
    from ray.exceptions import RayActorError
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

    original = TuneController._process_trial_failure
    if getattr(original, "metaocl_patched", False):
        return

    def process_trial_failure(self, trial, exception):
        if trial.status == Trial.PENDING and isinstance(exception, RayActorError):
            self._resetting_trials.discard(trial)
            self._set_trial_status(trial, Trial.RUNNING)
        return original(self, trial, exception)

    process_trial_failure.metaocl_patched = True
    TuneController._process_trial_failure = process_trial_failure


def _one_line_node_deaths() -> None:
    """When a node of the cluster dies (preempted, killed), Ray's driver prints its raylet's last 20 log
    lines between the progress lines; one line says it (the log stays in the node's raylet.out). Ray
    prints these through ``ray._private.worker.print_to_stdstream`` (its error listener thread); any
    other message passes through unchanged, and a Ray without that function is left alone."""
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "metaocl_one_line", False):
        return

    def print_to_stdstream(data, *args, **kwargs):
        lines = (data.get("lines") or []) if isinstance(data, dict) else []
        text = "\n".join(str(line) for line in lines).strip()
        if data.get("pid") == "raylet" and "\n" in text:  # a node's death (killed, or its heartbeats missed)
            first = text.splitlines()[0].split(" Last ", 1)[0].strip()
            print(f"(raylet) {first if len(first) <= 300 else first[:297] + '...'} (more: the node's raylet.out)",
                  file=sys.stderr, flush=True)
            return
        original(data, *args, **kwargs)

    print_to_stdstream.metaocl_one_line = True
    ray_worker.print_to_stdstream = print_to_stdstream


def _after_sweep(tracking_uri: str, parent_run_id: str, outcome: SweepOutcome) -> None:
    """Runs once per invocation, after the sweep ended and MLflow holds its final state: the summary,
    read back from MLflow by the report's own code (the same numbers as ``metaocl report``)."""
    from metaocl.report.summary import summarize_invocation

    text = summarize_invocation(tracking_uri, parent_run_id)
    if text:
        print()
        print(text)
    from metaocl.report.publish import log_interim_verdicts, log_sweep_aggregates

    try:
        if not outcome.interrupted:  # the sweep's result onto its parent run, for the MLflow UI
            log_sweep_aggregates(tracking_uri, parent_run_id)
        else:  # what the finished trials say, counted, until --resume ends the sweep
            log_interim_verdicts(tracking_uri, parent_run_id, len(outcome.finished), len(outcome.grid_values))
    except Exception as e:  # the summary is printed and the trials are in MLflow: say it, go on
        what = "the verdicts so far" if outcome.interrupted else "the sweep's aggregates"
        print(f"metaocl: warning: could not log {what} to MLflow ({type(e).__name__}: {e})",
              file=sys.stderr)


def _reconcile(driver: _Driver, results: tune.ResultGrid) -> None:
    """Make MLflow and the outcome agree with Ray's final word on every trial (public ResultGrid API)."""
    outcome, tracker = driver.outcome, driver.tracker
    for result in results:
        tid = ((result.config or {}).get("trial") or {}).get("trial_id")
        if tid is None:
            continue
        metrics = result.metrics or {}
        if result.error is not None:
            if tid not in outcome.failed:  # failed under an earlier driver
                outcome.failed[tid] = _last_line(_strip_colours(str(result.error)))
        elif CONFIG_ERROR_KEY in metrics:
            outcome.failed.setdefault(tid, str(metrics[CONFIG_ERROR_KEY]))
        elif metrics.get("done") and tid not in outcome.finished:
            driver.ledger.mark_finished(tid)  # finished under an earlier driver that died before its ledger
            if tid in tracker.trial_runs and tracker.trial_status.get(tid) != "FINISHED":
                tracker.end_trial(tracker.trial_runs[tid], ok=True)
            outcome.finished.add(tid)
