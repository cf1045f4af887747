"""The compose cluster of docker/compose.yaml (+ compose.cpu.yaml), run for real (marked `docker`):
sweeps on its Ray nodes, a worker killed mid-sweep, authentication, MLflow on PostgreSQL with
artifacts in S3, Ray trial state in S3 (docs/deployment.md).

Uses the session's image (tests/conftest.py `image`) and builds the PostgreSQL image
(docker/postgres) FROM `$METAOCL_BASE_IMAGE` or the local base. One stack for the whole module (it
is the costly part: started once, `down` / `up` once), its own project name and loopback ports;
smoke sizes with a tiny --set. Each test reads only its own sweep's runs.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from processes import free_port, sh, wait_for

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
TINY = "--smoke --set data.n_variables=60 --set train.stage1_epochs=1"
EXPERIMENT = "metaocl/quickstart-smoke"


def http(url: str, body: dict | None = None, auth: tuple[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            text = r.read().decode()
            return r.status, json.loads(text) if text.startswith("{") else {}
    except urllib.error.HTTPError as e:
        return e.code, {}


class Stack:
    def __init__(self, project: str, image: str):
        self.project = project
        self.mlflow_port, self.dashboard_port = free_port(), free_port()
        self.env = {**os.environ, "MLFLOW_PORT": str(self.mlflow_port), "RAY_DASHBOARD_PORT": str(self.dashboard_port),
                    "METAOCL_IMAGE": image, "METAOCL_NODE_CPUS": "1", "METAOCL_SHM_SIZE": "1gb"}
        self.base = ["docker-compose", "-p", project, "-f", str(ROOT / "docker" / "compose.yaml"),
                     "-f", str(ROOT / "docker" / "compose.cpu.yaml")]

    def __call__(self, *args: str, check: bool = True, timeout: float = 600, env: dict | None = None):
        return sh(*self.base, *args, check=check, timeout=timeout, env={**self.env, **(env or {})})

    def container(self, service: str) -> str:
        return self("ps", "-q", service).stdout.strip()

    def secret(self, name: str) -> str:
        return self("exec", "-T", "mlflow", "cat", f"/secrets/{name}").stdout.strip()

    @property
    def auth(self) -> tuple[str, str]:
        return "admin", self.secret("mlflow-admin-password")

    def api(self, path: str, body: dict | None = None) -> dict:
        code, data = http(f"http://127.0.0.1:{self.mlflow_port}{path}", body, self.auth)
        assert code == 200, (path, code)
        return data

    def runs(self, experiment: str = EXPERIMENT) -> list[dict]:
        code, found = http(f"http://127.0.0.1:{self.mlflow_port}/api/2.0/mlflow/experiments/get-by-name"
                           f"?experiment_name={experiment}", auth=self.auth)
        if code != 200:
            return []
        body = {"experiment_ids": [found["experiment"]["experiment_id"]], "max_results": 1000}
        return self.api("/api/2.0/mlflow/runs/search", body).get("runs", [])

    def finished_sweep(self, experiment: str, trials: int) -> list[dict]:
        """One FINISHED sweep run and ``trials`` trials, each with FINISHED run(s) with metrics under it;
        returns the runs."""
        runs = self.runs(experiment)
        tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
        sweeps = [r for r, t in zip(runs, tags) if t.get("metaocl.role") == "sweep"]
        trial_runs = [(r, t) for r, t in zip(runs, tags) if t.get("metaocl.role") == "trial"]
        assert [s["info"]["status"] for s in sweeps] == ["FINISHED"], sweeps
        assert len({t["metaocl.trial_id"] for _, t in trial_runs}) == trials, trial_runs
        assert {t["metaocl.trial_id"] for r, t in trial_runs if r["info"]["status"] == "FINISHED"} == {
            t["metaocl.trial_id"] for _, t in trial_runs}, trial_runs
        for r, t in trial_runs:
            if r["info"]["status"] == "FINISHED":
                assert r["data"].get("metrics") and t["mlflow.parentRunId"] == sweeps[0]["info"]["run_id"], r
        return runs

    def history(self, run_id: str, key: str) -> list[int]:
        found = self.api(f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key={key}")
        return sorted(m["step"] for m in found.get("metrics", []))

    def artifacts(self, run_id: str) -> list[str]:
        return [f["path"] for f in self.api(f"/api/2.0/mlflow/artifacts/list?run_id={run_id}").get("files", [])]

    def store(self, prefix: str) -> list[str]:
        """Object keys under s3://metaocl/PREFIX, listed from inside the stack with its keys."""
        script = ("import sys; from pyarrow import fs\n"
                  "f, p = fs.FileSystem.from_uri('s3://metaocl/' + sys.argv[1])\n"
                  "print('\\n'.join(i.path for i in f.get_file_info(fs.FileSelector(p, recursive=True, allow_not_found=True))))\n")
        out = self("exec", "-T", "ray-head", "python", "-c", script, prefix, check=False).stdout
        return [line for line in out.splitlines() if line.strip()]

    def up(self) -> None:
        self("up", "-d", "--no-build", "mlflow", "ray-head", "ray-cpu-worker", timeout=900, check=False)

        def ready():
            self("up", "-d", "--no-build", "ray-cpu-worker", check=False, timeout=300)  # once the head is healthy
            try:
                http(f"http://127.0.0.1:{self.mlflow_port}/health")
                self.api("/api/2.0/mlflow/experiments/search?max_results=1")
            except (OSError, AssertionError):
                return False
            status = self("exec", "-T", "ray-head", "ray", "status", check=False, timeout=60).stdout
            return status.count("node_") >= 2
        wait_for(ready, "mlflow and a two-node Ray cluster with authentication", 900, every=5)

    def sweep(self, args: str, name: str = "", detach: bool = True, sweep: str = "quickstart"):
        env = {"METAOCL_SWEEP": sweep, "METAOCL_SWEEP_ARGS": args}
        return self("run", "-d", "--name", name, "sweep", env=env) if detach else self("run", "--rm", "sweep", env=env)


def attempts(stack: Stack, sweep_name: str, with_finished: bool = False, skip: set[str] = frozenset()):
    """Every attempt of every trial of `sweep_name` (the sweep ledger's attempts/*.json: trial,
    node_ip, from_checkpoint), read from the S3 store with the stack's keys; ``with_finished``: also
    the trials finished (the ledger's finished/ markers), read at the same moment; sweep folders in
    ``skip`` (earlier sweeps of the same name) are left out."""
    script = ("import fnmatch, json, sys; from pyarrow import fs\n"
              "f, root = fs.FileSystem.from_uri('s3://metaocl/ray-results')\n"
              "done = []; skip = set(sys.argv[2:])\n"
              "for i in f.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True)):\n"
              "    if i.path.split('/')[2] in skip: continue\n"
              "    if fnmatch.fnmatch(i.path, f'*/metaocl-{sys.argv[1]}-*/metaocl/attempts/*.json'):\n"
              "        print(f.open_input_stream(i.path).read().decode())\n"
              "    elif fnmatch.fnmatch(i.path, f'*/metaocl-{sys.argv[1]}-*/metaocl/finished/*'):\n"
              "        done.append(i.path.rsplit('/', 1)[1])\n"
              "print(json.dumps({'finished': done}))\n")
    out = stack("exec", "-T", "ray-head", "python", "-c", script, sweep_name, *sorted(skip)).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    tried = [r for r in rows if "finished" not in r]
    return (tried, set(rows[-1]["finished"])) if with_finished else tried


def container_ip(container: str) -> str:
    return sh("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container).stdout.strip()


def wait_exit(container: str, timeout: float = 1500) -> tuple[int, str]:
    code = int(sh("docker", "wait", container, timeout=timeout).stdout.strip())
    logs = sh("docker", "logs", container).stdout + sh("docker", "logs", container).stderr
    sh("docker", "rm", "-f", container, check=False)
    return code, logs


@pytest.fixture(scope="module")
def stack(image):
    base = os.environ.get("METAOCL_BASE_IMAGE") or sh(str(ROOT / "docker" / "local-base.sh"), timeout=900).stdout.strip()
    compose = Stack(f"metaocl-dep-{uuid.uuid4().hex[:6]}", image)
    compose("build", "postgres", env={"METAOCL_BASE_IMAGE": base}, timeout=900)
    try:
        compose.up()
        yield compose
    finally:
        compose("down", "-v", "--remove-orphans", check=False, timeout=300)


def test_lm_smoke_sweep_runs_on_the_cluster_nodes(stack):
    nodes = {container_ip(stack.container("ray-head")), container_ip(stack.container("ray-cpu-worker"))}
    stack.sweep("--smoke", detach=False, sweep="batch_size")
    stack.finished_sweep("metaocl/batch_size-smoke", trials=2)
    ran_on = {a["node_ip"] for a in attempts(stack, "batch_size-smoke")}
    assert ran_on and ran_on <= nodes, (ran_on, nodes)  # on the Ray nodes, not in the sweep container


def test_unauthenticated_job_submit_and_mlflow_writes_are_refused(stack, tmp_path):
    mlflow = f"http://127.0.0.1:{stack.mlflow_port}"
    assert http(f"{mlflow}/api/2.0/mlflow/experiments/create", {"name": "intruder"})[0] == 401
    assert http(f"{mlflow}/api/2.0/mlflow/experiments/create", {"name": "intruder"}, ("admin", "guess"))[0] == 401
    dashboard = f"http://127.0.0.1:{stack.dashboard_port}"
    assert http(f"{dashboard}/api/jobs/", {"entrypoint": "touch /runs/pwned"})[0] == 401
    env = {**os.environ, "HOME": str(tmp_path), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
    out = subprocess.run(["ray", "job", "submit", "--address", dashboard, "--", "touch", "/runs/pwned"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0, out.stdout + out.stderr
    assert stack("exec", "-T", "ray-head", "test", "-e", "/runs/pwned", check=False).returncode != 0
    # a driver inside the network, without the credentials: one line, exit 2, nothing written
    out = stack("run", "--rm", "--entrypoint", "metaocl", "sweep", "sweep", "quickstart", *TINY.split(), check=False,
                env={"METAOCL_SWEEP": "quickstart"})
    assert out.returncode == 2, out.stdout + out.stderr
    assert "asks for credentials: set MLFLOW_TRACKING_USERNAME" in out.stderr
    assert not stack.runs()


def test_authenticated_sweep_survives_mlflow_restart_and_down_up(stack):
    """The sweep finishes while MLflow and PostgreSQL restart under it; no metric is lost, and
    `down` / `up` keeps every run, metric and artifact."""
    driver = f"{stack.project}-driver"
    stack.sweep(TINY, driver)

    def a_trial_logged():
        return any(r["data"].get("metrics") for r in stack.runs()
                   if {"key": "metaocl.role", "value": "trial"} in r["data"].get("tags", []))
    wait_for(a_trial_logged, "a trial's first metrics on the MLflow server", 900, every=3)
    for service in ("postgres", "mlflow"):
        stack("restart", service, timeout=300)
    code, logs = wait_exit(driver)
    assert code == 0, logs[-3000:]

    runs = stack.runs()
    trials = [r for r in runs if {"key": "metaocl.role", "value": "trial"} in r["data"]["tags"]]
    assert len(trials) == 2 and all(r["info"]["status"] == "FINISHED" for r in trials), runs
    keys = sorted({m["key"] for r in trials for m in r["data"]["metrics"]})
    before = {}
    for r in trials:
        for key in keys:
            steps = stack.history(r["info"]["run_id"], key)
            assert steps and steps == list(range(steps[0], steps[0] + len(steps))), (key, steps)  # no epoch missing
            before[(r["info"]["run_id"], key)] = steps
        assert "config.yaml" in stack.artifacts(r["info"]["run_id"])
    assert len({len(s) for (_, k), s in before.items() if k == keys[0]}) == 1  # every trial has every epoch

    stack("down", timeout=300)  # keeps the volumes
    stack.up()
    after = {(r["info"]["run_id"], k): stack.history(r["info"]["run_id"], k)
             for r in stack.runs() if {"key": "metaocl.role", "value": "trial"} in r["data"]["tags"] for k in keys}
    assert after == before
    for run_id in {rid for rid, _ in before}:
        assert "config.yaml" in stack.artifacts(run_id)


def test_s3_sweep_with_killed_driver_resumes_from_the_store(stack):
    """Ray Tune's state is in S3: kill -9 of the sweep container after a trial finished; --resume
    continues from the store, and the pruner leaves one checkpoint per finished trial there."""
    args = TINY + " --set train.lr=2e-4"  # a sweep of its own (another fingerprint)
    driver = f"{stack.project}-killed"
    before = {p.split("/")[2] for p in stack.store("ray-results") if p.count("/") >= 2}  # earlier sweeps' folders
    stack.sweep(args, driver)

    def finished():
        return [p for p in stack.store("ray-results") if "/metaocl/finished/" in p and p.split("/")[2] not in before]
    wait_for(finished, "a finished trial in the store", 900, every=3)
    sh("docker", "kill", driver)
    sh("docker", "rm", "-f", driver, check=False)

    stack.sweep(args + " --resume", f"{stack.project}-resumed")
    code, logs = wait_exit(f"{stack.project}-resumed")
    assert code == 0, logs[-3000:]
    assert "trials: 2 done, 0 failed" in logs, logs[-3000:]
    keys = stack.store("ray-results")
    experiments = {k.split("/")[2] for k in keys if "/metaocl/sweep.json" in k}
    resumed = [e for e in experiments - before]
    assert len(resumed) == 1, (experiments, before)
    checkpoints: dict[str, list[str]] = {}
    for k in keys:
        parts = k.split("/")  # bucket, ray-results, experiment, metaocl, checkpoints, trial, file
        if len(parts) == 7 and parts[2] in resumed and parts[3:5] == ["metaocl", "checkpoints"]:
            checkpoints.setdefault(parts[5], []).append(parts[6])
    assert sorted(checkpoints) == ["s0", "s1"], checkpoints  # every finished trial, also one finished under the killed driver
    for trial, files in checkpoints.items():  # its record and the one checkpoint it names
        assert len(files) == 2 and "latest.json" in files and any(f.endswith(".pt") for f in files), (trial, files)
    assert not [k for k in keys if k.split("/")[2] in resumed and "/checkpoint_" in k], "Ray wrote checkpoints"


def test_worker_killed_mid_sweep_is_retried(stack):
    """`docker kill` of the Ray worker while one of its trials runs: the trial is attempted again
    (on the head) and the sweep finishes. Last in the module: it runs in the same experiment as the
    tests above, which count its runs; that runs survive `down` / `up` is checked above."""
    worker = stack.container("ray-cpu-worker")
    worker_ip = container_ip(worker)
    args = "--smoke --max-failures 2 --set train.lr=3e-3"  # a sweep of its own (another fingerprint)
    driver = f"{stack.project}-worker-kill"
    before = {p.split("/")[2] for p in stack.store("ray-results") if p.count("/") >= 2}  # earlier sweeps' folders
    stack.sweep(args, driver)
    try:
        def unfinished_on_worker():  # a trial started on the worker and not finished: the kill lands mid-work
            tried, finished = attempts(stack, "quickstart-smoke", with_finished=True, skip=before)
            return {a["trial_id"] for a in tried if a["node_ip"] == worker_ip} - finished
        on_worker = wait_for(unfinished_on_worker, "a trial running on the worker", 600, every=1)
        sh("docker", "kill", worker)
        code, logs = wait_exit(driver)
    finally:
        sh("docker", "rm", "-f", driver, check=False)
        stack("up", "-d", "--no-build", "ray-cpu-worker", check=False, timeout=300)  # back for the next tests
    assert code == 0, logs[-3000:]
    tried = attempts(stack, "quickstart-smoke", skip=before)
    for trial in on_worker:  # the killed worker's trials were attempted again, and finished
        assert len([a for a in tried if a["trial_id"] == trial]) >= 2, tried
