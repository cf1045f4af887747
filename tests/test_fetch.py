"""Inputs fetched once before any trial (metaocl.fetch), against loopback servers this test starts:
a hub stand-in (tests/loopback_hub.py, ``HF_ENDPOINT``) serving a tiny model the test builds, and a
Dataverse stand-in for CVDB (``METAOCL_CVDB_URL``). Real huggingface_hub, real downloads, real
metaocl CLI in subprocesses; nothing reaches the internet.

Bad inputs (hub 404, hub down, a corrupted file, a checksum mismatch of the data, a full disk) are
each one line, exit 2, nothing half-written in the cache, no MLflow store and no trial folder.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from loopback_hub import LoopbackHub, save_tiny_model
from metaocl import fetch
from metaocl.config import ConfigError
from metaocl.data import download

REPO = "tiny-org/tiny-neox"
ROOT = Path(__file__).resolve().parents[1]
# The batch_size smoke sweep on the hub model (its tokenizer is not the builtin one: longer rows).
SMALL = ["--set", f"model.name={REPO}", "--set", "train.block_size=128"]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def hub(model_folder, monkeypatch, tmp_path):
    server = LoopbackHub()
    server.add_folder(REPO, model_folder)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # conftest set it at import
    fetch._model_info.cache_clear()
    yield server
    server.close()
    fetch._model_info.cache_clear()


def cache_entries(tmp_path: Path) -> list[str]:
    hub_cache = tmp_path / "hf" / "hub"
    return sorted(p.name for p in hub_cache.iterdir()) if hub_cache.is_dir() else []


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    full.update(env, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    return subprocess.run([sys.executable, "-m", "metaocl.cli", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=1800)


# ------------------------------------------------------------------------------------------------
# The fetch itself (in this process: real snapshot_download against the loopback hub)
# ------------------------------------------------------------------------------------------------
def test_model_fetched_whole_into_the_cache_once(hub, model_folder, tmp_path):
    folder = fetch.fetch_model(REPO, progress=False)
    assert fetch.in_cache(REPO) and fetch.in_cache(REPO, "tokenizer")
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (folder / f).read_bytes() == (model_folder / f).read_bytes()
    assert cache_entries(tmp_path) == ["models--tiny-org--tiny-neox"]  # no partial folder left
    asked = len(hub.requests)
    fetch.fetch_model(REPO, progress=False)  # already there: the hub is not asked again
    assert len(hub.requests) == asked


def test_only_the_tokenizer_files_for_a_tokenizer(hub, tmp_path):
    folder = fetch.fetch_model(REPO, "tokenizer", progress=False)
    assert (folder / "tokenizer.json").is_file() and not (folder / "model.safetensors").exists()
    assert fetch.in_cache(REPO, "tokenizer") and not fetch.in_cache(REPO, "model")


def test_unknown_model_is_one_line_and_nothing_is_written(hub, tmp_path):
    with pytest.raises(ConfigError) as e:
        fetch.fetch_model("tiny-org/tiny-neoxx", progress=False)
    assert str(e.value) == (f"model.name: 'tiny-org/tiny-neoxx' is not a model on the hub ({hub.url}; "
                            "misspelled? private models need HF_TOKEN)")
    assert cache_entries(tmp_path) == []


def test_hub_down_is_one_line(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(ConfigError) as e:
        fetch.fetch_model(REPO, progress=False)
    assert "does not answer for 'tiny-org/tiny-neox', which is not in the local cache" in str(e.value)
    assert "\n" not in str(e.value) and cache_entries(tmp_path) == []


def test_corrupted_weights_are_refused_and_nothing_is_kept(hub, tmp_path):
    hub.corrupt.add((REPO, "model.safetensors"))
    with pytest.raises(ConfigError, match=r"model\.safetensors from .*: checksum mismatch \(sha256 "):
        fetch.fetch_model(REPO, progress=False)
    assert cache_entries(tmp_path) == []
    hub.corrupt.clear()
    assert fetch.fetch_model(REPO, progress=False).is_dir()  # the next try fetches it whole


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (the model's weights are about 0.5 MB): a real ENOSPC mid-download."""
    mount = tmp_path / "small"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()})")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_during_the_fetch_is_one_line_and_leaves_nothing(hub, small_disk, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(small_disk / "hf"))
    with pytest.raises(ConfigError) as e:
        fetch.fetch_model(REPO, progress=False)
    assert "No space left on device" in str(e.value) and "nothing was kept" in str(e.value)
    assert sorted(p.name for p in (small_disk / "hf" / "hub").iterdir()) == []


def test_progress_without_a_terminal_is_a_line_per_interval(hub, monkeypatch, capsys):
    monkeypatch.setattr(fetch, "LINE_EVERY_S", 0.0)  # a line per timer tick instead of per 30 s
    lines = fetch._Lines(REPO, 1_000_000, lambda: 500_000)
    while "50 %" not in capsys.readouterr().err:
        pass
    lines.close()


# ------------------------------------------------------------------------------------------------
# Data: the checksummed downloader, through the sweep's fetch
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def dataverse(monkeypatch, tmp_path):
    """A Dataverse stand-in for CVDB: ``state['body']`` served, ``state['md5']`` declared."""
    state = {"body": gzip.compress(b"name,birth\nA,1900\n"), "md5": None}
    api = f"/api/datasets/:persistentId/?persistentId={download.CVDB_DOI}"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == api:
                md5 = state["md5"] or hashlib.md5(state["body"]).hexdigest()
                body = json.dumps({"data": {"latestVersion": {"files": [{"dataFile": {
                    "id": 7, "filename": download.CVDB_FILE, "checksum": {"type": "MD5", "value": md5}}}]}}}).encode()
            elif self.path == "/api/access/datafile/7":
                body = state["body"]
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("METAOCL_CVDB_URL", state["url"])
    monkeypatch.setenv("METAOCL_DATA", str(tmp_path / "data"))
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_data_and_model_of_a_sweep_fetched_together(hub, dataverse, tmp_path):
    from metaocl.config import load_sweep

    sweep = load_sweep("batch_size", smoke=True, overrides=[f"model.name={REPO}", "data.source=cvdb"])
    wanted = fetch.sweep_needs([sweep])
    assert wanted.data == ["cvdb"] and wanted.models == {REPO: "model"}
    env = fetch.fetch_for([sweep])
    assert env == {"HF_HUB_OFFLINE": "1"}
    assert (tmp_path / "data" / "cvdb" / download.CVDB_FILE).read_bytes() == dataverse["body"]
    assert fetch.in_cache(REPO)


def test_data_checksum_mismatch_is_one_line_exit_2_and_nothing_written(hub, dataverse, tmp_path):
    dataverse["md5"] = "0" * 32
    runs = tmp_path / "runs"
    runs.mkdir()
    r = cli(["sweep", "batch_size", "--smoke", *SMALL, "--set", "data.source=cvdb"], runs, {})
    assert r.returncode == 2, r.stderr
    [line] = r.stderr.strip().splitlines()[-1:]
    assert "checksum mismatch" in line and line.startswith("metaocl: error: ")
    assert not (tmp_path / "data" / "cvdb" / download.CVDB_FILE).exists()
    assert not list((tmp_path / "data" / "cvdb").glob("*.part"))
    assert sorted(p.name for p in runs.iterdir()) == []  # no mlflow.db, no metaocl-results


# ------------------------------------------------------------------------------------------------
# Pre-flight through the CLI: a bad model name or a silent hub stops the sweep before anything
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["sweep", "run"])
def test_misspelled_model_is_refused_before_anything_is_written(hub, tmp_path, command):
    runs = tmp_path / "runs"
    runs.mkdir()
    r = cli([command, "batch_size", "--smoke", "--set", "model.name=tiny-org/tiny-neoq"], runs, {})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"metaocl: error: model.name: 'tiny-org/tiny-neoq' is not a model on the hub ({hub.url}; "
        "misspelled? private models need HF_TOKEN)"]
    assert sorted(p.name for p in runs.iterdir()) == [] and cache_entries(tmp_path) == []


def test_no_fetch_refuses_what_is_not_cached(hub, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    r = cli(["sweep", "batch_size", "--smoke", "--no-fetch", *SMALL], runs, {})
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("metaocl: error: ") and line.endswith(
        f"--set model.name={REPO}: model '{REPO}' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
        "(a local folder, a builtin (tiny-gpt-neox, tiny-t5), or a cached hub name)")
    assert not hub.requests and sorted(p.name for p in runs.iterdir()) == []


def test_hub_down_is_refused_before_anything_is_written(hub, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    r = cli(["sweep", "batch_size", "--smoke", *SMALL], runs, {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"})
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert "does not answer for 'tiny-org/tiny-neox', which is not in the local cache" in line
    assert sorted(p.name for p in runs.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# The whole path: a sweep on an empty cache fetches once, and no trial asks the hub
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_on_an_empty_cache_fetches_once_and_trials_run_offline(hub, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    r = cli(["sweep", "batch_size", "--smoke", *SMALL, "--set", "seed=0"],
            runs, {"RAY_AUTH_MODE": "disabled", "METAOCL_PROGRESS_INTERVAL": "0"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"metaocl: fetching model {REPO} from {hub.url}" in r.stderr
    assert fetch.in_cache(REPO)
    # every file was asked for once, by the fetch; a trial that asked the hub would add requests
    gets = [q for q in hub.requests if q.startswith("GET /tiny-org/tiny-neox/resolve/")]
    assert len(gets) == len(set(gets)) == len(hub.repos[REPO])
    assert "trials: 2 done, 0 failed" in r.stdout  # the smoke grid's two batch sizes, seed 0


# ------------------------------------------------------------------------------------------------
# metaocl sweep --all --smoke: every paper sweep, one invocation, one report, resumable as a unit
# ------------------------------------------------------------------------------------------------
ALL_TINY = ["--all", "--smoke", "--set", "seed=0", "--set", "data.n_entities=20", "--set", "data.n_variables=60",
            "--set", "train.stage1_epochs=1", "--set", "train.steps=100"]


def test_all_dry_run_prints_the_plan_for_every_paper_sweep(tmp_path):
    from metaocl.sweep.paper import PAPER_SWEEPS

    r = cli(["sweep", *ALL_TINY, "--dry-run"], tmp_path, {"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    for name in PAPER_SWEEPS:  # the plan of every sweep (metaocl.sweep.plan), then the paper's total
        assert f"\nsweep {name}: " in r.stdout
    assert "\ntotal: " in r.stdout and not list(tmp_path.iterdir())


def test_all_refuses_a_key_no_sweep_has(tmp_path):
    r = cli(["sweep", "--all", "--smoke", "--dry-run", "--set", "train.no_such_key=1"], tmp_path, {"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no paper sweep accepts it" in r.stderr


@pytest.mark.slow
def test_all_smoke_runs_every_sweep_then_one_report_and_resume_skips_them(tmp_path):
    from metaocl.sweep.paper import PAPER_SWEEPS

    env = {"HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "METAOCL_PROGRESS_INTERVAL": "0",
           "METAOCL_DATA": str(tmp_path / "data")}
    r = cli(["sweep", *ALL_TINY], tmp_path, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = (tmp_path / "reports" / "paper-smoke" / "verdicts.md").read_text()
    for name in PAPER_SWEEPS:
        assert f"\n## {name}: " in report
    assert "no report" not in report
    state = json.loads((tmp_path / "metaocl-results" / "metaocl-all-smoke.json").read_text())
    assert {n: s["status"] for n, s in state["sweeps"].items()} == {n: "done" for n in PAPER_SWEEPS}
    again = cli(["sweep", *ALL_TINY, "--resume"], tmp_path, env)  # nothing left: every sweep is skipped
    assert again.returncode == 0 and again.stdout.count("finished earlier") == len(PAPER_SWEEPS)
