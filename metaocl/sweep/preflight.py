"""Checks before anything is written: the cluster, its resources and storage, every trial's inputs.

Each check raises a one-line :class:`~metaocl.config.ConfigError` (the CLI exits with 2) before the
MLflow parent run or the Ray experiment folder exists:

- :func:`init_ray`: the Ray address answers (a TCP probe first, so a typo costs seconds, not Ray's
  minute of retries), else a local instance bound to loopback;
- :func:`probe_gpus`: every GPU node runs one task that asks for a GPU and checks that CUDA can use
  it (:func:`metaocl.runtime.gpu_problem`); a node where it cannot is one line naming the node, the
  NVIDIA driver and the image's CUDA (``METAOCL_SIMULATE_GPUS=1``: logical GPUs, on purpose). It
  answers the cluster's GPUs and their memory (:class:`metaocl.sweep.plan.Cluster`);
- :func:`check_resources`: one trial's ``resources`` fit on some node; ``gpu: auto`` is the share
  of a GPU the trial's estimated peak memory needs (:mod:`metaocl.sweep.plan`), and a trial no GPU
  of the cluster can hold is refused, naming what would fit;
  (:func:`trial_gpus`: each trial gets its own configuration's share, so small ones pack densely);
- :func:`check_devices`: a trial that asks for ``device: cuda`` gets a GPU;
- :func:`check_shared_storage`: on a multi-node cluster, ``--storage`` is seen by every node;
- :func:`check_inputs`: what each trial needs from outside (data files, model names), through its
  kind's ``required_inputs`` (:class:`~metaocl.experiments.base.ExperimentKind`); on a cluster it is
  asked of every node, where the trials read them (a node that does not see the shared cache is named).
"""

from __future__ import annotations

import os
import platform
import socket
import sys
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


def init_ray(address: str | None, num_cpus: int | None = None, env_vars: dict[str, str] | None = None) -> str:
    """Connect to ``address`` (or ``$RAY_ADDRESS``), else start a local instance bound to loopback.

    Returns a few words saying which cluster this is. An address nobody answers on is a one-line
    ``ConfigError`` within seconds (a TCP probe first: Ray itself would retry for a minute).
    ``env_vars`` (on a cluster): the environment of every task of this driver (the hub offline).
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
            if env_vars:
                extra["runtime_env"] = {"env_vars": dict(env_vars)}
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


def _ask_each_node(task, nodes: list[dict], args: tuple, what: str, timeout_error: str) -> dict[str, object]:
    """``task(*args)`` pinned to each of ``nodes``: node address -> answer. A node that leaves the
    cluster while it is asked (preempted, killed, restarted under a new id) is skipped with one line on
    stderr: it runs no trial, and a node that replaces it registers afresh. No answer from the rest
    within ``RAY_WAIT_S`` is ``ConfigError(timeout_error)``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    refs = {n["NodeManagerAddress"]: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(*args) for n in nodes}
    deadline = time.monotonic() + RAY_WAIT_S
    answers = {}
    for ip, ref in refs.items():
        try:
            answers[ip] = ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError:
            raise ConfigError(timeout_error) from None
        except (ray.exceptions.TaskUnschedulableError, ray.exceptions.NodeDiedError,
                ray.exceptions.WorkerCrashedError) as e:
            print(f"{what}: node {ip} left the cluster while it was asked; skipped ({type(e).__name__})",
                  file=sys.stderr, flush=True)
    return answers


def _gpu_probe(simulate: bool) -> dict:
    """Runs in a Ray task given one GPU: can this process use it, and what is it."""
    import ray

    from metaocl import runtime

    devices = runtime.gpu_inventory()
    return {"node": runtime.node_name(), "problem": runtime.gpu_problem(len(ray.get_gpu_ids()), simulate),
            "devices": devices, "simulated": not devices}


def probe_gpus(sweep: Sweep, where: str, gpu_type: str | None = None):
    """Ask each GPU node of the cluster, once, whether CUDA can use its GPUs (a task pinned to the
    node that asks for one GPU); the first that cannot is a one-line ``ConfigError``. Returns the
    :class:`~metaocl.sweep.plan.Cluster` (GPU count and memory; for logical GPUs, ``gpu_type`` or
    ``$METAOCL_GPU_MEMORY_GB`` states their memory). Nothing is asked when the sweep wants no GPU."""
    import ray

    from metaocl.runtime import simulating_gpus
    from metaocl.sweep.plan import Cluster, stated_cluster

    nodes = [n for n in _alive_nodes() if n["Resources"].get("GPU", 0) > 0]
    cpus = sum(n["Resources"].get("CPU", 0) for n in _alive_nodes())
    if not nodes or sweep.resources.gpu == 0:
        return Cluster(cpus=cpus, source=f"{where}: no GPU" if not nodes else f"{where}; this sweep uses no GPU")
    simulate = simulating_gpus()
    task = ray.remote(num_gpus=1, num_cpus=0)(_gpu_probe)
    answers = list(_ask_each_node(task, nodes, (simulate,), "GPU check",
                                  f"GPU check: the GPU nodes of {where} did not run a one-GPU task within "
                                  f"{RAY_WAIT_S} s (all their GPUs busy?)").values())
    broken = [a["problem"] for a in answers if a["problem"]]
    if broken:
        more = f" (and {len(broken) - 1} more node{'s' if len(broken) > 2 else ''})" if len(broken) > 1 else ""
        raise ConfigError(broken[0] + more)
    gpus = int(sum(n["Resources"]["GPU"] for n in nodes))
    devices = [d for a in answers for d in a["devices"]]
    if devices and not gpu_type:
        return Cluster(gpus=gpus, gpu_name=devices[0][0], gpu_bytes=min(b for _, b in devices),
                       largest_bytes=max(b for _, b in devices), cpus=cpus, source=f"{where}, probed")
    stated = stated_cluster(gpu_type, gpus)
    if stated is not None:
        stated.cpus = cpus
        stated.source = f"{where}, {'simulated GPUs, ' if not devices else ''}{stated.source}"
        return stated
    return Cluster(gpus=gpus, cpus=cpus, source=f"{where}, simulated GPUs: memory unknown (--gpu-type TYPE "
                   "or METAOCL_GPU_MEMORY_GB states it)")


def check_resources(sweep: Sweep, where: str, plan=None) -> dict[str, float]:
    """The resources of one trial, or a one-line error when no node of the cluster can run one.

    With ``plan`` (:func:`metaocl.sweep.plan.plan_for` on the probed cluster), ``gpu: auto`` is the
    largest GPU share a trial of the sweep needs (each trial then gets its own: :func:`trial_gpus`),
    and a trial no GPU can hold is refused."""
    import ray

    total = ray.cluster_resources()
    auto = plan.gpu_share(0) if plan is not None and plan.cluster.gpus else None
    resources = sweep.trial_resources(total.get("GPU", 0) > 0, auto)  # gpu: auto is decided by the cluster
    if resources["gpu"] > 0 and total.get("GPU", 0) == 0:
        raise ConfigError(f"sweep {sweep.name} asks for {resources['gpu']:g} GPU per trial but {where} has no GPU "
                          f"(set resources.gpu: auto or 0 in {sweep.path}, or add GPU nodes)")
    if resources["gpu"] > 0 and plan is not None:
        from metaocl.sweep.plan import refusal

        line = refusal(plan)
        if line:
            raise ConfigError(line)
    nodes = _alive_nodes()
    if not any(n["Resources"].get("CPU", 0) >= resources["cpu"] and n["Resources"].get("GPU", 0) >= resources["gpu"]
               for n in nodes):
        biggest = max(nodes, key=lambda n: (n["Resources"].get("GPU", 0), n["Resources"].get("CPU", 0)))["Resources"]
        raise ConfigError(f"sweep {sweep.name} needs cpu={resources['cpu']:g} gpu={resources['gpu']:g} per trial but "
                          f"no node of {where} has that (largest: cpu={biggest.get('CPU', 0):g} "
                          f"gpu={biggest.get('GPU', 0):g}); lower resources in {sweep.path}")
    return resources


def trial_gpus(sweep: Sweep, trial_ids, resources: dict[str, float], plan=None) -> dict[str, float]:
    """trial id -> the GPU share Ray gives it. ``gpu: auto`` on GPUs with a plan: each trial its own
    configuration's share (:meth:`metaocl.sweep.plan.Plan.trial_shares`; :func:`check_resources` has
    checked that the largest fits a node); otherwise ``resources["gpu"]`` for every trial."""
    shares = {}
    if sweep.resources.gpu == "auto" and resources["gpu"] > 0 and plan is not None and plan.cluster.gpus:
        shares = plan.trial_shares(0)
    return {tid: shares.get(tid) or resources["gpu"] for tid in trial_ids}


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
        seen = _ask_each_node(ray.remote(num_cpus=0)(_probe_file), nodes, (str(probe), token), "storage check",
                              f"storage check: the nodes of {where} did not answer within {RAY_WAIT_S} s")
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
        answers = _ask_each_node(ray.remote(num_cpus=0)(_problems), _alive_nodes(), (sweep.kind, configs),
                                 "input check", f"input check: the cluster did not answer within {RAY_WAIT_S} s")
        missing = []
        for ip, problems in answers.items():
            missing += [p if len(answers) == 1 else f"node {ip}: {p}" for p in problems]
    if missing:
        raise ConfigError(sweep.problem_text(missing))  # names the --set that gave a bad value
