"""``metaocl run``: one trial in this process, no Ray, optionally tracked into MLflow.

For debugging and for GPU machines without Ray. What the trial reads from outside and is missing
(data, hub models) is fetched first (:func:`prepare_trial`), then its inputs and device are checked,
so a mistake writes nothing. Tracking goes into an experiment of its own,
``metaocl/NAME-run`` (``metaocl/NAME-smoke-run`` with ``--smoke``): a parent run tagged
``metaocl.role=sweep``, ``metaocl.invocation=run`` with one child trial run, so a debugging run can
never become part of a sweep's verdict (``metaocl report NAME`` reads ``metaocl/NAME``).
"""

from __future__ import annotations

import sys
import time
import traceback
from typing import Any, Mapping

from metaocl.config import ConfigError, Sweep, Trial, kind as kind_of
from metaocl.experiments import PrintReporter


class TrackedReporter(PrintReporter):
    """A :class:`PrintReporter` that also logs every report to one MLflow run."""

    def __init__(self, tracker=None, run_id: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.tracker, self.run_id = tracker, run_id

    def __call__(self, metrics: Mapping[str, float]) -> None:
        super().__call__(metrics)
        if self.tracker is not None:
            self.tracker.log_metrics(self.run_id, metrics)


def check_trial(trial: Trial, sweep: Sweep) -> None:
    """What the trial needs from outside, and its device, before anything is written."""
    kind = kind_of(sweep.kind)
    problems = kind.required_inputs(trial.config)
    if problems:
        raise ConfigError(sweep.problem_text(problems))  # names the --set that gave a bad value
    device = str(getattr(trial.config, "device", "auto"))
    if device.startswith("cuda"):
        from metaocl.runtime import resolve_device

        resolve_device(device)  # ConfigError when this machine has no CUDA


def prepare_trial(trial: Trial, sweep: Sweep, fetch: bool = True) -> None:
    """Fetch what the trial reads from outside and is missing (:mod:`metaocl.fetch`; ``fetch=False``:
    only what is here), run the rest of this process with the hub offline, then :func:`check_trial`."""
    from metaocl.fetch import fetch_needs, needs, use_trial_env

    use_trial_env(fetch_needs(needs(sweep.kind, [trial.config]), no_fetch=not fetch))
    check_trial(trial, sweep)


def run_single(trial: Trial, sweep: Sweep, tracking: str | None, echo: bool = True) -> dict[str, Any]:
    """Run ``trial`` here; returns its final metrics, its report history and the MLflow run ids."""
    check_trial(trial, sweep)
    tracker = run_id = None
    if tracking:
        from metaocl import mlflow_layout as layout
        from metaocl.tracking import SweepTracker

        tracker = SweepTracker(tracking, sweep.run_experiment_name,
                               f"{sweep.name}-{trial.trial_id}-{time.strftime('%Y%m%d-%H%M%S')}",
                               {**layout.parent_tags(sweep.name, sweep.kind, sweep.smoke), layout.INVOCATION_TAG: "run"})
        tracker.start_parent()
        run_id = tracker.start_trial(trial, sweep.name, sweep.kind)
    reporter = TrackedReporter(tracker, run_id, interactive=sys.stderr.isatty(), echo=echo)
    try:
        final = kind_of(sweep.kind).run(trial.config, reporter)
    except BaseException:
        if tracker:
            tracker.end_trial(run_id, ok=False, error=traceback.format_exc())
            tracker.end(False)
        raise
    if tracker:
        tracker.end_trial(run_id, ok=True)
        tracker.end(True)
    return {"final": final, "history": reporter.history, "run_id": run_id,
            "parent_run_id": tracker.parent_id if tracker else None}
