"""Authentication, outside Docker: an MLflow server with its basic-auth app and a Ray head with token
authentication, both on loopback, as docker/compose.yaml and docker/kuberay/ run them.

Unauthenticated writes are refused by the servers; ``metaocl sweep`` without (or with wrong)
credentials stops with one line and exit status 2 before anything is written, and with them it
finishes.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from processes import free_port, ray_env, start, stop, wait_for

pytestmark = pytest.mark.slow

HOST = "127.0.0.8"


def sweep_file(folder: Path, name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        description: "tiny set inclusion for the authentication tests"
        kind: set_inclusion
        base:
          device: cpu
          data: {{n_variables: 100, train_questions: 12, test_questions: 12}}
          model: {{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}}
          train: {{stage1_epochs: 1, stage2_epochs: 1, batch_size: 128}}
        seeds: 1
        resources: {{cpu: 1, gpu: 0}}
        """))
    return path


def post(url: str, body: dict, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def sweep(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metaocl.cli", "sweep", *args], cwd=cwd, env=ray_env(**env),
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def mlflow_auth(tmp_path_factory):
    """``mlflow server --app-name basic-auth``: admin password generated here, given on first start."""
    folder = tmp_path_factory.mktemp("mlflow-auth")
    ini = folder / "basic_auth.ini"
    ini.write_text(textwrap.dedent(f"""\
        [mlflow]
        default_permission = READ
        database_uri = sqlite:///{folder / 'auth.db'}
        admin_username = admin
        authorization_function = mlflow.server.auth:authenticate_request_basic_auth
        """))
    password = secrets.token_urlsafe(18)
    port = free_port(HOST)
    env = ray_env(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_AUTH_ADMIN_PASSWORD=password,
                  MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16), MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
                  MLFLOW_SERVER_ALLOWED_HOSTS=f"{HOST},{HOST}:*")  # MLflow checks the Host header
    proc = start(["mlflow", "server", "--app-name", "basic-auth", "--host", HOST, "--port", str(port), "--workers", "1",
                  "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                  "--artifacts-destination", str(folder / "artifacts")], folder / "server.log", env=env)
    uri = f"http://{HOST}:{port}"

    def healthy():
        try:
            return urllib.request.urlopen(uri + "/health", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_for(lambda: healthy() or proc.poll() is not None, "the MLflow server with basic auth", timeout=600, every=1)
        assert proc.poll() is None, (folder / "server.log").read_text()[-3000:]
        yield {"uri": uri, "user": "admin", "password": password}
    finally:
        stop(proc)


def test_mlflow_refuses_unauthenticated_and_wrong_writes(mlflow_auth):
    create = mlflow_auth["uri"] + "/api/2.0/mlflow/experiments/create"
    assert post(create, {"name": "intruder"}) == 401
    assert post(create, {"name": "intruder"}, ("admin", "not-the-password")) == 401
    assert post(create, {"name": "welcome"}, ("admin", mlflow_auth["password"])) == 200


def test_sweep_without_or_with_wrong_mlflow_credentials_stops_with_one_line(mlflow_auth, tmp_path):
    path = sweep_file(tmp_path, "authless")
    args = [str(path), "--tracking-uri", mlflow_auth["uri"], "--storage", str(tmp_path / "results")]
    cases = [({}, "asks for credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
             ({"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "wrong"},
              "refused the credentials of user 'admin'")]
    for env, message in cases:
        out = sweep(args, tmp_path, **env)
        assert out.returncode == 2, out.stdout + out.stderr
        errors = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and message in errors[0], out.stderr
    assert not (tmp_path / "results").exists()  # nothing written


def test_sweep_with_mlflow_credentials_finishes(mlflow_auth, tmp_path):
    path = sweep_file(tmp_path, "authed")
    out = sweep([str(path), "--tracking-uri", mlflow_auth["uri"], "--storage", str(tmp_path / "results")], tmp_path,
                MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=mlflow_auth["password"])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "trials: 1 done, 0 failed" in out.stdout

    from mlflow.tracking import MlflowClient

    import os
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = "admin", mlflow_auth["password"]
    try:
        client = MlflowClient(mlflow_auth["uri"])
        runs = client.search_runs([client.get_experiment_by_name("metaocl/authed").experiment_id])
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    assert sorted(r.data.tags.get("metaocl.role") for r in runs) == ["sweep", "trial"]
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.fixture(scope="module")
def ray_token_head(tmp_path_factory):
    """A Ray head (with its dashboard, the job API) on loopback with ``RAY_AUTH_MODE=token``."""
    import tempfile

    folder = tmp_path_factory.mktemp("ray-token")
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    port, dashboard = free_port(HOST), free_port(HOST)
    temp_dir = tempfile.mkdtemp(prefix="mocl-tok-", dir="/tmp")
    env = ray_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    proc = start(["ray", "start", "--head", f"--node-ip-address={HOST}", f"--port={port}",
                  f"--dashboard-host={HOST}", f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port(HOST)}",
                  # the job API's agent: a port of its own, not Ray's fixed 52365, which another Ray on
                  # this machine (a user's sweep beside the tests) may hold on 127.0.0.1
                  f"--dashboard-agent-listen-port={free_port(HOST)}", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats", f"--temp-dir={temp_dir}", "--block"],
                 folder / "head.log", env=env)

    def jobs_api_up():
        try:
            urllib.request.urlopen(f"http://{HOST}:{dashboard}/api/version", timeout=2)
            return True
        except urllib.error.HTTPError:
            return True  # answers (401 without the token)
        except OSError:
            return False

    try:
        wait_for(lambda: jobs_api_up() or proc.poll() is not None, "the Ray head's dashboard", timeout=600, every=1)
        assert proc.poll() is None, (folder / "head.log").read_text()[-3000:]
        yield {"address": f"{HOST}:{port}", "dashboard": f"http://{HOST}:{dashboard}", "token": token}
    finally:
        stop(proc)
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_refuses_job_submit_and_driver_without_the_token(ray_token_head, tmp_path):
    submit = ["ray", "job", "submit", "--address", ray_token_head["dashboard"], "--", "touch", str(tmp_path / "pwned")]
    out = subprocess.run(submit, env=ray_env(HOME=str(tmp_path)), capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "Authentication" in out.stdout + out.stderr, out.stdout + out.stderr
    assert post(ray_token_head["dashboard"] + "/api/jobs/", {"entrypoint": f"touch {tmp_path / 'pwned'}"}) == 401
    assert not (tmp_path / "pwned").exists()

    path = sweep_file(tmp_path, "tokenless")
    args = [str(path), "--address", ray_token_head["address"], "--storage", str(tmp_path / "results"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    cases = [({"HOME": str(tmp_path)}, "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN"),
             ({"HOME": str(tmp_path), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
              "is not the cluster's")]
    for env, message in cases:
        out = sweep(args, tmp_path, **env)
        assert out.returncode == 2, out.stdout + out.stderr
        errors = [line for line in out.stderr.splitlines() if line.strip() and "gcs_client.cc" not in line]
        assert len(errors) == 1 and "refused this driver (token authentication)" in errors[0], out.stderr
        assert message in errors[0], out.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()


def test_ray_with_the_token_runs_a_job_and_a_sweep(ray_token_head, tmp_path):
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(ray_token_head["token"])}

    def submitted():  # the head's job agent registers a while after the dashboard answers
        out = subprocess.run(["ray", "job", "submit", "--address", ray_token_head["dashboard"], "--", "echo", "hello-job"],
                             env=ray_env(**env), capture_output=True, text=True, timeout=300)
        return None if "No available agent" in out.stdout + out.stderr else out

    out = wait_for(submitted, "the head's job agent", timeout=600, every=5)
    assert out.returncode == 0 and "hello-job" in out.stdout, out.stdout + out.stderr
    path = sweep_file(tmp_path, "tokened")
    out = sweep([str(path), "--address", ray_token_head["address"], "--storage", str(tmp_path / "results"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], tmp_path, **env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "trials: 1 done, 0 failed" in out.stdout
