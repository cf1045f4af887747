"""Sweeps on a real two-node Ray cluster on loopback, under faults, and into a real MLflow server.

One cluster serves the whole module: a head on 127.0.0.2 and a second node on 127.0.0.3, one CPU
each, no GPU. Where the machine allows (root, ``unshare``), the second node runs in its own mount
namespace with a tmpfs over ``NODELOCAL``, so a storage path under it is truly node-local: the driver
sees one folder, the second node another. Every process a test starts is in its own session and is
killed by process group in a finalizer; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from processes import free_port, ray_env, start, stop, tcp_open, wait_for, wait_ray_nodes
from processes import tiny_sweep_file as sweep_file

pytestmark = pytest.mark.slow

HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


def can_unshare() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    nodelocal = base / "nodelocal"
    nodelocal.mkdir()
    port = free_port(HEAD_IP)
    address = f"{HEAD_IP}:{port}"
    # A temp dir of its own: `ray start` records the cluster in TEMP/ray_current_cluster, where a plain
    # ray.init() elsewhere on this machine would find it (short path: Unix socket names are limited).
    temp_dir = tempfile.mkdtemp(prefix="mocl-ray-", dir="/tmp")
    common = ["--num-cpus=1", "--num-gpus=0", "--disable-usage-stats", f"--temp-dir={temp_dir}", "--block"]
    procs = []
    try:
        procs.append(start(["ray", "start", "--head", f"--node-ip-address={HEAD_IP}", f"--port={port}",
                            "--include-dashboard=false", *common], base / "head.log"))
        wait_for(lambda: tcp_open(HEAD_IP, port), "the Ray head")
        worker = ["ray", "start", f"--address={address}", f"--node-ip-address={WORKER_IP}", *common]
        isolated = can_unshare()
        if isolated:  # the second node sees its own (empty) NODELOCAL: a node-local folder for real
            worker = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                      f"mount -t tmpfs tmpfs {nodelocal} && exec " + " ".join(worker)]
        procs.append(start(worker, base / "worker.log"))
        try:
            wait_ray_nodes(address, 2, HEAD_IP)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{(base / 'worker.log').read_text()[-3000:]}") from None
        yield {"address": address, "base": base, "nodelocal": nodelocal if isolated else None}
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def driver(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    return start([sys.executable, "-m", "metaocl.cli", "sweep", *args], log, cwd=cwd)


def run_driver(args: list[str], cwd: Path, timeout: float = 400) -> tuple[int, str]:
    log = cwd / f"driver-{time.time_ns()}.log"
    proc = driver(args, cwd, log)
    try:
        code = proc.wait(timeout=timeout)
    finally:
        stop(proc)
    return code, log.read_text()


def mlflow_runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    parents = [r for r in runs if r.data.tags.get("metaocl.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("metaocl.role") == "trial"]
    return client, parents, children


def attempts(storage: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(storage.glob("*/metaocl/attempts/*.json"))]


def finished_markers(storage: Path) -> set[str]:
    return {p.name for p in storage.glob("*/metaocl/finished/*")}


def steps(client, run_id: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, "acc/qd1consis")]


# ----------------------------------------------------------------------------------------------------
def test_two_node_sweep_tracks_into_mlflow_server(cluster, tmp_path):
    art = tmp_path / "artifacts"
    port = free_port()
    env = dict(ray_env(), MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    server = start(["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                    "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(art)],
                   tmp_path / "mlflow.log", env=env)
    try:
        uri = f"http://127.0.0.1:{port}"

        def healthy():
            try:
                return urllib.request.urlopen(uri + "/health", timeout=2).status == 200
            except OSError:
                return False

        wait_for(healthy, "the MLflow server", every=1)
        path = sweep_file(tmp_path, "twonode", seeds=2)
        code, out = run_driver([str(path), "--address", cluster["address"], "--tracking-uri", uri,
                                "--storage", str(tmp_path / "results")], tmp_path)
        assert code == 0, out
        assert "trials: 2 done, 0 failed, 0 retried" in out
        assert {a["node_ip"] for a in attempts(tmp_path / "results")} == {HEAD_IP, WORKER_IP}  # both nodes ran one
        assert not (tmp_path / "mlflow.db").exists()  # nothing went to the embedded store

        client, parents, children = mlflow_runs(uri, "metaocl/twonode")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert sorted(r.data.tags["metaocl.trial_id"] for r in children) == ["s0", "s1"]
        for r in children:
            assert r.info.status == "FINISHED"
            assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
            assert steps(client, r.info.run_id) == [1, 2, 3]
            assert "config.yaml" in [a.path for a in client.list_artifacts(r.info.run_id)]
    finally:
        stop(server)


def test_bad_cluster_inputs_stop_before_anything_is_written(cluster, tmp_path, capsys, monkeypatch):
    from metaocl.cli import main

    monkeypatch.chdir(tmp_path)
    for var, value in ray_env().items():
        if var.startswith("RAY_"):
            monkeypatch.setenv(var, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    gpu = sweep_file(tmp_path, "wantsgpu", resources="{cpu: 1, gpu: 1}")
    big = sweep_file(tmp_path, "wantscpus", resources="{cpu: 4, gpu: 0}")
    cuda = sweep_file(tmp_path, "wantscuda", grid="{device: [cpu, cuda]}")
    cases = [([str(gpu)], "asks for 1 GPU per trial but the Ray cluster at"),
             ([str(big)], "needs cpu=4 gpu=0 per trial but no node of the Ray cluster"),
             ([str(cuda)], "trial p01_s0: device: 'cuda' but each trial gets gpu=0")]
    if cluster["nodelocal"] is not None:
        ok = sweep_file(tmp_path, "nodelocal")
        cases.append(([str(ok), "--storage", str(cluster["nodelocal"] / "results")],
                      f"is local to this machine: node {WORKER_IP} of the Ray cluster"))
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, expected in cases:
        code = main(["sweep", *args, "--address", cluster["address"]])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no mlflow.db, no metaocl-results
    if cluster["nodelocal"] is not None:
        assert list(cluster["nodelocal"].iterdir()) == []  # the probe file is gone again
    else:
        pytest.skip("node-local storage needs unshare (root): checked resources only")


def test_failing_trial_is_retried_then_failed_and_killed_worker_is_retried(cluster, tmp_path):
    """Grid device: cpu trains; device: meta raises a RuntimeError in every attempt (torch cannot train
    on the meta device; not a user-input error the pre-checks know). The cpu trial's worker is killed
    after its first epoch checkpoint: the retry continues from that checkpoint."""
    path = sweep_file(tmp_path, "faulty", grid="{device: [cpu, meta]}", seeds=1, epochs=(30, 1), max_failures=1)
    storage = tmp_path / "results"
    log = tmp_path / "driver.log"
    proc = driver([str(path), "--address", cluster["address"], "--storage", str(storage)], tmp_path, log)
    try:
        # a checkpoint exists once its record names it (what a retry restores)
        wait_for(lambda: list(storage.glob("*/metaocl/checkpoints/p00_s0/latest.json")),
                 "a checkpoint of trial p00_s0", every=0.05)
        first = [a for a in attempts(storage) if a["trial_id"] == "p00_s0"]
        os.kill(first[0]["pid"], signal.SIGKILL)  # the trial's Ray worker, mid-run
        code = proc.wait(timeout=400)
    finally:
        stop(proc)
    out = log.read_text()
    assert code == 1, out
    table = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("p00_s0 ", "p01_s0 "))}
    assert table["p00_s0"][1:4] == ["done", "1", "31"], out
    assert table["p01_s0"][1:3] == ["FAILED", "1"] and "cannot be called on meta tensors" in out, out
    assert "trials: 1 done, 1 failed, 2 retried" in out
    tries = [a["trial_id"] for a in attempts(storage)]
    assert tries.count("p00_s0") == 2 and tries.count("p01_s0") == 2  # max_failures 1: two attempts each
    retry = sorted((a for a in attempts(storage) if a["trial_id"] == "p00_s0"), key=lambda a: a["time"])[1]
    assert retry["from_checkpoint"] is True

    client, parents, children = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "metaocl/faulty")
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    runs = {r.data.tags["metaocl.trial_id"]: r for r in children}
    assert sorted(runs) == ["p00_s0", "p01_s0"]
    ok, bad = runs["p00_s0"], runs["p01_s0"]
    assert ok.info.status == "FINISHED" and ok.data.tags["metaocl.retries"] == "1"
    assert steps(client, ok.info.run_id) == list(range(1, 32))  # every epoch logged once
    assert bad.info.status == "FAILED"  # never FINISHED
    assert "meta tensors" in bad.data.tags["metaocl.error"] and "\x1b[" not in bad.data.tags["metaocl.error"]
    assert "error.txt" in [a.path for a in client.list_artifacts(bad.info.run_id)]


def test_ctrl_c_then_killed_driver_then_resume(cluster, tmp_path):
    """Ctrl-C prints how to resume; a driver killed with SIGKILL is resumed: nothing runs twice or is duplicated."""
    path = sweep_file(tmp_path, "resumable", seeds=3, epochs=(2, 1))
    storage = tmp_path / "results"
    args = [str(path), "--address", cluster["address"], "--storage", str(storage)]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    # 1. Ctrl-C while the first trials run: clean stop, exit 130, the resume command on stderr.
    log = tmp_path / "driver-1.log"
    proc = driver(args, tmp_path, log)
    try:
        wait_for(lambda: attempts(storage), "a first trial to start", every=0.1)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=180)
    finally:
        stop(proc)
    out = log.read_text()
    assert code == 130, out
    assert f"metaocl sweep {path} --resume --storage {storage} --address {cluster['address']}" in out
    client, parents, children = mlflow_runs(uri, "metaocl/resumable")
    assert len(parents) == 1 and parents[0].info.status == "KILLED"

    # 2. Resume, and kill -9 the driver as soon as one trial has finished.
    log = tmp_path / "driver-2.log"
    proc = driver(args + ["--resume"], tmp_path, log)
    try:
        wait_for(lambda: finished_markers(storage) or proc.poll() is not None, "a trial to finish", every=0.05)
        proc.kill()
        proc.wait(timeout=60)
    finally:
        stop(proc)
    done_before_kill = finished_markers(storage)
    assert done_before_kill, log.read_text()
    starts_before = [a["trial_id"] for a in attempts(storage)]

    # 3. Resume again: every trial finishes; finished trials are not trained again; no duplicate runs.
    code, out = run_driver(args + ["--resume"], tmp_path)
    assert code == 0, out
    assert "trials: 3 done, 0 failed" in out
    starts = [a["trial_id"] for a in attempts(storage)]
    for tid in done_before_kill:
        assert starts.count(tid) == starts_before.count(tid), (tid, starts_before, starts)
    client, parents, children = mlflow_runs(uri, "metaocl/resumable")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    tags = parents[0].data.tags  # what a report filters on: one invocation, continued by --resume
    assert tags["metaocl.role"] == "sweep" and tags["metaocl.invocation"] == "sweep"
    assert len(tags["metaocl.fingerprint"]) == 16
    assert sorted(r.data.tags["metaocl.trial_id"] for r in children) == ["s0", "s1", "s2"]  # one run per trial
    for r in children:
        assert r.info.status == "FINISHED"
        assert steps(client, r.info.run_id) == [1, 2, 3]  # each epoch logged exactly once
    assert len(list(storage.iterdir())) == 1  # one Ray experiment, continued twice
    for tid in ("s0", "s1", "s2"):  # also one finished under the killed driver: exactly its last checkpoint
        (folder,) = storage.glob(f"*/metaocl/checkpoints/{tid}")
        names = sorted(p.name for p in folder.iterdir())
        assert len(names) == 2 and names[0].startswith("000001-") and names[1] == "latest.json", (tid, names)
    assert not list(storage.glob("*/*/checkpoint_*"))  # Ray was handed none
