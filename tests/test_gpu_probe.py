"""No silent CPU: a trial that Ray gave GPUs it cannot use fails at once, and the sweep's GPU probe
stops before anything is written.

Ray's *logical* GPUs (``ray start --num-gpus 2`` on this CPU machine) stand in for GPUs behind a
broken driver: Ray hands them out, CUDA cannot use them, exactly as on a host whose NVIDIA driver is
older than the image's CUDA. ``METAOCL_SIMULATE_GPUS=1`` is the documented override that lets the
CPU simulation run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from processes import WAIT_S, free_port, ray_env, start, stop, tcp_open, wait_for

from metaocl import runtime

HEAD_IP = "127.0.0.2"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens without CUDA")


@no_cuda
def test_gpu_problem_names_node_driver_and_cuda(monkeypatch):
    monkeypatch.delenv(runtime.SIMULATE_GPUS_ENV, raising=False)
    line = runtime.gpu_problem(1)
    assert line is not None and "\n" not in line
    assert line.startswith(f"node {runtime.node_name()}: Ray gave this trial 1 GPU but PyTorch sees 0 CUDA devices")
    driver = runtime.nvidia_driver_version()
    assert f"NVIDIA driver: {driver}" in line if driver else "NVIDIA driver: NVML did not answer" in line
    assert f"built for CUDA {torch.version.cuda or 'none (a CPU build)'}" in line
    assert runtime.SIMULATE_GPUS_ENV in line  # says how to simulate on purpose
    assert runtime.gpu_problem(0) is None  # no GPU given: nothing to check
    assert runtime.gpu_problem(1, simulate=True) is None
    monkeypatch.setenv(runtime.SIMULATE_GPUS_ENV, "1")
    assert runtime.gpu_problem(2) is None


def test_trial_resources_gpu_auto_takes_the_planned_share():
    from metaocl.config import load_sweep

    sweep = load_sweep("set_inclusion")
    assert sweep.trial_resources(False, 0.05)["gpu"] == 0.0
    assert sweep.trial_resources(True)["gpu"] == 1.0
    assert sweep.trial_resources(True, 0.05)["gpu"] == 0.05


# ------------------------------------------------------------------------------------------------
# A one-node Ray cluster with two logical GPUs
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("gpucluster")
    port = free_port(HEAD_IP)
    temp_dir = tempfile.mkdtemp(prefix="mocl-gpu-", dir="/tmp")
    env = ray_env()
    env.pop(runtime.SIMULATE_GPUS_ENV, None)  # the workers' own environment does not simulate
    head = start(["ray", "start", "--head", f"--node-ip-address={HEAD_IP}", f"--port={port}", "--num-cpus=2",
                  "--num-gpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
                  "--block"], base / "head.log", env=env)
    try:
        wait_for(lambda: tcp_open(HEAD_IP, port), "the Ray head")
        yield {"address": f"{HEAD_IP}:{port}"}
    finally:
        stop(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _sweep_file(folder: Path, name: str, resources: str = "{cpu: 1, gpu: auto}") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        description: "tiny set inclusion on logical GPUs"
        kind: set_inclusion
        base:
          data: {{n_variables: 100}}
          model: {{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}}
          train: {{stage1_epochs: 1, stage2_epochs: 1, batch_size: 128}}
        seeds: 2
        resources: {resources}
        """))
    return path


def _driver(args: list[str], cwd: Path, **env: str) -> tuple[int, str, str]:
    base = ray_env(**env)
    if runtime.SIMULATE_GPUS_ENV not in env:
        base.pop(runtime.SIMULATE_GPUS_ENV, None)
    out = subprocess.run([sys.executable, "-m", "metaocl.cli", "sweep", *args], cwd=cwd, env=base,
                         capture_output=True, text=True, timeout=WAIT_S + 400)
    return out.returncode, out.stdout, out.stderr


@pytest.mark.slow
@no_cuda
def test_logical_gpus_without_the_override_exit_2_before_anything_is_written(gpu_cluster, tmp_path):
    path = _sweep_file(tmp_path, "logical")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = _driver([str(path), "--address", gpu_cluster["address"]], tmp_path)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("metaocl: error: node ") and "Ray gave this trial 1 GPU but PyTorch sees 0 CUDA" in err
    assert f"CUDA {torch.version.cuda or 'none (a CPU build)'}" in err and "NVIDIA driver: " in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no mlflow.db, no metaocl-results


@pytest.mark.slow
def test_logical_gpus_with_the_override_run_on_the_cpu_and_share_a_gpu(gpu_cluster, tmp_path):
    path = _sweep_file(tmp_path, "simulated")
    code, out, err = _driver([str(path), "--address", gpu_cluster["address"]], tmp_path,
                             METAOCL_SIMULATE_GPUS="1", METAOCL_GPU_MEMORY_GB="80")
    assert code == 0, (out, err)
    assert "plan on 2 x GPU, 80 GB each (the Ray cluster at" in out and "simulated GPUs" in out, out
    share = float(out.split("each trial gets gpu=")[1].split()[0])
    assert 0 < share <= 0.5, out  # tiny trials: several per (stated 80 GB) GPU
    assert "trials: 2 done, 0 failed, 0 retried" in out
    attempts = [json.loads(p.read_text()) for p in tmp_path.glob("metaocl-results/*/metaocl/attempts/*.json")]
    assert len(attempts) == 2


@pytest.mark.slow
def test_gpu_auto_gives_each_configuration_and_its_stage1_unit_their_own_share(gpu_cluster, tmp_path):
    """Two batch sizes of a tiny two-stage LM (stage 1 as units) on 2 logical GPUs stated as 80 GB:
    the plan gives batch 8 0.0144 of a GPU (69 per GPU) and batch 512 0.0158 (63 per GPU), and Ray
    gives each stage-1 unit and its trial exactly that: the share each attempt read from its Ray
    runtime context, in the sweep's ledger."""
    path = tmp_path / "shares.yaml"
    path.write_text(textwrap.dedent("""\
        name: shares
        description: "tiny two-stage LM on logical GPUs, two batch sizes"
        kind: lm
        base:
          data: {source: cvdb_sample, n_entities: 20, stages: two_stage, entity_attribution: false}
          model: {name: tiny-gpt-neox}
          train: {epochs: [1, 1], lr: 0.003, stage1_cache: shares_stage1}
        grid:
          train.batch_size: [8, 512]
        seeds: 1
        resources: {cpu: 1, gpu: auto}
        max_failures: 0
        """))
    code, out, err = _driver([str(path), "--address", gpu_cluster["address"]], tmp_path,
                             METAOCL_SIMULATE_GPUS="1", METAOCL_GPU_MEMORY_GB="80")
    assert code == 0, (out, err)
    assert "0.0144 (69/GPU)" in out and "0.0158 (63/GPU)" in out, out
    assert "packing: each trial gets its configuration's gpu share (auto), 0.0144 to 0.0158" in out, out
    assert "trials: 2 done, 0 failed, 0 retried" in out
    attempts = [json.loads(p.read_text()) for p in tmp_path.glob("metaocl-results/*/metaocl/attempts/*.json")]
    got = {a["trial_id"]: a["gpu"] for a in attempts}
    assert got == {"p00_stage1": 0.0144, "p00_s0": 0.0144, "p01_stage1": 0.0158, "p01_s0": 0.0158}, got


@pytest.mark.slow
@no_cuda
def test_dry_run_on_a_cluster_plans_on_its_gpus(gpu_cluster, tmp_path):
    path = _sweep_file(tmp_path, "planned")
    code, out, err = _driver([str(path), "--dry-run", "--address", gpu_cluster["address"], "--gpu-type", "H100"],
                             tmp_path, METAOCL_SIMULATE_GPUS="1")
    assert code == 0, (out, err)
    assert "plan on 2 x H100, 80 GB each (the Ray cluster at" in out and "simulated GPUs, stated: H100" in out, out
    assert list(tmp_path.iterdir()) == [path]  # a dry run writes nothing
    code, out, err = _driver([str(path), "--dry-run", "--address", gpu_cluster["address"]], tmp_path)
    assert code == 2 and "Ray gave this trial 1 GPU but PyTorch sees 0" in err  # the probe's line, as a sweep


RUNNER = """
import json, sys
import ray
from ray import tune
from metaocl.config import load_sweep
from metaocl.sweep.shutdown import exit_process
from metaocl.sweep.worker import CONFIG_ERROR_KEY, trainable

address, path, storage = sys.argv[1:4]
ray.init(address=address, _node_ip_address="127.0.0.2", log_to_driver=False, logging_level="ERROR")
sweep = load_sweep(path)
trial = sweep.trials()[0]
spec = {"trial_id": trial.trial_id, "kind": sweep.kind, "cpus": 1, "exp_dir": storage + "/runner",
        "simulate_gpus": False, "config": trial.config_dict()}
tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": 1, "gpu": 1}), param_space={"trial": spec},
                   run_config=tune.RunConfig(name="runner", storage_path=storage, verbose=0,
                                             failure_config=tune.FailureConfig(max_failures=2)))
result = tuner.fit()[0]
print(json.dumps({"line": (result.metrics or {}).get(CONFIG_ERROR_KEY), "error": str(result.error or "")}))
ray.shutdown()
exit_process(0)
"""


@pytest.mark.slow
@no_cuda
def test_trial_given_a_gpu_it_cannot_use_fails_once_not_retried(gpu_cluster, tmp_path):
    """The runner-side check, without the driver's probe: Tune gives the trial a (logical) GPU, the
    trial fails at once with the line, and Ray does not retry it (max_failures 2)."""
    path = _sweep_file(tmp_path, "runner")
    env = ray_env()
    env.pop(runtime.SIMULATE_GPUS_ENV, None)
    out = subprocess.run([sys.executable, "-c", RUNNER, gpu_cluster["address"], str(path), str(tmp_path / "st")],
                         env=env, capture_output=True, text=True, timeout=WAIT_S + 300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["error"] == ""  # no exception: the trial reported its line and returned
    assert "Ray gave this trial 1 GPU but PyTorch sees 0 CUDA devices" in result["line"]
    assert "NVIDIA driver: " in result["line"] and "\n" not in result["line"]
    attempts = list((tmp_path / "st" / "runner" / "metaocl" / "attempts").glob("*.json"))
    assert len(attempts) == 1  # tried once


ASK_EACH_NODE = """
import json, sys
import ray
from metaocl.sweep import preflight
from metaocl.sweep.shutdown import exit_process

ray.init(address=sys.argv[1], _node_ip_address="127.0.0.2", log_to_driver=False, logging_level="ERROR")
# the live node, and one that has left the cluster (a node id Ray no longer knows: a killed node's)
nodes = preflight._alive_nodes() + [{"NodeManagerAddress": "127.0.0.9", "NodeID": "ab" * 28}]
task = ray.remote(num_cpus=0)(preflight._probe_file)
print(json.dumps(preflight._ask_each_node(task, nodes, (sys.argv[2], "token"), "storage check", "no answer")))
ray.shutdown()
exit_process(0)
"""


@pytest.mark.slow
def test_a_node_that_left_the_cluster_during_a_preflight_check_is_skipped_in_one_line(gpu_cluster, tmp_path):
    """Found by bench/chaos.py: a raylet killed just before a resumed driver's storage check left its
    node in the list, and the pinned probe raised TaskUnschedulableError out of the driver."""
    probe = tmp_path / "probe"
    probe.write_text("token")
    out = subprocess.run([sys.executable, "-c", ASK_EACH_NODE, gpu_cluster["address"], str(probe)], env=ray_env(),
                         capture_output=True, text=True, timeout=WAIT_S + 200)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {HEAD_IP: True}
    assert "storage check: node 127.0.0.9 left the cluster while it was asked; skipped (TaskUnschedulableError)" \
        in out.stderr
    assert "Traceback" not in out.stderr
