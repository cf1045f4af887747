"""`metaocl ui` serves the sweep store in the MLflow UI, on loopback."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_store_with_its_experiment(in_tmp):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("metaocl/quickstart")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "metaocl.cli", "ui", "--port", str(port)], cwd=in_tmp,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "the MLflow UI did not come up within 120 s"
                time.sleep(0.5)
        url = f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=metaocl/quickstart"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert b"metaocl/quickstart" in r.read()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
