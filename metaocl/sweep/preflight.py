"""Checks before anything is written: the cluster, its resources and storage, every trial's inputs.

Each check raises a one-line :class:`~metaocl.config.ConfigError` (the CLI exits with 2) before the
MLflow parent run or the Ray experiment folder exists:

- :func:`init_ray`: the Ray address answers (a TCP probe first, so a typo costs seconds, not Ray's
  minute of retries), else a local instance bound to loopback;
- :func:`check_resources`: one trial's ``resources`` fit on some node;
- :func:`check_devices`: a trial that asks for ``device: cuda`` gets a GPU;
- :func:`check_shared_storage`: on a multi-node cluster, ``--storage`` is seen by every node;
- :func:`check_inputs`: what each trial needs from outside (data files, model names), through its
  kind's ``required_inputs`` (:class:`~metaocl.experiments.base.ExperimentKind`); on a cluster it is
  asked of a node, where the trials read them.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from metaocl.config import ConfigError, from_dict, kind as kind_of
from metaocl.sweep.ledger import is_uri

if TYPE_CHECKING:
    from metaocl.config import Sweep, Trial

LOCAL_NODE_IP = "127.0.0.2" if platform.system() == "Linux" else "127.0.0.1"
RAY_WAIT_S = 120  # bound on every wait for the cluster (probe tasks)


def _split_address(address: str) -> tuple[str, int] | None:
    """``ray://host:10001`` / ``host:6379`` / ``host`` -> (host, port); None for ``auto``/``local``."""
    rest = address.split("://", 1)[1] if "://" in address else address
    if rest in ("auto", "local", ""):
        return None
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    try:
        return host.strip("[]"), int(port) if port else (10001 if address.startswith("ray://") else 6379)
    except ValueError:
        raise ConfigError(f"Ray address {address!r}: expected HOST:PORT (or ray://HOST:PORT)") from None


def init_ray(address: str | None, num_cpus: int | None = None) -> str:
    """Connect to ``address`` (or ``$RAY_ADDRESS``), else start a local instance bound to loopback.

    Returns a few words saying which cluster this is. An address nobody answers on is a one-line
    ``ConfigError`` within seconds (a TCP probe first: Ray itself would retry for a minute).
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    common = dict(log_to_driver=False, configure_logging=True, logging_level="ERROR")
    if address:
        hostport = _split_address(address)
        extra = {}
        if hostport:
            try:
                socket.create_connection(hostport, timeout=5).close()
            except OSError as e:
                raise ConfigError(f"Ray address {address} is unreachable ({e.strerror or e})") from None
            if not address.startswith("ray://"):
                check_ray_token(address)
            if hostport[0].startswith("127.") and not address.startswith("ray://"):
                extra["_node_ip_address"] = hostport[0]  # a loopback cluster: this driver is on its head
        try:
            ray.init(address=address, **common, **extra)
        except Exception as e:  # Ray raises ConnectionError, RuntimeError, ... for a bad address
            raise ConfigError(f"Ray address {address} is unreachable ({str(e).strip().splitlines()[0]})") from None
        return f"the Ray cluster at {address}"
    # address="local": a new instance, even when `ray start` left a cluster running on this machine
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
             _node_ip_address=LOCAL_NODE_IP, **common)
    return "the local Ray instance"


def check_ray_token(address: str) -> None:
    """A cluster with token authentication (``RAY_AUTH_MODE=token`` on its nodes) refuses a driver
    without its token: say so in one line at once (``ray.init`` would retry for 20 s and then report
    only "Failed to connect"). The token comes from ``RAY_AUTH_MODE=token`` plus ``RAY_AUTH_TOKEN``
    or ``RAY_AUTH_TOKEN_PATH`` (docs/deployment.md). One GCS request; any other failure is left to
    ``ray.init``."""
    import threading

    import ray._raylet
    from ray.exceptions import AuthenticationError

    refused = []

    def probe() -> None:
        try:
            ray._raylet.GcsClient(address=address)
        except AuthenticationError:
            refused.append(True)
        except Exception:  # not an authentication problem: ray.init reports it
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout=10)  # a GCS answers in milliseconds; whatever else listens there is ray.init's to report
    if refused:
        mode = os.environ.get("RAY_AUTH_MODE", "")
        if mode != "token":
            why = "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token"
        elif os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
            why = "the token in RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH is not the cluster's"
        else:
            why = "RAY_AUTH_MODE=token but no token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
        raise ConfigError(f"Ray at {address} refused this driver (token authentication): {why}")


def _alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def check_resources(sweep: Sweep, where: str) -> dict[str, float]:
    """The resources of one trial, or a one-line error when no node of the cluster can run one."""
    import ray

    total = ray.cluster_resources()
    resources = sweep.trial_resources(total.get("GPU", 0) > 0)  # gpu: auto is decided by the cluster
    if resources["gpu"] > 0 and total.get("GPU", 0) == 0:
        raise ConfigError(f"sweep {sweep.name} asks for {resources['gpu']:g} GPU per trial but {where} has no GPU "
                          f"(set resources.gpu: auto or 0 in {sweep.path}, or add GPU nodes)")
    nodes = _alive_nodes()
    if not any(n["Resources"].get("CPU", 0) >= resources["cpu"] and n["Resources"].get("GPU", 0) >= resources["gpu"]
               for n in nodes):
        biggest = max(nodes, key=lambda n: (n["Resources"].get("GPU", 0), n["Resources"].get("CPU", 0)))["Resources"]
        raise ConfigError(f"sweep {sweep.name} needs cpu={resources['cpu']:g} gpu={resources['gpu']:g} per trial but "
                          f"no node of {where} has that (largest: cpu={biggest.get('CPU', 0):g} "
                          f"gpu={biggest.get('GPU', 0):g}); lower resources in {sweep.path}")
    return resources


def _probe_file(path: str, token: str) -> bool:
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def check_shared_storage(storage: str, where: str) -> None:
    """On a multi-node cluster, a local storage path must be one every node sees (NFS, ...).

    Writes a probe file, asks a task pinned to each node to read it, removes it again.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = _alive_nodes()
    if len(nodes) < 2 or is_uri(storage):
        return
    root = Path(storage)
    created = []
    for p in [root, *root.parents]:
        if p.exists():
            break
        created.append(p)
    token = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
    probe = root / f".metaocl-probe-{token}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_text(token)
    except OSError as e:
        raise ConfigError(f"--storage {storage}: cannot write there ({e.strerror})") from None
    try:
        task = ray.remote(num_cpus=0)(_probe_file)
        refs = {n["NodeManagerAddress"]: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(str(probe), token) for n in nodes}
        try:
            seen = dict(zip(refs, ray.get(list(refs.values()), timeout=RAY_WAIT_S)))
        except ray.exceptions.GetTimeoutError:
            raise ConfigError(f"storage check: the nodes of {where} did not answer within {RAY_WAIT_S} s") from None
    finally:
        probe.unlink(missing_ok=True)
        for p in created:
            try:
                p.rmdir()
            except OSError:
                pass
    blind = sorted(ip for ip, ok in seen.items() if not ok)
    if blind:
        raise ConfigError(f"--storage {storage} is local to this machine: node{'s' if len(blind) > 1 else ''} "
                          f"{', '.join(blind)} of {where} cannot see it; pass --storage (or METAOCL_RESULTS) on a "
                          "filesystem every node mounts (NFS) or an object store URI (s3://..., gs://...)")


def check_devices(sweep: Sweep, trials: dict[str, Trial], resources: dict[str, float]) -> None:
    """A trial with ``device: cuda`` and no GPU in its resources would fail in every attempt."""
    if resources.get("gpu", 0) > 0:
        return
    for tid, t in trials.items():
        device = str(getattr(t.config, "device", "auto"))
        if device.startswith("cuda"):
            raise ConfigError(f"{sweep.path}: trial {tid}: device: {device!r} but each trial gets gpu=0 "
                              f"(set resources.gpu in the sweep file, or device: auto)")


def _problems(kind_name: str, configs: list[dict]) -> list[str]:
    """Every distinct problem :meth:`ExperimentKind.required_inputs` finds over ``configs``."""
    kind = kind_of(kind_name)
    found: list[str] = []
    for data in configs:
        for problem in kind.required_inputs(from_dict(kind.config_cls, data, "trial")):
            if problem not in found:
                found.append(problem)
    return found


def check_inputs(sweep: Sweep, trials: dict[str, Trial], local: bool) -> None:
    """Every input the trials need must be there where they run (on a cluster: asked of a node)."""
    import ray

    seen, configs = set(), []
    for t in trials.values():  # trials that differ only in the seed need the same inputs
        d = t.config_dict()
        key = repr(sorted((k, repr(v)) for k, v in d.items() if k != "seed"))
        if key not in seen:
            seen.add(key)
            configs.append(d)
    if local:
        missing = _problems(sweep.kind, configs)
    else:
        try:
            missing = ray.get(ray.remote(num_cpus=0)(_problems).remote(sweep.kind, configs), timeout=RAY_WAIT_S)
        except ray.exceptions.GetTimeoutError:
            raise ConfigError(f"input check: the cluster did not answer within {RAY_WAIT_S} s") from None
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"{sweep.path}: {missing[0]}{more}")
