"""Run a sweep on Ray Tune: one trial per (grid point, seed), tracked in MLflow by the driver.

    metaocl sweep quickstart              # local Ray on loopback, ./mlflow.db
    metaocl sweep batch_size --address head:6379 --tracking-uri http://mlflow:5000 --storage /nfs/runs
    metaocl sweep batch_size --resume     # after the driver was killed or interrupted

The planner (:func:`metaocl.config.load_sweep`) has already validated every trial config; this
module checks what only a running cluster can tell (resources, shared storage, data files) *before*
anything is written, then schedules the trials. Each trial runs ``experiments/<kind>.run(config,
reporter)`` in a Ray worker; its reporter forwards metrics (and optional epoch checkpoints) with
``tune.report``; a driver-side callback writes them to MLflow (parent run for the sweep, child run per
trial) and keeps them for the end summary.

Faults, and why each is handled where it is (docs/architecture.md, "Resume, retries, checkpoints"):

- A trial that raises (or whose worker dies) is retried by Ray up to ``max_failures`` times, from its
  last checkpoint when the runner saves them. The driver logs each epoch of a trial once, so a
  replayed epoch is not logged twice; a trial that still fails ends FAILED with its error.
- The sweep's Ray experiment folder ``STORAGE/<experiment>-<parent run>/`` holds, besides Ray's own
  state, ``metaocl/sweep.json`` (MLflow parent run, tracking URI, trial fingerprint) and a ledger:
  ``metaocl/finished/<trial>`` (written by the driver before it marks the MLflow run FINISHED) and
  ``metaocl/attempts/<trial>-*.json`` (written by each attempt: node, pid, checkpoint). Ray saves its
  experiment state only every few seconds, so after ``kill -9`` of the driver it may think a
  finished trial unfinished; the ledger makes such a trial return at once instead of training again.
- ``--resume`` restores the Ray experiment (``Tuner.restore``) and reattaches the MLflow runs of the
  same parent run by their tags, so runs are never duplicated.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ray import tune

from metaocl.config import ConfigError, Sweep, Trial, config_class, from_dict, kind as kind_of
from metaocl.summary import summarize
from metaocl.tracking import SweepTracker, metric_items

LOCAL_NODE_IP = "127.0.0.2" if platform.system() == "Linux" else "127.0.0.1"
CHECKPOINT_KEY = "metaocl_checkpoint"  # marks a report that only carries a checkpoint (not logged)
STATE_DIR = "metaocl"  # our files inside the Ray experiment folder
RAY_WAIT_S = 120  # bound on every wait for the cluster (probe tasks)


def default_storage() -> str:
    """Where Ray keeps trial state: ``$METAOCL_RESULTS`` or ``./metaocl-results``."""
    return str(Path(os.environ.get("METAOCL_RESULTS", Path.cwd() / "metaocl-results")).resolve())


def _is_uri(path: str) -> bool:
    return "://" in path


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


# --------------------------------------------------------------------------------------------
# The ledger: small files in the experiment folder that trials and the driver both can read
# --------------------------------------------------------------------------------------------
class Ledger:
    """Finished-trial markers and per-attempt records under ``EXPERIMENT/metaocl/`` (local path or URI)."""

    def __init__(self, exp_dir: str):
        from pyarrow import fs as pafs

        self.exp_dir = exp_dir
        self.fs, self.root = pafs.FileSystem.from_uri(exp_dir if _is_uri(exp_dir) else str(Path(exp_dir).resolve()))
        self.root = _join(self.root, STATE_DIR)

    def _write(self, rel: str, text: str) -> None:
        path = _join(self.root, rel)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as f:
            f.write(text.encode())

    def _read(self, rel: str) -> str | None:
        from pyarrow import fs as pafs

        path = _join(self.root, rel)
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            return f.read().decode()

    def _list(self, rel: str) -> list[str]:
        from pyarrow import fs as pafs

        sel = pafs.FileSelector(_join(self.root, rel), allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(sel) if info.type == pafs.FileType.File)

    def write_state(self, state: dict) -> None:
        self._write("sweep.json", json.dumps(state, indent=1, sort_keys=True))

    def read_state(self) -> dict | None:
        text = self._read("sweep.json")
        return json.loads(text) if text else None

    def mark_finished(self, trial_id: str) -> None:
        self._write(f"finished/{trial_id}", str(time.time()))

    def finished(self) -> set[str]:
        return set(self._list("finished"))

    def is_finished(self, trial_id: str) -> bool:
        return self._read(f"finished/{trial_id}") is not None

    def log_attempt(self, trial_id: str, record: dict) -> None:
        self._write(f"attempts/{trial_id}-{time.time_ns()}-{os.getpid()}.json", json.dumps(record, sort_keys=True))


# --------------------------------------------------------------------------------------------
# Inside a trial
# --------------------------------------------------------------------------------------------
class _TuneReporter:
    """Inside a Ray worker: hand each evaluation (and each checkpoint) to Ray Tune.

    ``save_checkpoint(state)`` stores ``state`` (any ``torch.save``-able dict: model and optimizer
    state dicts, epoch, RNG states) as a Tune checkpoint; ``restore_checkpoint()`` returns the
    latest one of this trial after a retry or a ``--resume``, else None.
    """

    interactive = False

    def __call__(self, metrics: Mapping[str, float]) -> None:
        tune.report(dict(metrics))

    def save_checkpoint(self, state: dict) -> None:
        import tempfile

        import torch

        with tempfile.TemporaryDirectory(prefix="metaocl-ckpt-") as d:
            torch.save(state, Path(d) / "state.pt")
            tune.report({CHECKPOINT_KEY: 1.0}, checkpoint=tune.Checkpoint.from_directory(d))

    def restore_checkpoint(self) -> dict | None:
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        import torch

        with checkpoint.as_directory() as d:
            return torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)


def _trainable(param: dict) -> None:
    """The Ray Tune function trainable: rebuild the trial's config and run its experiment."""
    import ray

    spec = param["trial"]
    tid = spec["trial_id"]
    ledger = Ledger(spec["exp_dir"])
    if ledger.is_finished(tid):  # finished under an earlier driver whose Ray state was not saved in time
        return
    ledger.log_attempt(tid, {"trial_id": tid, "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
                             "time": time.time(), "from_checkpoint": tune.get_checkpoint() is not None})
    os.environ["METAOCL_TRIAL_CPUS"] = str(spec["cpus"])
    config = from_dict(config_class(spec["kind"]), spec["config"], f"trial {tid}")
    kind_of(spec["kind"]).run(config, _TuneReporter())


# --------------------------------------------------------------------------------------------
# The driver side
# --------------------------------------------------------------------------------------------
@dataclass
class SweepOutcome:
    histories: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    params: dict[str, dict] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    interrupted: bool = False
    resume_command: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted

    def unfinished(self) -> list[str]:
        return [t for t in self.params if t not in self.finished and t not in self.failed]

    def summary(self) -> str:
        return summarize({t: h for t, h in self.histories.items() if t not in self.failed}, self.params)

    def table(self) -> str:
        """Per trial: status, retries, epochs reported, error; then the totals line."""
        rows = [["trial", "status", "retries", "epochs", "error"]]
        for tid in self.params:
            status = "FAILED" if tid in self.failed else "done" if tid in self.finished else "unfinished"
            epochs = max((int(r.get("epoch", 0)) for r in self.histories.get(tid, [])), default=0)
            rows.append([tid, status, str(self.retried.get(tid, 0)), str(epochs), self.failed.get(tid, "")])
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + ("  " + r[4] if r[4] else "") for r in rows]
        lines.append(f"trials: {len(self.finished)} done, {len(self.failed)} failed, "
                     f"{sum(1 for n in self.retried.values() if n)} retried"
                     + (f", {len(self.unfinished())} unfinished" if self.unfinished() else ""))
        return "\n".join(line.rstrip() for line in lines)


@dataclass
class _Driver:
    """What the callbacks of the current ``run_sweep`` write to (kept out of Ray's pickled state)."""

    tracker: SweepTracker
    sweep: Sweep
    trials: dict[str, Trial]
    outcome: SweepOutcome
    ledger: Ledger
    bar: Any = None
    finished_before: set[str] = field(default_factory=set)
    last_step: dict[str, int] = field(default_factory=dict)


_DRIVER: _Driver | None = None


def _history_put(history: list[dict[str, float]], row: dict[str, float]) -> None:
    """Add ``row`` to a trial's history, replacing a row of the same epoch (a replayed epoch)."""
    for i, old in enumerate(history):
        if old.get("epoch") == row.get("epoch"):
            history[i] = row
            return
    history.append(row)


class MlflowDriverCallback(tune.Callback):
    """Runs in the driver: the only MLflow writer of the sweep.

    Ray pickles callbacks with the experiment state and restores them on ``--resume``; this one
    holds nothing and writes to the module's current :class:`_Driver`, so a restored copy works.
    """

    @staticmethod
    def _tid(trial) -> str:
        return trial.config["trial"]["trial_id"]

    @staticmethod
    def _run(d: _Driver, tid: str) -> str:
        """The MLflow run of trial ``tid``, created on first use (never twice: see reattach)."""
        if tid not in d.tracker.trial_runs:
            d.tracker.start_trial(d.trials[tid], d.sweep.name, d.sweep.kind)
            d.tracker.trial_status[tid] = "RUNNING"
            d.last_step[tid] = 0
        return d.tracker.trial_runs[tid]

    def on_trial_start(self, iteration, trials, trial, **info):
        d, tid = _DRIVER, self._tid(trial)
        if d is None or tid in d.finished_before:
            return
        tracker = d.tracker
        if tid not in tracker.trial_runs:
            self._run(d, tid)
        elif tracker.trial_status.get(tid, "RUNNING") != "RUNNING":
            if tracker.trial_status[tid] == "FAILED":  # failed before, tried again by --resume
                tracker.client.delete_tag(tracker.trial_runs[tid], "metaocl.error")
            tracker.set_status(tracker.trial_runs[tid], "RUNNING")  # reattached after --resume
            tracker.trial_status[tid] = "RUNNING"
        d.outcome.failed.pop(tid, None)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        d, tid = _DRIVER, self._tid(trial)
        if d is None or CHECKPOINT_KEY in result or tid in d.finished_before:
            return
        row = metric_items(result)
        step = int(row.get("epoch", 0))
        if step > d.last_step.get(tid, 0):  # an epoch replayed by a retry is logged once
            d.tracker.log_metrics(self._run(d, tid), result)
            d.last_step[tid] = step
        _history_put(d.outcome.histories.setdefault(tid, []), row)
        if d.bar is not None:
            d.bar.update(1)

    def on_trial_recover(self, iteration, trials, trial, **info):
        d, tid = _DRIVER, self._tid(trial)
        if d is None:
            return
        d.outcome.retried[tid] = d.outcome.retried.get(tid, 0) + 1
        run_id = self._run(d, tid)
        d.tracker.client.set_tag(run_id, "metaocl.retries", str(d.outcome.retried[tid]))
        error = _trial_error_text(trial)
        d.tracker.client.log_text(run_id, error, f"errors/attempt-{d.outcome.retried[tid]}.txt")

    def on_trial_complete(self, iteration, trials, trial, **info):
        d, tid = _DRIVER, self._tid(trial)
        if d is None or not _completed(trial):  # Ray also "completes" trials it stops on Ctrl-C
            return
        if tid not in d.finished_before:
            d.ledger.mark_finished(tid)  # first: a killed driver must never lead to a second training
            d.tracker.end_trial(self._run(d, tid), ok=True)
            d.tracker.trial_status[tid] = "FINISHED"
        d.outcome.finished.add(tid)

    def on_trial_error(self, iteration, trials, trial, **info):
        d, tid = _DRIVER, self._tid(trial)
        if d is None:
            return
        error = _trial_error_text(trial)
        d.outcome.failed[tid] = _last_line(error)
        d.tracker.end_trial(self._run(d, tid), ok=False, error=error)
        d.tracker.trial_status[tid] = "FAILED"


def _completed(trial) -> bool:
    """Whether the trial's function returned (Ray marks its last result ``done``), not merely stopped."""
    return bool((getattr(trial, "last_result", None) or {}).get("done"))


def _last_line(error: str) -> str:
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "failed"


def _trial_error_text(trial) -> str:
    """The error (traceback) of the trial's last failed attempt, without terminal colour codes."""
    import re

    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        text = Path(path).read_text()
    else:
        text = str(getattr(trial, "error_msg", "") or "trial failed")
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def expected_reports(trial: Trial, kind: str) -> int:
    """How many evaluations a trial will report (for the progress bar)."""
    return kind_of(kind).n_reports(trial.config)


# --------------------------------------------------------------------------------------------
# Checks before anything is written
# --------------------------------------------------------------------------------------------
def _split_address(address: str) -> tuple[str, int] | None:
    """``ray://host:10001`` / ``host:6379`` / ``host`` -> (host, port); None for ``auto``/``local``."""
    rest = address.split("://", 1)[1] if "://" in address else address
    if rest in ("auto", "local", ""):
        return None
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    try:
        return host.strip("[]"), int(port) if port else (10001 if address.startswith("ray://") else 6379)
    except ValueError:
        raise ConfigError(f"Ray address {address!r}: expected HOST:PORT (or ray://HOST:PORT)") from None


def init_ray(address: str | None, num_cpus: int | None = None) -> str:
    """Connect to ``address`` (or ``$RAY_ADDRESS``), else start a local instance bound to loopback.

    Returns a few words saying which cluster this is. An address nobody answers on is a one-line
    ``ConfigError`` within seconds (a TCP probe first: Ray itself would retry for a minute).
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    common = dict(log_to_driver=False, configure_logging=True, logging_level="ERROR")
    if address:
        hostport = _split_address(address)
        extra = {}
        if hostport:
            try:
                socket.create_connection(hostport, timeout=5).close()
            except OSError as e:
                raise ConfigError(f"Ray address {address} is unreachable ({e.strerror or e})") from None
            if hostport[0].startswith("127.") and not address.startswith("ray://"):
                extra["_node_ip_address"] = hostport[0]  # a loopback cluster: this driver is on its head
        try:
            ray.init(address=address, **common, **extra)
        except Exception as e:  # Ray raises ConnectionError, RuntimeError, ... for a bad address
            raise ConfigError(f"Ray address {address} is unreachable ({str(e).strip().splitlines()[0]})") from None
        return f"the Ray cluster at {address}"
    # address="local": a new instance, even when `ray start` left a cluster running on this machine
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
             _node_ip_address=LOCAL_NODE_IP, **common)
    return "the local Ray instance"


def _alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def check_resources(sweep: Sweep, where: str) -> dict[str, float]:
    """The resources of one trial, or a one-line error when no node of the cluster can run one."""
    import ray

    total = ray.cluster_resources()
    resources = sweep.trial_resources(total.get("GPU", 0) > 0)  # gpu: auto is decided by the cluster
    if resources["gpu"] > 0 and total.get("GPU", 0) == 0:
        raise ConfigError(f"sweep {sweep.name} asks for {resources['gpu']:g} GPU per trial but {where} has no GPU "
                          f"(set resources.gpu: auto or 0 in {sweep.path}, or add GPU nodes)")
    nodes = _alive_nodes()
    if not any(n["Resources"].get("CPU", 0) >= resources["cpu"] and n["Resources"].get("GPU", 0) >= resources["gpu"]
               for n in nodes):
        biggest = max(nodes, key=lambda n: (n["Resources"].get("GPU", 0), n["Resources"].get("CPU", 0)))["Resources"]
        raise ConfigError(f"sweep {sweep.name} needs cpu={resources['cpu']:g} gpu={resources['gpu']:g} per trial but "
                          f"no node of {where} has that (largest: cpu={biggest.get('CPU', 0):g} "
                          f"gpu={biggest.get('GPU', 0):g}); lower resources in {sweep.path}")
    return resources


def _probe_file(path: str, token: str) -> bool:
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def check_shared_storage(storage: str, where: str) -> None:
    """On a multi-node cluster, a local storage path must be one every node sees (NFS, ...).

    Writes a probe file, asks a task pinned to each node to read it, removes it again.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = _alive_nodes()
    if len(nodes) < 2 or _is_uri(storage):
        return
    root = Path(storage)
    created = []
    for p in [root, *root.parents]:
        if p.exists():
            break
        created.append(p)
    token = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
    probe = root / f".metaocl-probe-{token}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_text(token)
    except OSError as e:
        raise ConfigError(f"--storage {storage}: cannot write there ({e.strerror})") from None
    try:
        task = ray.remote(num_cpus=0)(_probe_file)
        refs = {n["NodeManagerAddress"]: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(str(probe), token) for n in nodes}
        try:
            seen = dict(zip(refs, ray.get(list(refs.values()), timeout=RAY_WAIT_S)))
        except ray.exceptions.GetTimeoutError:
            raise ConfigError(f"storage check: the nodes of {where} did not answer within {RAY_WAIT_S} s") from None
    finally:
        probe.unlink(missing_ok=True)
        for p in created:
            try:
                p.rmdir()
            except OSError:
                pass
    blind = sorted(ip for ip, ok in seen.items() if not ok)
    if blind:
        raise ConfigError(f"--storage {storage} is local to this machine: node{'s' if len(blind) > 1 else ''} "
                          f"{', '.join(blind)} of {where} cannot see it; pass --storage (or METAOCL_RESULTS) on a "
                          "filesystem every node mounts (NFS) or an object store URI (s3://..., gs://...)")


def missing_inputs(kind: str, config: Any) -> list[str]:
    """What a trial of ``kind`` needs that is not there (``field: problem (how to fix it)``)."""
    return kind_of(kind).required_inputs(config)


def _missing_for_sweep(kind: str, configs: list[dict]) -> list[str]:
    cls = config_class(kind)
    found: list[str] = []
    for data in configs:
        for problem in missing_inputs(kind, from_dict(cls, data, "trial")):
            if problem not in found:
                found.append(problem)
    return found


def check_data_files(sweep: Sweep, trials: dict[str, Trial], local: bool) -> None:
    """Every data file the trials read must exist where they run (on a cluster: asked of a node)."""
    import ray

    configs = [t.config_dict() for t in trials.values()]
    if local:
        missing = _missing_for_sweep(sweep.kind, configs)
    else:
        try:
            missing = ray.get(ray.remote(num_cpus=0)(_missing_for_sweep).remote(sweep.kind, configs), timeout=RAY_WAIT_S)
        except ray.exceptions.GetTimeoutError:
            raise ConfigError(f"data check: the cluster did not answer within {RAY_WAIT_S} s") from None
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"{sweep.path}: {missing[0]}{more}")


def fingerprint(trials: dict[str, Trial]) -> str:
    """Identifies the trial set: a resume must run exactly the trials the sweep started with."""
    text = json.dumps({tid: t.config_dict() for tid, t in sorted(trials.items())}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def experiment_prefix(sweep: Sweep) -> str:
    return sweep.experiment_name.replace("/", "-") + "-"


def find_resumable(sweep: Sweep, storage: str) -> tuple[str, dict]:
    """The newest Ray experiment folder of this sweep under ``storage`` and its ``sweep.json``."""
    from pyarrow import fs as pafs

    filesystem, root = pafs.FileSystem.from_uri(storage if _is_uri(storage) else str(Path(storage).resolve()))
    infos = filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    found = []
    for info in infos:
        if info.type == pafs.FileType.Directory and info.base_name.startswith(experiment_prefix(sweep)):
            exp_dir = _join(storage, info.base_name) if _is_uri(storage) else str(Path(storage).resolve() / info.base_name)
            state = Ledger(exp_dir).read_state()
            if state and state.get("experiment") == sweep.experiment_name:
                found.append((state.get("created", 0), exp_dir, state))
    if not found:
        raise ConfigError(f"--resume: no started sweep {sweep.experiment_name} under {storage} "
                          f"(run it without --resume first, or pass the --storage it used)")
    _, exp_dir, state = max(found)
    if not tune.Tuner.can_restore(exp_dir):
        raise ConfigError(f"--resume: {exp_dir} holds no Ray experiment state to restore (the sweep was stopped "
                          "before its first trial started); run it without --resume")
    return exp_dir, state


def resume_command(sweep: Sweep, storage: str | None, address: str | None) -> str:
    parts = ["metaocl", "sweep", str(sweep.path) if sweep.path.parent != _sweeps_dir() else sweep.name]
    if sweep.smoke:
        parts.append("--smoke")
    parts.append("--resume")
    if storage:
        parts += ["--storage", storage]
    if address:
        parts += ["--address", address]
    return " ".join(parts) + "  (with the same --set/--seeds as now)"


def _sweeps_dir() -> Path:
    from metaocl.config import sweeps_dir

    return sweeps_dir().resolve()


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------
def run_sweep(sweep: Sweep, tracking: str, address: str | None = None, storage: str | Path | None = None,
              progress: bool = True, resume: bool = False, tracking_explicit: bool = False,
              max_failures: int | None = None) -> SweepOutcome:
    """Run every trial of ``sweep`` on Ray Tune and track it into MLflow at ``tracking``.

    Every user mistake (unreachable cluster, resources no node has, node-local storage on a cluster,
    missing data, nothing to resume) raises ``ConfigError`` before MLflow or the storage is written.
    """
    global _DRIVER
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    storage = str(storage) if storage else default_storage()
    if not _is_uri(storage):
        storage = str(Path(storage).resolve())
    trials = {t.trial_id: t for t in sweep.trials()}
    print_fingerprint = fingerprint(trials)
    exp_dir = state = None
    if resume:
        exp_dir, state = find_resumable(sweep, storage)
        if state.get("fingerprint") != print_fingerprint:
            raise ConfigError(f"--resume: the trials of {sweep.name} differ from those the sweep started with "
                              f"({exp_dir}); resume with the same sweep file, --smoke, --seeds and --set")
        if tracking != state["tracking_uri"]:
            if tracking_explicit:
                raise ConfigError(f"--resume: this sweep tracks into {state['tracking_uri']}, not {tracking}; "
                                  f"resume with --tracking-uri {state['tracking_uri']}")
            tracking = state["tracking_uri"]
    outcome = SweepOutcome(params={tid: t.params for tid, t in trials.items()},
                           resume_command=resume_command(sweep, storage if storage != default_storage() else None,
                                                         address))
    tracker = bar = None
    started = False
    local = not (address or os.environ.get("RAY_ADDRESS"))
    if local:
        check_data_files(sweep, trials, local=True)  # before Ray starts: a missing file costs nothing
    try:
        where = init_ray(address)
        resources = check_resources(sweep, where)
        check_shared_storage(storage, where)
        if not local:
            check_data_files(sweep, trials, local=False)  # asked of the cluster, where trials read them

        # From here on things are written: the MLflow parent run, the experiment folder.
        if resume:
            from metaocl.tracking import check_reachable

            check_reachable(tracking)
            tracker = SweepTracker.reattach(tracking, state["parent_run_id"])
        else:
            tracker = SweepTracker.for_sweep(sweep, tracking)
            exp_dir = _join(storage, experiment_prefix(sweep) + tracker.parent_id[:8])
        ledger = Ledger(exp_dir)
        if not resume:
            ledger.write_state({"parent_run_id": tracker.parent_id, "tracking_uri": tracking, "sweep": sweep.name,
                                "experiment": sweep.experiment_name, "smoke": sweep.smoke,
                                "fingerprint": print_fingerprint, "created": time.time()})
        tracker.client.set_tag(tracker.parent_id, "metaocl.ray_experiment", exp_dir)
        driver = _Driver(tracker, sweep, trials, outcome, ledger)
        driver.finished_before = ledger.finished() & set(trials)
        for tid, status in tracker.trial_status.items():  # reattached runs: what they already hold
            run_id = tracker.trial_runs[tid]
            outcome.histories[tid] = tracker.load_history(run_id)
            driver.last_step[tid] = max((int(r.get("epoch", 0)) for r in outcome.histories[tid]), default=0)
            retries = int(tracker.trial_tags.get(tid, {}).get("metaocl.retries", "0"))
            if retries:
                outcome.retried[tid] = retries
        for tid in driver.finished_before:
            outcome.finished.add(tid)
            if tracker.trial_status.get(tid) != "FINISHED" and tid in tracker.trial_runs:
                tracker.end_trial(tracker.trial_runs[tid], ok=True)  # the old driver died in between
        total = [expected_reports(t, sweep.kind) for tid, t in trials.items() if tid not in driver.finished_before]
        if progress and total and all(n is not None for n in total):
            from tqdm.auto import tqdm

            bar = tqdm(total=sum(total), desc=f"{sweep.name}: {len(total)} trials", unit="eval", file=sys.stderr)
            driver.bar = bar
        _DRIVER = driver

        trainable = tune.with_resources(_trainable, resources)
        if resume:
            tuner = tune.Tuner.restore(exp_dir, trainable, resume_unfinished=True, resume_errored=True)
        else:
            space = [{"trial_id": tid, "kind": sweep.kind, "cpus": resources["cpu"], "exp_dir": exp_dir,
                      "config": t.config_dict()} for tid, t in trials.items()]
            tuner = tune.Tuner(
                trainable,
                param_space={"trial": tune.grid_search(space)},
                tune_config=tune.TuneConfig(num_samples=1),
                run_config=tune.RunConfig(
                    name=exp_dir.rstrip("/").rsplit("/", 1)[1],
                    storage_path=storage,
                    callbacks=[MlflowDriverCallback()],
                    failure_config=tune.FailureConfig(
                        max_failures=sweep.max_failures if max_failures is None else max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    verbose=0,
                ),
            )
        started = True
        results = tuner.fit()
        _reconcile(driver, results)
    except KeyboardInterrupt:
        outcome.interrupted = True
        if not started:  # nothing ran yet: nothing to resume either
            raise
    finally:
        _DRIVER = None
        if bar is not None:
            bar.close()
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
    return outcome


def _reconcile(driver: _Driver, results) -> None:
    """Make MLflow and the outcome agree with Ray's final word on every trial."""
    outcome, tracker = driver.outcome, driver.tracker
    analysis = getattr(results, "_experiment_analysis", None)
    for trial in getattr(analysis, "trials", None) or []:
        tid = (trial.config or {}).get("trial", {}).get("trial_id")
        if tid is None:
            continue
        if trial.status == "ERROR":
            if tid not in outcome.failed:  # failed under an earlier driver
                outcome.failed[tid] = _last_line(_trial_error_text(trial))
        elif trial.status == "TERMINATED" and _completed(trial) and tid not in outcome.finished:
            driver.ledger.mark_finished(tid)  # finished under an earlier driver that died before its ledger
            if tid in tracker.trial_runs and tracker.trial_status.get(tid) != "FINISHED":
                tracker.end_trial(tracker.trial_runs[tid], ok=True)
            outcome.finished.add(tid)


def run_single(trial: Trial, sweep: Sweep, tracking: str | None, echo: bool = True) -> dict[str, Any]:
    """``metaocl run``: one trial in this process, no Ray; tracked into MLflow when ``tracking`` is set.

    It logs into the sweep's experiment (``metaocl/NAME``, or ``metaocl/NAME-smoke`` with ``--smoke``)
    as a trial run without a parent, so ``metaocl report`` reads it like a sweep's trials.
    """
    from metaocl.experiments import PrintReporter

    kind = sweep.kind
    tracker = run_id = None
    if tracking:
        tracker = SweepTracker(tracking, sweep.experiment_name, trial.trial_id, {})
        run_id = tracker.start_trial(trial, sweep.name, kind)
    reporter = PrintReporter(interactive=sys.stderr.isatty(), echo=echo)

    class _Tracked:
        interactive = reporter.interactive

        def __call__(self, metrics):
            reporter(metrics)
            if tracker:
                tracker.log_metrics(run_id, metrics)

        def save_checkpoint(self, state):  # a foreground run has no retries to resume
            pass

        def restore_checkpoint(self):
            return None

    try:
        final = kind_of(kind).run(trial.config, _Tracked())
    except BaseException:
        if tracker:
            tracker.end_trial(run_id, ok=False, error=traceback.format_exc())
        raise
    if tracker:
        tracker.end_trial(run_id, ok=True)
    return {"final": final, "history": reporter.history, "run_id": run_id}
