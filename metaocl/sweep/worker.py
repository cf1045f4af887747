"""The code a Ray worker runs for one trial: the Tune function trainable and its reporter.

This is the only part of the sweep that Ray pickles and ships to workers; it imports neither MLflow
nor the driver. A trial rebuilds its config from the plain dict in ``param["trial"]``, runs its kind's
``run(config, reporter)`` and hands every evaluation to Ray Tune; the driver's callback
(:mod:`metaocl.sweep.driver`) turns those into MLflow runs. Checkpoints go straight into the sweep's
trial storage (:class:`~metaocl.experiments.checkpoints.TrialCheckpoints`), not through Ray.

A :class:`~metaocl.config.ConfigError` raised inside a trial is a user mistake that a retry cannot
fix (so is a GPU the trial was given but cannot use, :func:`metaocl.runtime.check_given_gpus`): the trial returns at once with one final report carrying the error line under
:data:`CONFIG_ERROR_KEY` (so Ray does not retry it), and the driver marks it FAILED with that line.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Mapping

from ray import tune

from metaocl.config import ConfigError, from_dict, kind as kind_of
from metaocl.runtime import check_given_gpus
from metaocl.sweep.ledger import Ledger

CHECKPOINT_KEY = "metaocl_checkpoint"  # marks a report that only carries a checkpoint (not logged; none are made now)
CONFIG_ERROR_KEY = "metaocl_config_error"  # a report that says: this trial failed with a user mistake (the line)
TRACEBACK_KEY = "metaocl_traceback"  # ... and where it was raised


class TuneReporter:
    """Inside a Ray worker: hand each evaluation to Ray Tune; checkpoints go to the trial's folder in
    the sweep's trial storage.

    ``save_checkpoint(state)`` writes ``state`` (any ``torch.save``-able dict: model and optimizer
    state dicts, epoch, RNG states) once, straight into ``store`` (a
    :class:`~metaocl.experiments.checkpoints.TrialCheckpoints`); Ray is never given a checkpoint, so
    nothing is copied a second time. ``restore_checkpoint()`` returns the trial's checkpoint after a
    retry or a ``--resume``, else None (first deleting what an earlier attempt left half-written).
    """

    interactive = False

    def __init__(self, store=None):
        self.store = store

    def __call__(self, metrics: Mapping[str, float]) -> None:
        tune.report(dict(metrics))

    def save_checkpoint(self, state: dict) -> int:
        """Store ``state``; returns the bytes written (``perf/checkpoint_bytes``)."""
        return self.store.save(state)

    def restore_checkpoint(self) -> dict | None:
        if self.store is None:
            return None
        self.store.clean()  # this attempt is the trial's only one: leftovers of a dead one can go
        return self.store.load()


class TrialResources:
    """What Ray gives each trial (``tune.with_resources``): the ``cpus`` and ``gpus`` of its spec (a
    per-trial GPU share, :func:`metaocl.sweep.preflight.trial_gpus`), else the sweep's ``default``
    (a spec of an experiment started before specs carried them)."""

    def __init__(self, default: Mapping[str, float]):
        self.default = {"cpu": float(default["cpu"]), "gpu": float(default["gpu"])}

    def __call__(self, config: dict):
        from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

        spec = config.get("trial") if isinstance(config, dict) else None
        spec = spec if isinstance(spec, dict) else {}
        return resource_dict_to_pg_factory({"cpu": float(spec.get("cpus", self.default["cpu"])),
                                            "gpu": float(spec.get("gpus", self.default["gpu"]))})


def _assigned_gpu() -> float:
    """The GPU share Ray gave this worker (0 without one), as its runtime context says."""
    import ray

    try:
        return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    except Exception:
        return 0.0


def _bench_record(folder: str, tid: str, role: str | None, started: float, final) -> None:
    """One JSON file per finished attempt for bench/cluster_sim.py: when it held its resources, how
    long it waited on a stage-1 lock, stage-1 trainings, checkpoint writes and bytes."""
    import json

    from metaocl.experiments.stage1_cache import STATS

    record = {"trial_id": tid, "role": role or "trial", "start": started, "end": time.time(),
              "node": os.environ.get("METAOCL_BENCH_NODE", ""), "gpu": _assigned_gpu(), **STATS,
              "checkpoints": float((final or {}).get("perf/checkpoints", 0.0)),
              "checkpoint_bytes": float((final or {}).get("perf/checkpoint_bytes", 0.0))}
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"{tid}-{os.getpid()}-{time.time_ns()}.json").write_text(json.dumps(record))


def trainable(param: dict) -> None:
    """The Ray Tune function trainable: rebuild the trial's config and run its experiment kind."""
    import ray

    from metaocl.experiments.checkpoints import TrialCheckpoints

    spec = param["trial"]
    tid = spec["trial_id"]
    ledger = Ledger(spec["exp_dir"])
    if ledger.is_finished(tid):  # finished under an earlier driver whose Ray state was not saved in time
        return
    store = TrialCheckpoints(spec["exp_dir"], tid)  # this trial's checkpoints, in the sweep's trial storage
    ledger.log_attempt(tid, {"trial_id": tid, "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
                             "time": time.time(), "from_checkpoint": store.latest() is not None,
                             "gpu": _assigned_gpu()})
    os.environ["METAOCL_TRIAL_CPUS"] = str(spec["cpus"])
    kind = kind_of(spec["kind"])
    try:
        check_given_gpus(len(ray.get_gpu_ids()), spec.get("simulate_gpus"))  # GPUs it cannot use: fail now, never train on the CPU instead
        config = from_dict(kind.config_cls, spec["config"], f"trial {tid}")
        role = spec.get("role")
        started = time.time()
        if os.environ.get("METAOCL_BENCH_TIMES"):  # counts of this trial only (Ray may reuse the process)
            from metaocl.experiments.stage1_cache import STATS

            STATS.update(stage1_trainings=0, waited_s=0.0)
        if role == "stage1":  # a stage-1 unit (metaocl.sweep.stage1): the shared stages, its model to storage
            final = kind.shared.run_unit(config, TuneReporter(store), spec["store"])
        elif role == "branch":  # a trial that starts from its unit's model
            final = kind.shared.run_branch(config, TuneReporter(store), spec["store"])
        else:
            final = kind.run(config, TuneReporter(store))
        if os.environ.get("METAOCL_BENCH_TIMES"):
            _bench_record(os.environ["METAOCL_BENCH_TIMES"], tid, role, started, final)
    except ConfigError as e:  # deterministic: a retry would fail the same way
        tune.report({CONFIG_ERROR_KEY: str(e), TRACEBACK_KEY: traceback.format_exc()})
