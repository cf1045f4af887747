"""The user's first command in the image, on a fresh cache volume, with no manual step (marked `docker`).

    docker run -v metaocl-cache:/cache -v $PWD:/runs metaocl sweep batch_size --smoke --set model.name=...

against a hub stand-in this test starts on the host's loopback (tests/loopback_hub.py, serving a tiny
model the test builds; the container shares the host's network, `--network host`, and finds it
through `HF_ENDPOINT`). The sweep must fetch the model into the new volume itself and finish; a
misspelled name must stop it in one line (exit 2) with nothing written. Uses the session's image
(tests/conftest.py `image`).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest

from loopback_hub import LoopbackHub, save_tiny_model

pytestmark = pytest.mark.docker

UID = 1000  # the image's user (Dockerfile APP_UID)
REPO = "tiny-org/tiny-neox"
SMOKE = ["sweep", "batch_size", "--smoke", "--set", f"model.name={REPO}", "--set", "train.block_size=128",
         "--set", "seed=0"]


def sh(*cmd: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def hub(tmp_path):
    server = LoopbackHub()
    server.add_folder(REPO, save_tiny_model(tmp_path / "model"))
    yield server
    server.close()


@pytest.fixture
def volume():
    name = f"metaocl-test-cache-{uuid.uuid4().hex[:8]}"
    assert sh("docker", "volume", "create", name).returncode == 0
    yield name
    sh("docker", "volume", "rm", "-f", name)


def user_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, UID, UID)
    return path


def docker_run(image: str, volume: str, runs: Path, hub_url: str, *args: str) -> subprocess.CompletedProcess:
    return sh("docker", "run", "--rm", "--network", "host", "--shm-size=1g", "-e", f"HF_ENDPOINT={hub_url}",
              "-e", "RAY_USAGE_STATS_ENABLED=0", "-v", f"{volume}:/cache", "-v", f"{runs}:/runs", image, *args)


def finished_runs(db: Path) -> list[str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [s for (s,) in con.execute("SELECT status FROM runs WHERE lifecycle_stage = 'active'")]
    finally:
        con.close()


def test_first_run_on_a_fresh_volume_fetches_and_finishes(image, hub, volume, tmp_path):
    runs = user_dir(tmp_path / "runs")
    r = docker_run(image, volume, runs, hub.url, *SMOKE)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"metaocl: fetching model {REPO} from {hub.url}" in r.stderr
    assert "trials: 2 done, 0 failed" in r.stdout
    assert set(finished_runs(runs / "mlflow.db")) == {"FINISHED"}
    # each file once, by the fetch before the trials: no trial asked the hub
    gets = [q for q in hub.requests if q.startswith(f"GET /{REPO}/resolve/")]
    assert len(gets) == len(set(gets)) == len(hub.repos[REPO])
    listing = sh("docker", "run", "--rm", "-v", f"{volume}:/cache", "--entrypoint", "ls", image, "-a",
                 "/cache/huggingface/hub").stdout.split()
    assert "models--tiny-org--tiny-neox" in listing and not [n for n in listing if n.startswith(".metaocl-partial")]


def test_misspelled_model_in_the_image_is_one_line_and_writes_nothing(image, hub, volume, tmp_path):
    runs = user_dir(tmp_path / "runs")
    r = docker_run(image, volume, runs, hub.url, "sweep", "batch_size", "--smoke", "--set", "model.name=tiny-org/tiny-neoq")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"metaocl: error: model.name: 'tiny-org/tiny-neoq' is not a model on the hub ({hub.url}; "
        "misspelled? private models need HF_TOKEN)"]
    assert not any(runs.iterdir())
