"""The image and the compose cluster, built and run for real (marked `docker`).

Needs a Docker engine and docker-compose (.ci/run installs and starts them). Without an engine
these tests skip, except under CI (the `CI` variable set), where that is a failure. The image is
built once per module from this checkout, FROM $METAOCL_BASE_IMAGE (.ci/run sets it), else the
local Debian base of docker/local-base.sh, reusing Docker's layer cache (seconds when nothing
changed). Sizes are smoke sizes with a tiny --set, so the whole module takes a few minutes on 2
cores. What only a GPU host can check (--gpus all) is docker/smoke.sh's job.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from processes import free_port, sh, wait_for

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "metaocl:latest"
UID = 1000  # the image's user (Dockerfile APP_UID)
# quickstart --smoke, made tinier: two seeds (two trials), two stages, seconds of training each.
TINY = ["--smoke", "--set", "data.n_variables=60", "--set", "train.stage1_epochs=1"]
EXPERIMENT = "metaocl/quickstart-smoke"


def docker_reachable() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def store_runs(db: Path, experiment: str | None = EXPERIMENT) -> list[dict]:
    """Runs of `experiment` (None: of all) read straight from an MLflow SQLite store: status, tags,
    metric count."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute(
            "SELECT r.run_uuid, r.status FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
            "WHERE (e.name = ? OR ? IS NULL) AND r.lifecycle_stage = 'active'", (experiment, experiment)).fetchall()
        runs = []
        for run_id, status in rows:
            tags = dict(con.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)).fetchall())
            metrics = con.execute("SELECT COUNT(*) FROM metrics WHERE run_uuid = ?", (run_id,)).fetchone()[0]
            runs.append({"id": run_id, "status": status, "tags": tags, "metrics": metrics})
        return runs
    except sqlite3.OperationalError:  # the store is being created
        return []
    finally:
        con.close()


def check_finished_sweep(runs: list[dict], trials: int) -> None:
    """One FINISHED sweep run and `trials` FINISHED trial runs with metrics under it."""
    sweeps = [r for r in runs if r["tags"].get("metaocl.role") == "sweep"]
    done = [r for r in runs if r["tags"].get("metaocl.role") == "trial"]
    assert [s["status"] for s in sweeps] == ["FINISHED"], sweeps
    assert sorted(r["tags"]["metaocl.trial_id"] for r in done if r["status"] == "FINISHED") == sorted(
        {r["tags"]["metaocl.trial_id"] for r in done}), done
    assert len({r["tags"]["metaocl.trial_id"] for r in done}) == trials, done
    for run in done:
        if run["status"] == "FINISHED":
            assert run["metrics"] > 0 and run["tags"]["mlflow.parentRunId"] == sweeps[0]["id"], run


def host_metaocl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "metaocl.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=env)


def user_dir(path: Path) -> Path:
    """A host folder the image's user (uid 1000) can write, as a user with a bind mount makes it."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, UID, UID)
    return path


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def image() -> str:
    if not docker_reachable():
        if os.environ.get("CI"):
            pytest.fail("CI is set but the Docker engine cannot be reached (.ci/run starts it)")
        pytest.skip("no Docker engine")
    base = os.environ.get("METAOCL_BASE_IMAGE")
    if not base and (shutil.which("debootstrap") or os.path.exists("/usr/sbin/debootstrap")):
        base = sh(str(ROOT / "docker" / "local-base.sh"), timeout=900).stdout.strip()
    build_args = ["--build-arg", f"BASE_IMAGE={base}"] if base else []
    sh("docker", "build", "-q", *build_args, "-t", IMAGE, str(ROOT), timeout=1800)
    return IMAGE


@pytest.fixture(scope="module")
def smoke_runs(image, tmp_path_factory) -> Path:
    """`docker run --rm -v RUNS:/runs -v CACHE:/cache metaocl sweep quickstart --smoke ...` on host
    folders, as users type it; returns the RUNS folder."""
    top = tmp_path_factory.mktemp("docker-smoke")
    runs, cache = user_dir(top / "runs"), user_dir(top / "cache")
    result = sh("docker", "run", "--rm", "--shm-size=1g", "-v", f"{runs}:/runs", "-v", f"{cache}:/cache",
                image, "sweep", "quickstart", *TINY, timeout=900)
    (runs / "sweep.log").write_text(result.stdout + result.stderr)
    return runs


# ---------------------------------------------------------------- docker run


def test_list_and_bad_input_behave_as_outside(image, tmp_path):
    inside = sh("docker", "run", "--rm", image, "list")
    outside = host_metaocl("list", cwd=tmp_path)
    assert outside.returncode == 0 and inside.stdout == outside.stdout
    assert "quickstart" in inside.stdout

    bad = ["sweep", "quickstart", "--set", "train.lrr=1"]
    inside = sh("docker", "run", "--rm", "-v", f"{user_dir(tmp_path / 'runs')}:/runs", image, *bad, check=False)
    outside = host_metaocl(*bad, cwd=tmp_path)
    assert inside.returncode == outside.returncode == 2
    lines = inside.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metaocl: error:") and "did you mean 'train.lr'?" in lines[0]
    assert inside.stderr == outside.stderr
    assert not any((tmp_path / "runs").iterdir()), "a bad input wrote to /runs"


def test_image_runs_as_uid_1000_with_the_locked_torch(image):
    out = sh("docker", "run", "--rm", "--entrypoint", "python", image, "-c",
             "import os, torch; print(os.getuid(), os.getgid(), torch.__version__, torch.version.cuda)").stdout.split()
    assert out[:2] == [str(UID), str(UID)]
    lock = (ROOT / "requirements.lock").read_text()
    assert f"torch=={out[2].split('+')[0]}\n" in lock and out[3] != "None"  # the CUDA build, on a CPU host


def test_pytest_gpu_collects_and_skips_in_the_image(image):
    """`pytest -m gpu` inside the image (as docker/smoke.sh runs it on a GPU host): no collection
    errors (the bench tests load bench/*.py, which the image carries), GPU tests skip without CUDA."""
    result = sh("docker", "run", "--rm", "-w", "/app", "--entrypoint", "python", image,
                "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs", "tests", check=False, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]  # 2 would be a collection error, 5 nothing collected
    summary = output.strip().splitlines()[-1]
    assert "skipped" in summary and "error" not in summary and "passed" not in summary, summary


def test_run_one_trial_as_outside(image, tmp_path):
    runs = user_dir(tmp_path / "runs")
    result = sh("docker", "run", "--rm", "-v", f"{runs}:/runs", image, "run", "quickstart", *TINY)
    assert "OCL" in result.stdout and "qd1consis" in result.stdout
    assert (runs / "mlflow.db").exists()  # metaocl run tracks in ./mlflow.db, as outside
    tracked = store_runs(runs / "mlflow.db", experiment=None)
    assert tracked and {r["status"] for r in tracked} == {"FINISHED"}, tracked
    assert any(r["metrics"] > 0 for r in tracked)


def test_sweep_writes_results_readable_on_the_host(smoke_runs):
    db = smoke_runs / "mlflow.db"
    assert db.exists() and (smoke_runs / "metaocl-results").is_dir(), (smoke_runs / "sweep.log").read_text()[-3000:]
    assert db.stat().st_uid == UID, "the container must write as uid 1000"
    for path in [db, *(smoke_runs / "metaocl-results").rglob("*")]:
        assert path.stat().st_uid == UID and path.stat().st_mode & 0o004, f"{path}: not uid {UID} or not world-readable"
    check_finished_sweep(store_runs(db), trials=2)
    finished = list((smoke_runs / "metaocl-results").glob("*/metaocl/finished/*"))  # the sweep's ledger
    assert sorted(p.name for p in finished) == ["s0", "s1"], finished


def test_report_in_the_container_equals_the_report_outside(image, smoke_runs, tmp_path):
    sh("docker", "run", "--rm", "-v", f"{smoke_runs}:/runs", image, "report", "quickstart", "--smoke")
    inside = smoke_runs / "reports" / "quickstart-smoke"  # the default --out, under the working directory /runs
    outside = tmp_path / "report"
    result = host_metaocl("report", "quickstart", "--smoke", "--no-log", "--out", str(outside),
                          "--tracking-uri", f"sqlite:///{smoke_runs}/mlflow.db", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in inside.iterdir()) == sorted(p.name for p in outside.iterdir())
    assert (inside / "verdicts.txt").read_text() == (outside / "verdicts.txt").read_text()

    def summary(folder: Path, store: str) -> list[str]:  # the same but for the store's path and the time
        text = (folder / "summary.md").read_text().replace(store, "STORE")
        return [line for line in text.splitlines() if "generated" not in line]
    assert summary(inside, "/runs/mlflow.db") == summary(outside, f"{smoke_runs}/mlflow.db")


def test_ui_in_the_container_serves_the_host(image, smoke_runs):
    port, name = free_port(), f"metaocl-ui-{uuid.uuid4().hex[:8]}"
    sh("docker", "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:5000", "-v", f"{smoke_runs}:/runs",
       image, "ui", "--host", "0.0.0.0")
    try:
        def health():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    return r.read().decode().strip() == "OK"
            except OSError:
                return False

        wait_for(health, "the MLflow UI in the container", 180, every=1)
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=100"
        with urllib.request.urlopen(url, timeout=10) as r:
            names = {e["name"] for e in json.load(r)["experiments"]}
        assert EXPERIMENT in names
    finally:
        sh("docker", "rm", "-f", name, check=False)


def test_docker_stop_leaves_killed_runs_and_resume_continues(image, tmp_path):
    runs, cache = user_dir(tmp_path / "runs"), user_dir(tmp_path / "cache")
    name = f"metaocl-stop-{uuid.uuid4().hex[:8]}"
    mounts = ["-v", f"{runs}:/runs", "-v", f"{cache}:/cache"]
    # Longer trials than TINY, so that the stop lands while trials run.
    sweep = ["sweep", "quickstart", "--smoke", "--set", "data.n_variables=100"]
    sh("docker", "run", "-d", "--name", name, "--shm-size=1g", *mounts, image, *sweep)
    try:
        def mid_trial():  # a trial has reported an evaluation and has not finished: the stop lands mid-work
            return [r for r in store_runs(runs / "mlflow.db") if r["tags"].get("metaocl.role") == "trial"
                    and r["status"] == "RUNNING" and r["metrics"] > 0]
        wait_for(mid_trial, "a trial run in MLflow with a reported evaluation, still running", 300, every=0.2)
        sh("docker", "stop", "-t", "120", name, timeout=200)
        code = int(sh("docker", "inspect", "-f", "{{.State.ExitCode}}", name).stdout)
        logs = sh("docker", "logs", name).stderr
    finally:
        sh("docker", "rm", "-f", name, check=False)
    assert code == 130, logs[-3000:]          # interrupted, as Ctrl-C outside
    stopped = store_runs(runs / "mlflow.db")
    (parent,) = [r for r in stopped if r["tags"].get("metaocl.role") == "sweep"]
    assert parent["status"] == "KILLED"
    assert {r["status"] for r in stopped if r["tags"].get("metaocl.role") == "trial"} <= {"KILLED", "FINISHED"}
    killed = {r["id"]: r for r in stopped if r["tags"].get("metaocl.role") == "trial" and r["status"] == "KILLED"}
    # the stop came after a trial had reported (a trial that had only just started may have nothing yet)
    assert killed and any(r["metrics"] > 0 for r in killed.values())
    assert "--resume" in logs

    sh("docker", "run", "--rm", "--shm-size=1g", *mounts, image, *sweep, "--resume", timeout=900)
    resumed = store_runs(runs / "mlflow.db")
    check_finished_sweep(resumed, trials=2)
    assert {r["id"] for r in resumed if r["tags"].get("metaocl.role") == "sweep"} == {parent["id"]}
    after = {r["id"]: r for r in resumed if r["tags"].get("metaocl.role") == "trial"}
    for run_id, before in killed.items():  # the stopped trial went on in its own run, keeping what it had logged
        assert after[run_id]["status"] == "FINISHED" and after[run_id]["metrics"] > before["metrics"]


# ---------------------------------------------------------------- the compose cluster


class Compose:
    """docker-compose (1.29 here; Compose v2's `docker compose` reads the same files) on
    compose.yaml + the CPU override, under its own project name and host ports."""

    def __init__(self, project: str):
        self.project = project
        exe = shutil.which("docker-compose")
        self.base = [exe] if exe else ["docker", "compose"]
        self.base += ["-p", project, "-f", str(ROOT / "docker" / "compose.yaml"),
                      "-f", str(ROOT / "docker" / "compose.cpu.yaml")]
        self.mlflow_port = free_port()
        self.env = {**os.environ, "MLFLOW_PORT": str(self.mlflow_port), "RAY_DASHBOARD_PORT": str(free_port()),
                    "METAOCL_SHM_SIZE": "1gb", "METAOCL_NODE_CPUS": "1"}

    def __call__(self, *args: str, check: bool = True, timeout: float = 900, env: dict | None = None):
        return sh(*self.base, *args, check=check, timeout=timeout, env={**self.env, **(env or {})})

    def container(self, service: str) -> str:
        return self("ps", "-q", service).stdout.strip()

    def api(self, path: str, body: dict | None = None):
        """MLflow's REST API as its admin (the server has authentication: docs/deployment.md)."""
        import base64

        password = self("exec", "-T", "mlflow", "cat", "/secrets/mlflow-admin-password").stdout.strip()
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.mlflow_port}{path}", data=data,
                                         headers={"Content-Type": "application/json", "Authorization":
                                                  "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()})
        with urllib.request.urlopen(request, timeout=20) as r:
            return json.load(r)

    def server_runs(self, experiment: str) -> list[dict]:
        try:
            found = self.api(f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={experiment}")
        except OSError:
            return []
        body = {"experiment_ids": [found["experiment"]["experiment_id"]], "max_results": 1000}
        runs = []
        for run in self.api("/api/2.0/mlflow/runs/search", body).get("runs", []):
            tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
            runs.append({"id": run["info"]["run_id"], "status": run["info"]["status"], "tags": tags,
                         "metrics": len(run["data"].get("metrics", []))})
        return runs

    def up(self):
        if sh("docker", "image", "inspect", "metaocl-postgres:latest", check=False).returncode != 0:
            base = os.environ.get("METAOCL_BASE_IMAGE") or sh(str(ROOT / "docker" / "local-base.sh"), timeout=900).stdout.strip()
            self("build", "postgres", env={"METAOCL_BASE_IMAGE": base})
        self("up", "-d", "--no-build", "mlflow", "ray-head", "ray-cpu-worker", check=False)

        def ready():
            self("up", "-d", "--no-build", "ray-cpu-worker", check=False)  # once the head is healthy
            try:
                self.api("/api/2.0/mlflow/experiments/search?max_results=1")
            except (OSError, AssertionError):
                return False
            status = self("exec", "-T", "ray-head", "ray", "status", check=False, timeout=60).stdout
            return status.count("node_") >= 2  # head and worker joined
        wait_for(ready, "mlflow and a two-node Ray cluster", 300, every=3)


def attempts(compose: Compose, sweep_name: str, with_finished: bool = False):
    """Every attempt of every trial of `sweep_name` (the sweep ledger's attempts/*.json: trial,
    node_ip, from_checkpoint), read from the S3 store (METAOCL_RESULTS) with the stack's keys;
    ``with_finished``: also the trials finished (the ledger's finished/ markers), read at the same moment."""
    script = ("import fnmatch, json, sys; from pyarrow import fs\n"
              "f, root = fs.FileSystem.from_uri('s3://metaocl/ray-results')\n"
              "done = []\n"
              "for i in f.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True)):\n"
              "    if fnmatch.fnmatch(i.path, f'*/metaocl-{sys.argv[1]}-*/metaocl/attempts/*.json'):\n"
              "        print(f.open_input_stream(i.path).read().decode())\n"
              "    elif fnmatch.fnmatch(i.path, f'*/metaocl-{sys.argv[1]}-*/metaocl/finished/*'):\n"
              "        done.append(i.path.rsplit('/', 1)[1])\n"
              "print(json.dumps({'finished': done}))\n")
    out = compose("exec", "-T", "ray-head", "python", "-c", script, sweep_name).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    tried = [r for r in rows if "finished" not in r]
    return (tried, set(rows[-1]["finished"])) if with_finished else tried


def container_ip(container: str) -> str:
    return sh("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container).stdout.strip()


@pytest.fixture(scope="module")
def cluster(image):
    compose = Compose(f"metaocl-ci-{uuid.uuid4().hex[:6]}")
    try:
        compose.up()
        yield compose
    finally:
        compose("down", "-v", "--remove-orphans", check=False, timeout=300)


def test_compose_lm_smoke_sweep_runs_on_the_cluster(cluster):
    nodes = {container_ip(cluster.container("ray-head")), container_ip(cluster.container("ray-cpu-worker"))}
    cluster("run", "--rm", "sweep", env={"METAOCL_SWEEP": "batch_size", "METAOCL_SWEEP_ARGS": "--smoke"}, timeout=1200)
    check_finished_sweep(cluster.server_runs("metaocl/batch_size-smoke"), trials=2)
    ran_on = {a["node_ip"] for a in attempts(cluster, "batch_size-smoke")}
    assert ran_on and ran_on <= nodes, (ran_on, nodes)  # on the Ray nodes, not in the sweep container


def test_compose_worker_killed_mid_sweep_is_retried_and_results_survive_down_up(cluster):
    worker = cluster.container("ray-cpu-worker")
    worker_ip = container_ip(worker)
    env = {"METAOCL_SWEEP": "quickstart", "METAOCL_SWEEP_ARGS": "--smoke --max-failures 2"}
    driver = f"{cluster.project}-driver"
    cluster("run", "-d", "--name", driver, "sweep", env=env)
    try:
        def unfinished_on_worker():  # a trial started on the worker and not finished: the kill lands mid-work
            tried, finished = attempts(cluster, "quickstart-smoke", with_finished=True)
            return {a["trial_id"] for a in tried if a["node_ip"] == worker_ip} - finished
        on_worker = wait_for(unfinished_on_worker, "a trial running on the worker", 600, every=1)
        sh("docker", "kill", worker)
        code = int(sh("docker", "wait", driver, timeout=1500).stdout.strip())
        logs = sh("docker", "logs", driver).stdout[-3000:]
    finally:
        sh("docker", "rm", "-f", driver, check=False)
    assert code == 0, logs
    runs = cluster.server_runs(EXPERIMENT)
    check_finished_sweep(runs, trials=2)
    tried = attempts(cluster, "quickstart-smoke")
    for trial in on_worker:  # the killed worker's trials were attempted again, and finished
        assert len([a for a in tried if a["trial_id"] == trial]) >= 2, tried

    cluster("down")  # keeps the volumes
    cluster.up()
    survived = cluster.server_runs(EXPERIMENT)  # this test's own runs: no test depends on another having run
    assert {r["id"] for r in survived} == {r["id"] for r in runs}
    assert {r["id"]: (r["status"], r["metrics"]) for r in survived} == {r["id"]: (r["status"], r["metrics"]) for r in runs}
