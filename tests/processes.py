"""The helpers tests share: start, wait for and stop the processes a test launches (Ray nodes,
sweep drivers, servers), wait for a condition (never a fixed sleep), pick a free port; they live in
``bench/_cluster.py`` (bench/chaos.py uses the same ones) and are re-exported here, beside :func:`sh`.

Every process is started in its own session and stopped by process group, so nothing it spawned
(raylets, Ray workers) outlives the test; every wait is bounded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_BENCH = str(Path(__file__).resolve().parents[1] / "bench")
if _BENCH not in sys.path:
    sys.path.insert(0, _BENCH)

from _cluster import (WAIT_S, WaitTimeout, free_port, kill_session, ray_env, start, stop, tcp_open,  # noqa: E402,F401
                      tiny_sweep_file, wait_for, wait_ray_nodes)


def sh(*cmd: str, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run a command (docker, docker-compose, ...) and capture its output; with ``check`` a non-zero
    exit is an AssertionError carrying the ends of its stdout and stderr."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result
