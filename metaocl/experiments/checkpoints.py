"""Trial checkpoints through the optional reporter interface, shared by every runner.

A runner that checkpoints calls :func:`restore` once at its start and :func:`save` after the
``reporter(metrics)`` of an epoch (or an evaluation), so a retried Ray trial continues where its last
attempt stopped and ends, metric for metric, where an uninterrupted run does. A reporter without
``save_checkpoint`` / ``restore_checkpoint`` (any plain callable) makes both no-ops; in ``metaocl
run`` they are no-ops too (see :mod:`metaocl.experiments` and docs/architecture.md, "Resume,
retries, checkpoints").

What makes a restart exact is not only the weights: the optimizer's moments, the schedule's
position, the data-order generator and the global torch/Python/NumPy(/CUDA) RNG states (dropout,
drop path) must all continue where they were. :func:`save` bundles those; the runner adds its
position (stage, epoch or step, global counters, last metrics) as keyword arguments.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def restore(reporter) -> dict | None:
    """The last state the reporter kept for this trial, or None (first attempt, or no checkpoints)."""
    load = getattr(reporter, "restore_checkpoint", None)
    return load() if load is not None else None


def enabled(reporter) -> bool:
    return getattr(reporter, "save_checkpoint", None) is not None


def save(reporter, model: torch.nn.Module, optimizer, scheduler, generator: torch.Generator | None,
         **position) -> int | None:
    """Model, optimizer, schedule and RNG states plus ``position`` through the reporter (if it can);
    returns the bytes the reporter says it wrote (None when it does not say)."""
    if not enabled(reporter):
        return None
    return reporter.save_checkpoint({
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_states(generator),
        **position,
    })


def load_training_state(saved: dict, optimizer, scheduler, generator: torch.Generator | None) -> None:
    """Put the optimizer, schedule and RNG states of ``saved`` back. Call it after the stage's own
    ``seed_everything`` and after building the stage's fresh optimizer, so the saved states win."""
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None and saved.get("scheduler") is not None:
        scheduler.load_state_dict(saved["scheduler"])
    set_rng_states(generator, saved["rng"])


def rng_states(generator: torch.Generator | None) -> dict:
    return {
        "generator": generator.get_state() if generator is not None else None,
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_states(generator: torch.Generator | None, rng: dict) -> None:
    if generator is not None and rng.get("generator") is not None:
        generator.set_state(rng["generator"])
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def alignment_pending(monitor) -> list[dict[str, float]]:
    """Gradient-alignment measurements taken since the last evaluation (a GradAlignmentMonitor keeps
    them until ``epoch_metrics``), so a checkpoint between evaluations loses none of them."""
    return monitor.pending()


def set_alignment_pending(monitor, saved: dict) -> None:
    monitor.restore_pending(saved.get("alignment_pending", []))
