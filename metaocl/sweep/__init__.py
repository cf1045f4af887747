"""Sweeps on Ray Tune, split along the process boundary (docs/architecture.md, "Module map"):

- :mod:`metaocl.sweep.worker`: the code Ray workers run (the trainable and its reporter; no MLflow);
- :mod:`metaocl.sweep.driver`: the Tuner, the MLflow callback, progress hand-off, the outcome table
  and :func:`~metaocl.sweep.driver.run_sweep`;
- :mod:`metaocl.sweep.preflight`: checks of the cluster and of every trial's inputs before anything
  is written;
- :mod:`metaocl.sweep.ledger`: the resume ledger, the trial-set fingerprint, ``--resume``;
- :mod:`metaocl.sweep.progress`: the progress bar / lines of a running sweep;
- :mod:`metaocl.sweep.shutdown`: how a process that hosted a Ray driver ends (no crash at exit).

``metaocl run`` (one trial, no Ray) lives in :mod:`metaocl.experiments.local`. Nothing is imported
here eagerly, so a Ray worker importing :mod:`metaocl.sweep.worker` never loads the driver.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "run_sweep": "metaocl.sweep.driver",
    "SweepOutcome": "metaocl.sweep.driver",
    "default_storage": "metaocl.sweep.ledger",
    "run_single": "metaocl.experiments.local",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'metaocl.sweep' has no attribute {name!r}")
