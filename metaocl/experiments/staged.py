"""The one staged-trial skeleton every kind runs: restore, stages, evaluation cadence, checkpoints.

A trial is a list of :class:`Stage` s (LM: one per ``data.stages``; set inclusion: X1 then X2;
MNIST: one stage whose units are blocks of ``eval_every`` steps). :func:`run` owns what is the same
for every kind, read top to bottom:

1. restore the trial's last checkpoint (a retried or resumed Ray trial), skip the stages it finished;
2. per stage: the stage's ``seed_everything``, a fresh optimizer and schedule (the kind's
   :meth:`StagedTrial.start_stage`), the saved optimizer/schedule/RNG states on top when the
   checkpoint was taken inside this stage;
3. per unit (an epoch, or a block of steps): the kind's :meth:`StagedTrial.train_unit`; every
   ``eval_every`` units and at the stage's last one the kind's :meth:`StagedTrial.evaluate`, then
   ``reporter(metrics)``, *then* the checkpoint (a restarted trial never skips an evaluation);
4. checkpoints (:class:`CheckpointPolicy`): every ``train.checkpoint_minutes`` of the attempt's
   time, and at every stage boundary the trial crosses (written at the start of the next stage,
   after its seeding and fresh optimizer: nothing of the finished stage's optimizer is kept). The
   end of a trial's last stage is not checkpointed: the trial returns there and the sweep's ledger
   records it finished.

A kind supplies the data, model, optimizer, one unit of training and the evaluation by subclassing
:class:`StagedTrial`; :func:`n_reports` (progress) follows from its stage list, so no kind re-derives it.
Each checkpoint adds ``perf/checkpoint_s`` (seconds writing checkpoints so far, all attempts),
``perf/checkpoints`` and ``perf/checkpoint_bytes`` (what the reporter says it wrote) to the next report;
a restored checkpoint counts itself (its bytes as its store recorded them; its seconds are lost).
Where a sweep's checkpoints are written: :mod:`metaocl.experiments.checkpoints` (once, straight
into the sweep's trial storage).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from metaocl.experiments.base import evaluations

# Default ``train.checkpoint_minutes``: a retry loses at most this much training (half on average),
# against a write of well under a minute even for Pythia-2.8B (docs/gpu-clusters.md, "Checkpoints").
CHECKPOINT_MINUTES = 30.0


@dataclass(frozen=True)
class Stage:
    """One stage of a trial: ``units`` epochs (or step blocks), evaluated every ``eval_every`` and at
    its last unit; ``seed``: ``seed_everything(seed)`` at its start (None: the global RNG goes on)."""

    number: int
    units: int
    eval_every: int = 1
    seed: int | None = None


def n_reports(stages: Iterable[Stage]) -> int:
    """Evaluations (``reporter(...)`` calls) of a trial with these stages."""
    return sum(evaluations(s.units, s.eval_every) for s in stages)


class CheckpointPolicy:
    """When a trial checkpoints: every ``minutes`` of the attempt's time since its start or its last
    checkpoint (0 = after every unit), and at stage boundaries; ``None`` = never (no checkpoints).
    ``clock`` is injectable so the cadence can be counted without waiting (:func:`n_checkpoints`)."""

    def __init__(self, minutes: float | None, clock: Callable[[], float] = time.monotonic):
        self.minutes, self.clock = minutes, clock
        self.since = clock()

    @property
    def enabled(self) -> bool:
        return self.minutes is not None

    def due(self) -> bool:
        return self.enabled and self.clock() - self.since >= 60.0 * self.minutes

    def written(self) -> None:
        self.since = self.clock()


class StagedTrial:
    """What a kind supplies to :func:`run`. Attributes the skeleton reads after ``start_stage``:
    ``model``, ``optimizer``, ``scheduler`` (or None), ``generator`` (the data-order generator, or None)."""

    model = optimizer = scheduler = generator = None

    def start_stage(self, stage: Stage) -> None:
        """The stage's data, a fresh optimizer and schedule (and data-order generator if per stage)."""
        raise NotImplementedError

    def train_unit(self, stage: Stage, unit: int) -> dict[str, float]:
        """Train unit ``unit`` (1-based) of ``stage``; returns its training metrics (``train/loss``, ``perf/*``)."""
        raise NotImplementedError

    def evaluate(self, stage: Stage) -> dict[str, float]:
        """The evaluation metrics (measures per split, gaps, diagnostics) of the model as it is now."""
        raise NotImplementedError

    def x(self, stage: Stage, unit: int, units_before: int) -> float:
        """The report's ``epoch`` (MLflow's step): by default the global unit count across stages."""
        return float(units_before + unit)

    def state(self) -> dict:
        """The kind's own position to checkpoint (global step counters, auto-sized micro batch ...)."""
        return {}

    def load_state(self, saved: dict) -> None:
        """Put :meth:`state` back (called after the stage's ``start_stage`` on a restore)."""

    def unit_done(self, stage: Stage, unit: int, metrics: Mapping[str, float] | None) -> None:
        """After every unit (``metrics``: the report, when the unit was evaluated): progress display."""


def run(trial: StagedTrial, stages: list[Stage], reporter, policy: CheckpointPolicy, *,
        saved: dict | None = None, history: list[dict] | None = None, first: int | None = None,
        last: int | None = None) -> dict[str, float]:
    """Run stages ``first..last`` (stage numbers; default all) of ``trial``; returns the last report.

    ``saved``: this trial's last checkpoint (:func:`metaocl.experiments.checkpoints.restore`): its
    weights, position and report history replace the trial's, and training continues after the unit
    it was taken at. ``history``: reports made before ``first`` (e.g. a stage 1 trained elsewhere);
    every report is appended to it.
    """
    from metaocl.experiments import checkpoints
    from metaocl.runtime import seed_everything

    first = stages[0].number if first is None else first
    last = stages[-1].number if last is None else last
    history = [] if history is None else history
    units_before = sum(s.units for s in stages if s.number < first)
    metrics: dict[str, float] = dict(history[-1]) if history else {}
    totals = {"perf/checkpoint_s": 0.0, "perf/checkpoints": 0.0, "perf/checkpoint_bytes": 0.0}
    if saved is not None:
        trial.model.load_state_dict(saved["model"])
        units_before, metrics, totals = saved["units_before"], dict(saved["metrics"]), dict(saved["totals"])
        history[:] = saved["history"]
        totals["perf/checkpoints"] += 1  # its totals were taken before it was written: count it too
        totals["perf/checkpoint_bytes"] += float(saved.get(checkpoints.SIZE_KEY, 0))

    def checkpoint(stage: Stage, unit: int) -> None:
        t0 = time.perf_counter()
        written = checkpoints.save(reporter, trial.model, trial.optimizer, trial.scheduler, trial.generator,
                                   stage=stage.number, epoch=unit, units_before=units_before, metrics=metrics,
                                   history=history, totals=totals, kind_state=trial.state())
        totals["perf/checkpoint_s"] += time.perf_counter() - t0
        totals["perf/checkpoints"] += 1
        totals["perf/checkpoint_bytes"] += float(written or 0)
        policy.written()

    trained = False  # whether this call trained a unit yet (a boundary after it is checkpointed)
    for stage in stages:
        if not first <= stage.number <= last or (saved is not None and saved["stage"] > stage.number):
            continue
        if stage.seed is not None:
            seed_everything(stage.seed)
        trial.start_stage(stage)  # fresh optimizer and schedule
        first_unit = 1
        if saved is not None:  # the stage the checkpoint was taken in: its optimizer, RNG and position
            checkpoints.load_training_state(saved, trial.optimizer, trial.scheduler, trial.generator)
            trial.load_state(saved["kind_state"])
            first_unit, saved = saved["epoch"] + 1, None
        elif trained and policy.enabled:  # a stage boundary: the finished stage's weights, this stage's start
            checkpoint(stage, 0)
        for unit in range(first_unit, stage.units + 1):
            train_metrics = trial.train_unit(stage, unit)
            trained = True
            stage_end = unit == stage.units
            report = None
            if unit % stage.eval_every == 0 or stage_end:
                report = trial.evaluate(stage)
                report.update(train_metrics)
                report.update(totals)
                report.update({"epoch": trial.x(stage, unit, units_before), "stage": float(stage.number)})
                metrics = report
                history.append(dict(report))
                reporter(report)
            trial.unit_done(stage, unit, report)
            if not stage_end and policy.due():  # after the report: a restart never skips an evaluation
                checkpoint(stage, unit)
        units_before += stage.units
    return metrics


# ------------------------------------------------------------------------------------------------
# What the checkpoints of a trial cost: the one home of this arithmetic (the runtime decides with
# the same CheckpointPolicy; the sweep plan projects with these functions).
# ------------------------------------------------------------------------------------------------
ADAFACTOR_STATE_FRACTION = 0.001  # factored second moments (a row and a column per matrix): ~0.1% of the weights


def _kind_of(config):
    from metaocl.config import KINDS, kind

    for name in KINDS:
        k = kind(name)
        if isinstance(config, k.config_cls):
            return k
    raise TypeError(f"no experiment kind has config class {type(config).__name__}")


def checkpoint_bytes(config, n_params: int, optimizer_state: bool = True) -> int:
    """Bytes of one checkpoint of a trial with ``n_params`` parameters: the weights (fp32, or bf16
    with ``model.dtype: bfloat16``) plus, inside a stage (``optimizer_state``), the optimizer's state
    (AdamW: two fp32 moments per parameter; Adafactor without momentum, the authors': factored
    second moments, ~0.1% of the weights). A stage-boundary checkpoint holds a fresh optimizer (no
    state). RNG states, position and report history add kilobytes, not counted."""
    model = getattr(config, "model", None)
    bytes_per_param = 2 if getattr(model, "dtype", "float32") == "bfloat16" else 4
    weights = n_params * bytes_per_param
    if not optimizer_state:
        return weights
    optimizer = getattr(config.train, "optimizer", "adamw")
    if optimizer == "adafactor":
        return weights + int(n_params * 4 * ADAFACTOR_STATE_FRACTION)
    return weights + n_params * 8


def n_checkpoints(config, epoch_seconds, first: int | None = None, last: int | None = None) -> list[tuple[int, int]]:
    """Checkpoints one trial writes per stage, ``[(inside the stage, at its start), ...]``, when a unit
    (epoch, or step block) of stage k takes ``epoch_seconds[k-1]`` seconds (one number: every stage),
    evaluation included, under the trial's ``train.checkpoint_minutes``. The same decisions as
    :func:`run` (with a clock advanced by the unit times): a checkpoint at a stage's start only when
    this trial trained the stage before it, none at the trial's last unit."""
    stages = _kind_of(config).stages(config)
    seconds = list(epoch_seconds) if isinstance(epoch_seconds, (list, tuple)) else [float(epoch_seconds)] * len(stages)
    now = [0.0]
    policy = CheckpointPolicy(config.train.checkpoint_minutes, clock=lambda: now[0])
    first = stages[0].number if first is None else first
    last = stages[-1].number if last is None else last
    out, trained = [], False
    for stage in stages:
        if not first <= stage.number <= last:
            continue
        inside = at_start = 0
        if trained and policy.enabled:
            at_start = 1
            policy.written()
        for unit in range(1, stage.units + 1):
            now[0] += seconds[stage.number - 1]
            trained = True
            if unit != stage.units and policy.due():
                inside += 1
                policy.written()
        out.append((inside, at_start))
    return out


def trial_checkpoint_bytes(config, n_params: int, epoch_seconds, first: int | None = None,
                           last: int | None = None) -> int:
    """Bytes one trial (stages ``first..last``) writes in checkpoints (:func:`n_checkpoints` x
    :func:`checkpoint_bytes`)."""
    full, fresh = checkpoint_bytes(config, n_params), checkpoint_bytes(config, n_params, optimizer_state=False)
    return sum(inside * full + at_start * fresh for inside, at_start in n_checkpoints(config, epoch_seconds, first, last))
