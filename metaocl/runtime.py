"""Device, seeding and thread settings shared by every engine.

Kept apart from the engines so that a trial's process is configured the same way whether it runs
inside Ray (``metaocl sweep``) or in the foreground (``metaocl run``). Also the one home of "can
this process use the GPUs it was given" (:func:`gpu_problem`): the sweep's GPU probe and every
trial ask it, so a host whose driver CUDA cannot use is one line, never silent CPU training.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess

# Set to 1 to let a trial that Ray gave (logical) GPUs run on the CPU: simulating GPU scheduling on a
# CPU host (``ray start --num-gpus 8`` on a laptop, the tests, bench/cluster_sim.py). Without it such
# a trial fails at once: a GPU that CUDA cannot use is a broken driver, never a reason to train on CPUs.
SIMULATE_GPUS_ENV = "METAOCL_SIMULATE_GPUS"


def resolve_device(name: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; an explicit ``cuda`` without one is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        from metaocl.config import ConfigError

        raise ConfigError(f"device: {name!r} requested but CUDA is not available on this machine")
    return name


def simulating_gpus() -> bool:
    """Whether ``METAOCL_SIMULATE_GPUS=1``: GPUs Ray hands out may be logical (no CUDA behind them)."""
    return os.environ.get(SIMULATE_GPUS_ENV, "").strip().lower() in ("1", "true", "yes")


def nvidia_driver_version() -> str | None:
    """The host's NVIDIA driver version from NVML (pynvml, else ``nvidia-smi``); None when NVML does not answer."""
    try:
        try:
            import pynvml
        except ImportError:
            from ray._private.thirdparty import pynvml  # Ray vendors it (it counts GPUs through NVML)
        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        pass
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
        lines = done.stdout.split()
        return lines[0] if done.returncode == 0 and lines else None
    except (OSError, subprocess.SubprocessError):
        return None


def node_name() -> str:
    """This machine as a line names it: host name and, inside Ray, the node's IP."""
    host = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            return f"{host} ({ray.util.get_node_ip_address()})"
    except Exception:
        pass
    return host


def gpu_problem(n_given: float, simulate: bool | None = None) -> str | None:
    """None when this process can use the ``n_given`` GPUs Ray gave it (or none were given, or
    :func:`simulating_gpus`); else the one line saying why not: the node, the NVIDIA driver (if NVML
    answers) and the CUDA version this image's PyTorch was built for."""
    if n_given <= 0 or simulate or simulating_gpus():
        return None
    import math

    import torch

    need = max(1, math.ceil(n_given - 1e-9))
    try:
        seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        seen = 0
    if seen >= need:
        return None
    driver = nvidia_driver_version()
    return (f"node {node_name()}: Ray gave this trial {n_given:g} GPU but PyTorch sees {seen} CUDA device"
            f"{'s' if seen != 1 else ''} (NVIDIA driver: {driver or 'NVML did not answer'}; this image's torch "
            f"{torch.__version__} is built for CUDA {torch.version.cuda or 'none (a CPU build)'}); fix the driver "
            f"or use an image built for it, or set {SIMULATE_GPUS_ENV}=1 to run GPU trials on the CPU on purpose")


def gpu_inventory() -> list[tuple[str, int]]:
    """(name, total memory in bytes) of every CUDA device this process sees; [] without CUDA."""
    import torch

    try:
        if not torch.cuda.is_available():
            return []
        return [(torch.cuda.get_device_name(i), int(torch.cuda.get_device_properties(i).total_memory))
                for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def check_given_gpus(n_given: float, simulate: bool | None = None) -> None:
    """A trial that Ray gave GPUs it cannot use fails at once (a ConfigError: never retried).
    ``simulate``: the driver's :func:`simulating_gpus` (the worker's own environment counts too)."""
    problem = gpu_problem(n_given, simulate)
    if problem:
        from metaocl.config import ConfigError

        raise ConfigError(problem)


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
