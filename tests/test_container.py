"""The image, built and run for real as users type `docker run` (marked `docker`).

Needs a Docker engine and docker-compose (.ci/run installs and starts them). Without an engine
these tests skip, except under CI (the `CI` variable set), where that is a failure. The image is
the session's (tests/conftest.py `image`: built once from this checkout). Sizes are smoke sizes with
a tiny --set, so the whole module takes a few minutes on 2 cores. The compose cluster is
tests/test_deployment.py's; what only a GPU host can check (--gpus all) is docker/smoke.sh's job.
"""

from __future__ import annotations

import json
import os
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
UID = 1000  # the image's user (Dockerfile APP_UID)
# quickstart --smoke, made tinier: two seeds (two trials), two stages, seconds of training each.
TINY = ["--smoke", "--set", "data.n_variables=60", "--set", "train.stage1_epochs=1"]
EXPERIMENT = "metaocl/quickstart-smoke"


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
