"""Experiment runners: one module per kind, each with ``run(config, reporter) -> final metrics``.

The contract every runner follows (the sweep driver and ``metaocl run`` rely on it):

- ``run(config, reporter)`` trains and evaluates one trial described by the kind's config dataclass
  and returns a flat ``dict[str, float]`` of final metrics.
- After every evaluation it calls ``reporter(metrics)`` with a flat dict of floats that contains
  ``epoch`` (a global, monotonically increasing step across stages: it becomes MLflow's ``step``)
  and ``stage`` (1, 2, 3). Metric names are ``{measure}/{split}``: ``acc/qd1consis``,
  ``em/d2consis``, ``loss/qd2incons``, ``train/loss``; the gaps are ``gap/ocl``
  (qd1consis - qd2incons) and ``gap/meta_ocl`` (d1consis - d2consis) of the headline measure.
- ``reporter.interactive`` says whether to draw progress bars (True in ``metaocl run``, False
  inside a Ray trial).
- Optional, for long trials: ``reporter.save_checkpoint(state)`` at the end of an epoch (a
  ``torch.save``-able dict: model/optimizer/scheduler state, stage, epoch, RNG states) and
  ``reporter.restore_checkpoint() -> dict | None`` once at the start. In a Ray trial they are backed
  by the trial's folder in the sweep's trial storage (:class:`metaocl.experiments.checkpoints.TrialCheckpoints`),
  so a retried or resumed trial continues from its last checkpoint; here they are no-ops. Call them through :mod:`metaocl.experiments.checkpoints` (``restore``/``save``), so any
  reporter works and every runner saves the same states.
"""

from __future__ import annotations

from typing import Mapping, Protocol


class Reporter(Protocol):
    interactive: bool

    def __call__(self, metrics: Mapping[str, float]) -> None: ...


class PrintReporter:
    """Collects reported metrics in memory (``history``); optionally prints each report."""

    def __init__(self, interactive: bool = False, echo: bool = False):
        self.interactive = interactive
        self.echo = echo
        self.history: list[dict[str, float]] = []

    def save_checkpoint(self, state: dict) -> None:
        """No-op: a foreground run is not retried (see the module docstring)."""

    def restore_checkpoint(self) -> dict | None:
        return None

    def __call__(self, metrics: Mapping[str, float]) -> None:
        row = {k: float(v) for k, v in metrics.items()}
        self.history.append(row)
        if self.echo:
            shown = {k: v for k, v in row.items() if k.startswith(("acc/", "em/", "gap/", "train/"))}
            text = "  ".join(f"{k}={v:.3f}" for k, v in shown.items())
            print(f"epoch {int(row.get('epoch', 0))} stage {int(row.get('stage', 0))}  {text}", flush=True)
