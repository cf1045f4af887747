"""Process helpers that bench/ scripts and tests/ share: start, wait for and stop the processes they
launch (Ray nodes, sweep drivers, servers), wait for a condition (never a fixed sleep), pick a free
port, count the live nodes of a Ray cluster.

Every process is started in its own session and stopped by process group, so nothing it spawned
(raylets, Ray workers) outlives its owner, and nothing started by anyone else is touched: a process
is only ever signalled through the ``Popen`` that started it. Every wait is bounded.

Independent of metaocl (``bench/chaos.py`` runs ``metaocl`` only as a command). Imported as
``_cluster`` with ``bench/`` on ``sys.path`` (``bench/chaos.py`` and ``tests/processes.py`` put it there).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

WAIT_S = 180


class WaitTimeout(AssertionError):
    """A bounded wait ran out (an AssertionError: in a test it is a failure like any other)."""


def ray_env(**extra: str) -> dict:
    """This process's environment for a Ray/MLflow subprocess on loopback: no auth token, no usage
    stats, unbuffered output, and no cluster, tracking store or results folder inherited from outside."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "METAOCL_RESULTS"):
        env.pop(var, None)
    env.update(extra)
    return env


def start(cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None,
          append: bool = False) -> subprocess.Popen:
    """``cmd`` in a session of its own, stdout and stderr into ``log`` (appended to with ``append``)."""
    return subprocess.Popen(cmd, stdout=log.open("a" if append else "w"), stderr=subprocess.STDOUT,
                            env=env or ray_env(), cwd=cwd, start_new_session=True)


def stop(proc: subprocess.Popen, first: int = signal.SIGTERM, grace: float = 10) -> None:
    """Stop a process started by :func:`start` and everything in its session: ``first`` (SIGTERM),
    then SIGKILL after ``grace`` seconds, then SIGKILL of whatever of the session outlived its leader."""
    for sig in (first, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived the leader
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
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


def tcp_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_for(check, what: str, timeout: float = WAIT_S, every: float = 0.2):
    """``check()`` until it returns something true (returned), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_ray_nodes(address: str, n: int, driver_ip: str, timeout: float = WAIT_S, env: dict | None = None) -> int:
    """Wait until the Ray cluster at ``address`` has ``n`` live nodes (asked by a short driver on
    ``driver_ip``, in a subprocess: this process stays out of Ray); returns how many were alive."""
    probe = textwrap.dedent(f"""
        import time, ray
        ray.init(address="{address}", _node_ip_address="{driver_ip}", log_to_driver=False, logging_level="ERROR")
        deadline = time.monotonic() + {timeout}
        while len([x for x in ray.nodes() if x["Alive"]]) < {n} and time.monotonic() < deadline:
            time.sleep(0.5)
        print(len([x for x in ray.nodes() if x["Alive"]]))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env or ray_env(),
                         timeout=timeout + 120)
    lines = out.stdout.strip().splitlines()
    alive = int(lines[-1]) if lines and lines[-1].isdigit() else 0
    if alive < n:
        raise WaitTimeout(f"{n} Ray nodes did not come up at {address} ({alive} alive): {out.stderr[-2000:]}")
    return alive


def tiny_sweep_file(folder: Path, name: str, grid: str = "{}", seeds: int = 2, epochs: tuple[int, int] = (2, 1),
                    resources: str = "{cpu: 1, gpu: 0}", max_failures: int = 0,
                    description: str = "tiny set inclusion for cluster tests") -> Path:
    """``folder/name.yaml``: a sweep of a tiny set-inclusion trial (seconds of training), evaluated and
    checkpointed after every epoch, ``seeds`` trials per grid point (``grid``: YAML flow mapping)."""
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        description: "{description}"
        kind: set_inclusion
        base:
          device: cpu
          data: {{n_variables: 100, train_questions: 12, test_questions: 12}}
          model: {{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}}
          train: {{stage1_epochs: {epochs[0]}, stage2_epochs: {epochs[1]}, batch_size: 128, checkpoint_minutes: 0}}
        grid: {grid}
        seeds: {seeds}
        resources: {resources}
        max_failures: {max_failures}
        """))
    return path
