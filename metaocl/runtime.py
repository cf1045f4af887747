"""Device, seeding and thread settings shared by every engine.

Kept apart from the engines so that a trial's process is configured the same way whether it runs
inside Ray (``metaocl sweep``) or in the foreground (``metaocl run``).
"""

from __future__ import annotations

import os
import random


def resolve_device(name: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; an explicit ``cuda`` without one is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        from metaocl.config import ConfigError

        raise ConfigError(f"device: {name!r} requested but CUDA is not available on this machine")
    return name


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a trial is repeatable."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def set_threads(n: int | None = None) -> int:
    """Use ``n`` intra-op threads (default: the CPUs Ray gave this trial, else all cores)."""
    import torch

    if n is None:
        given = os.environ.get("METAOCL_TRIAL_CPUS")
        n = round(float(given)) if given else (os.cpu_count() or 1)  # a fractional CPU still gets a thread
    n = max(1, int(n))
    torch.set_num_threads(n)
    return n
