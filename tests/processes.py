"""The helpers tests share: start, wait for and stop the processes a test launches (Ray nodes,
sweep drivers, servers), wait for a condition (never a fixed sleep), pick a free port.

Every process is started in its own session and stopped by process group, so nothing it spawned
(raylets, Ray workers) outlives the test; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

WAIT_S = 180


def ray_env(**extra: str) -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "METAOCL_RESULTS"):
        env.pop(var, None)
    env.update(extra)
    return env


def start(cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env or ray_env(),
                            cwd=cwd, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """Terminate a process started by :func:`start` and everything in its session."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived the leader
    except ProcessLookupError:
        pass


def kill_session(proc: subprocess.Popen) -> None:
    """``kill -9`` of a process and everything in its session at once (a crashed driver and its local Ray)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the OS picks it; a server started right after binds it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(check, what: str, timeout: float = WAIT_S, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def sh(*cmd: str, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run a command (docker, docker-compose, ...) and capture its output; with ``check`` a non-zero
    exit is an AssertionError carrying the ends of its stdout and stderr."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result
