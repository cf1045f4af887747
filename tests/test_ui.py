"""`metaocl ui` and what it shows first: the sweep's result on its MLflow parent run, the link to it,
and a server that SIGTERM stops completely.

Trials are written through the driver's own tracker into a real SQLite store; `log_sweep_aggregates`
runs as the driver runs it when a sweep ends. The browser's view is tests/test_ui_browser.py.
"""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import psutil
import pytest
from scipy import stats

from metaocl.config import load_sweep
from metaocl.mlflow_layout import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, NOTE_TAG, SWEEP_RUN_TAG
from metaocl.report.publish import log_sweep_aggregates
from metaocl.tracking import SweepTracker
from metaocl.ui import HOME_HINT, VIEW_TAG_PREFIX, sweep_views
from processes import free_port, wait_for

SWEEP_YAML = """\
name: uigrid
description: tiny set-inclusion grid for the UI aggregates test
kind: set_inclusion
base: {device: cpu, data: {n_variables: 200}, train: {stage1_epochs: 2, stage2_epochs: 0, joint: true}}
grid: {GRID}
seeds: 3
resources: {cpu: 1, gpu: 0}
"""

# acc per seed (3 seeds) and epoch (2 epochs): d1consis, d2consis; qd* fixed
D1 = {0: [0.50, 0.60], 1: [0.52, 0.64], 2: [0.54, 0.62]}
D2 = {0: [0.50, 0.55], 1: [0.50, 0.57], 2: [0.50, 0.53]}


def _metrics(seed: int, epoch: int, shift: float = 0.0) -> dict:
    d1, d2 = D1[seed][epoch - 1] + shift, D2[seed][epoch - 1]
    return {"epoch": epoch, "stage": 1, "acc/qd1consis": 0.9, "acc/qd2incons": 0.8, "acc/d1consis": d1,
            "acc/d2consis": d2, "gap/ocl": 0.1, "gap/meta_ocl": d1 - d2, "train/loss": 1.0}


def _write_sweep(tmp_path, grid: str, shift_by=None):
    path = tmp_path / "uigrid.yaml"
    path.write_text(SWEEP_YAML.replace("{GRID}", grid))
    sweep = load_sweep(str(path))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker.for_sweep(sweep, uri)
    for trial in sweep.trials():
        run_id = tracker.start_trial(trial, sweep.name, sweep.kind)
        shift = shift_by(trial) if shift_by else 0.0
        for epoch in (1, 2):
            tracker.log_metrics(run_id, _metrics(trial.seed, epoch, shift))
        tracker.end_trial(run_id, ok=True)
    tracker.end(True)
    return uri, tracker


def _history(client, run_id, key):
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_parent_carries_means_t_cis_and_verdicts(tmp_path):
    from mlflow.tracking import MlflowClient

    uri, tracker = _write_sweep(tmp_path, "{}")
    lines = log_sweep_aggregates(uri, tracker.parent_id)
    client = MlflowClient(uri)
    exp = client.get_experiment(tracker.experiment_id)
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    parent = client.get_run(tracker.parent_id)

    gaps = {s: [D1[s][1] - D2[s][1] for s in D1] for s in (2,)}[2]  # epoch 2: 0.05, 0.07, 0.09
    mean = sum(gaps) / 3
    half = stats.t.ppf(0.975, 2) * stats.tstd(gaps) / math.sqrt(3)  # hand-computed t interval
    got = {k: _history(client, tracker.parent_id, k) for k in ("gap/meta_ocl", "gap/meta_ocl_lo", "gap/meta_ocl_hi")}
    assert got["gap/meta_ocl"][2] == pytest.approx(mean)
    assert got["gap/meta_ocl_lo"][2] == pytest.approx(mean - half)
    assert got["gap/meta_ocl_hi"][2] == pytest.approx(mean + half)
    assert got["gap/meta_ocl"][1] == pytest.approx((0.0 + 0.02 + 0.04) / 3)
    assert _history(client, tracker.parent_id, "acc/d1consis")[1] == pytest.approx(0.52)
    # constant across seeds: zero-width interval, as the report's statistics define it
    assert _history(client, tracker.parent_id, "gap/ocl_lo")[2] == pytest.approx(0.1)
    assert "train/loss" not in parent.data.metrics  # per-trial metrics stay on the trials

    assert parent.data.tags["metaocl.verdict.meta_ocl"].startswith("meta-OCL reproduced: d1consis - d2consis = +0.070")
    # identical gaps in 3 seeds: exact sign-flip p = 2/2^3, which no 3 seeds can beat
    assert parent.data.tags["metaocl.verdict.ocl"].startswith("OCL inconclusive: qd1consis - qd2incons = +0.100 "
                                                              "[0.100, 0.100], p=0.250, 3 seeds")
    assert parent.data.tags["metaocl.verdict.meta_ocl"] in lines
    assert parent.data.tags["metaocl.seeds"] == "0,1,2"
    assert parent.data.tags[SWEEP_RUN_TAG] == tracker.parent_id
    assert parent.data.params["train.stage1_epochs"] == "2" and "seed" not in parent.data.params

    # the run's page: its description (Markdown) holds the verdict table, the seeds and the report command
    note = parent.data.tags[NOTE_TAG]
    assert note.startswith("### OCL inconclusive; meta-OCL reproduced\n")
    assert "- meta-OCL reproduced: d1consis - d2consis = +0.070 [" in note
    assert "| (all) | meta-OCL: d1consis - d2consis | 1 | +0.070 |" in note
    assert "- 3 seeds counted (3 finished trial runs; seeds 0, 1, 2)" in note
    assert f"`metaocl report uigrid --parent {tracker.parent_id}`" in note
    assert exp.tags[NOTE_TAG] == "tiny set-inclusion grid for the UI aggregates test"  # the experiment's page

    # a second call (e.g. --resume of an ended sweep) does not append a second curve
    log_sweep_aggregates(uri, tracker.parent_id)
    assert len(client.get_metric_history(tracker.parent_id, "gap/meta_ocl")) == 2


def test_grid_gets_one_configuration_run_per_grid_point(tmp_path):
    from mlflow.tracking import MlflowClient

    uri, tracker = _write_sweep(tmp_path, "{train.batch_size: [32, 64]}",
                                shift_by=lambda t: 0.1 if t.grid_values["train.batch_size"] == 64 else 0.0)
    log_sweep_aggregates(uri, tracker.parent_id)
    client = MlflowClient(uri)
    exp_id = tracker.experiment_id
    configs = client.search_runs([exp_id], "tags.`metaocl.role` = 'configuration'")
    assert sorted(r.info.run_name for r in configs) == ["train.batch_size=32", "train.batch_size=64"]
    by_name = {r.info.run_name: r for r in configs}
    r64 = by_name["train.batch_size=64"]
    assert r64.data.tags["mlflow.parentRunId"] == tracker.parent_id
    assert r64.data.tags[SWEEP_RUN_TAG] == tracker.parent_id
    assert json.loads(r64.data.tags["metaocl.grid"]) == {"train.batch_size": 64}
    assert r64.data.params["train.batch_size"] == "64" and "seed" not in r64.data.params
    assert r64.info.status == "FINISHED"
    assert _history(client, r64.info.run_id, "gap/meta_ocl")[2] == pytest.approx(0.07 + 0.1)
    assert _history(client, by_name["train.batch_size=32"].info.run_id, "gap/meta_ocl")[2] == pytest.approx(0.07)

    parent = client.get_run(tracker.parent_id)
    assert "gap/meta_ocl" not in parent.data.metrics  # one curve per configuration, not a pooled one
    verdicts = parent.data.tags["metaocl.verdict.meta_ocl"].splitlines()
    assert [v.split(":")[0] for v in verdicts] == ["train.batch_size=32", "train.batch_size=64"]
    assert "train.batch_size" not in parent.data.params
    assert "train.batch_size=32: 3 seeds counted" in parent.data.tags[NOTE_TAG]
    note = r64.data.tags[NOTE_TAG]  # each configuration's page: its own verdicts
    assert "| train.batch_size=64 | meta-OCL: d1consis - d2consis |" in note and "train.batch_size=32" not in note
    assert "- 3 seeds counted (3 finished trial runs; seeds 0, 1, 2)" in note

    # the report reads only trials: the configuration runs never count as seeds
    from metaocl.report.runs import load_invocation

    runs = load_invocation(uri, None, tracker.parent_id)
    assert [len(c.trials) for c in runs.configurations] == [3, 3]

    log_sweep_aggregates(uri, tracker.parent_id)  # made afresh: the old ones are deleted
    again = client.search_runs([exp_id], "tags.`metaocl.role` = 'configuration'")
    assert len(again) == 2 and not {r.info.run_id for r in again} & {r.info.run_id for r in configs}


# --------------------------------------------------------------------------------------------
# The link `metaocl ui` prints
# --------------------------------------------------------------------------------------------
def test_link_opens_the_newest_sweep_in_chart_view(tmp_path):
    from mlflow.tracking import MlflowClient

    uri, grid = _write_sweep(tmp_path, "{train.batch_size: [32, 64]}")
    log_sweep_aggregates(uri, grid.parent_id)
    grid_start = MlflowClient(uri).get_run(grid.parent_id).info.start_time  # ms: the next sweep starts later
    wait_for(lambda: time.time() * 1000 > grid_start + 1, "the clock to pass the first sweep's start")
    sweep = load_sweep("quickstart", smoke=True)
    single = SweepTracker.for_sweep(sweep, uri)  # newer, in another experiment
    client = MlflowClient(uri)
    # a `metaocl run` parent (its own experiment, invocation=run) is never "the newest sweep"
    run_only = SweepTracker(uri, "metaocl/quickstart-smoke-run", "s0",
                            {"metaocl.role": "sweep", "metaocl.invocation": "run"})
    run_only.start_parent()

    views = sweep_views(client)
    assert [v.experiment_name for v in views] == ["metaocl/quickstart-smoke", "metaocl/uigrid"]
    assert views[0].parent_run_id == single.parent_id
    link = views[1].link("http://127.0.0.1:5000")
    path, _, query = link.partition("?")
    assert path == f"http://127.0.0.1:5000/#/experiments/{grid.experiment_id}/runs"
    q = urllib.parse.parse_qs(query)
    assert q["compareRunsMode"] == ["CHART"] and q["workflowType"] == ["machine_learning"]

    state = json.loads(client.get_experiment(grid.experiment_id).tags[VIEW_TAG_PREFIX + q["viewStateShareKey"][0]])
    assert state["searchFilter"] == f"tags.`{SWEEP_RUN_TAG}` = '{grid.parent_id}'"
    listed = client.search_runs([grid.experiment_id], state["searchFilter"])
    assert sorted(r.data.tags["metaocl.role"] for r in listed) == ["configuration"] * 2 + ["sweep"] + ["trial"] * 6
    assert state["orderByKey"] == "tags.`metaocl.role`" and state["orderByAsc"] is True
    assert state["selectedColumns"][:2] == ["params.`train.batch_size`", "params.`seed`"]
    charts = {c["metricKey"]: c for c in state["compareRunCharts"]}
    assert charts["gap/meta_ocl"]["selectedMetricKeys"] == ["gap/meta_ocl", "gap/meta_ocl_lo", "gap/meta_ocl_hi"]
    assert not charts["gap/meta_ocl"]["deleted"] and charts["gap/meta_ocl_lo"]["deleted"]
    first = state["compareRunSections"][0]["uuid"]
    assert [c["metricKey"] for c in state["compareRunCharts"] if c["metricSectionId"] == first and not c["deleted"]][:2] \
        == ["gap/meta_ocl", "gap/ocl"]
    assert "acc/d1consis" in charts


def test_ui_without_a_store_is_one_line_and_writes_nothing(in_tmp):
    proc = subprocess.run([sys.executable, "-m", "metaocl.cli", "ui"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"metaocl: error: no MLflow store at {in_tmp / 'mlflow.db'}: "
                                                "run a sweep here first, or pass --tracking-uri"]
    assert list(in_tmp.iterdir()) == []


# --------------------------------------------------------------------------------------------
# The server: up on loopback, and gone after SIGTERM
# --------------------------------------------------------------------------------------------
def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


class _Lines:
    """Collects a process's output lines in a thread (so waiting on them never blocks)."""

    def __init__(self, stream):
        self.lines: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, proc, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((line for line in self.lines if text in line), None)
            if hit is not None:
                return hit
            assert proc.poll() is None, "\n".join(self.lines)
            time.sleep(0.2)
        raise AssertionError(f"no line with {text!r} within {timeout} s:\n" + "\n".join(self.lines))


def _alive(p) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.slow
def test_ui_serves_the_store_and_sigterm_stops_every_process(tmp_path):
    uri, tracker = _write_sweep(tmp_path, "{}")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "metaocl.cli", "ui", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = _Lines(proc.stdout)
    try:
        out.wait_for("MLflow UI is up", proc, 240)
        # once the server answers: the links (the newest sweep's charts, the home page in the
        # model-training view), and nothing of the server's own log in between
        link = next(line for line in out.lines if "viewStateShareKey=" in line).strip()
        assert link.startswith(f"http://127.0.0.1:{port}/#/experiments/{tracker.experiment_id}/runs?")
        assert any("newest sweep: run uigrid-" in line and "metaocl/uigrid (3 trial runs)" in line for line in out.lines)
        assert out.lines[-2] == HOME_HINT and out.lines[-1].startswith("MLflow UI is up")
        base = f"http://127.0.0.1:{port}"
        for _ in range(3):
            with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=metaocl/uigrid",
                                        timeout=10) as r:
                assert b"custom_model_development" in r.read()
        log = tmp_path / "mlflow-ui.log"
        assert log.exists()
        assert not [line for line in out.lines if "GET /" in line or "HTTP/1.1" in line]  # no access log
        assert "get-by-name" not in log.read_text()  # access logs off, not moved
        # what the server started: the MLflow CLI, uvicorn, MLflow's job runner and its consumers
        started = psutil.Process(proc.pid).children(recursive=True)
        assert len(started) >= 3, [p.cmdline() for p in started]
        assert not [p for p in started if p.pid != proc.pid and os.getsid(p.pid) == os.getsid(proc.pid)]

        proc.send_signal(signal.SIGTERM)  # to `metaocl ui` alone, as `docker stop` or `kill` does
        assert proc.wait(timeout=30) == 0
        left = [p for p in started if _alive(p)]
        port_open = _port_open(port)
        assert not left, [p.cmdline() for p in left]
        assert not port_open
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in psutil.Process().children(recursive=True):  # never leave a server behind
            try:
                if "mlflow" in " ".join(p.cmdline()):
                    p.kill()
            except psutil.Error:
                pass


def test_interim_verdicts_count_the_finished_trials_then_the_final_ones_replace_them(tmp_path):
    """While the sweep runs, the parent's verdict tags hold the verdicts over the trials finished so
    far (a RUNNING trial is not counted) and say so; the end of the sweep writes the final ones."""
    from mlflow.tracking import MlflowClient

    from metaocl.report.publish import log_interim_verdicts

    uri, tracker = _write_sweep(tmp_path, "{}")
    client = MlflowClient(uri)
    running = tracker.trial_runs["s2"]
    client.update_run(running, status="RUNNING")
    log_interim_verdicts(uri, tracker.parent_id, 2, 3)
    tag = client.get_run(tracker.parent_id).data.tags["metaocl.verdict.meta_ocl"]
    # seeds 0 and 1 at epoch 2: gaps 0.05 and 0.07
    assert tag.startswith("meta-OCL inconclusive: d1consis - d2consis = +0.060 ") and ", 2 seeds " in tag
    assert tag.endswith(" (so far: 2 of 3 trials)")
    assert client.get_run(tracker.parent_id).data.tags[NOTE_TAG].startswith(
        "### OCL inconclusive; meta-OCL inconclusive (so far: 2 of 3 trials)")
    client.set_terminated(running, "FINISHED")
    log_sweep_aggregates(uri, tracker.parent_id)
    tag = client.get_run(tracker.parent_id).data.tags["metaocl.verdict.meta_ocl"]
    assert tag.startswith("meta-OCL reproduced: d1consis - d2consis = +0.070") and "so far" not in tag


@pytest.mark.slow
def test_ui_killed_with_sigkill_takes_its_server_down(tmp_path):
    """`metaocl ui` itself gets SIGKILL (no handler runs): the kernel's parent-death signal stops the
    MLflow server it started, and with it every process the server started; the port closes."""
    _write_sweep(tmp_path, "{}")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "metaocl.cli", "ui", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = _Lines(proc.stdout)
    started = []
    try:
        out.wait_for("MLflow UI is up", proc, 240)
        started = psutil.Process(proc.pid).children(recursive=True)
        assert started and _port_open(port)
        proc.kill()  # SIGKILL to `metaocl ui` alone: the server is in a session of its own
        proc.wait(timeout=30)
        wait_for(lambda: not [p for p in started if _alive(p)] and not _port_open(port),
                 "the server's processes to end and its port to close", timeout=120, every=0.5)
    finally:
        for p in started:  # never leave a server behind
            try:
                p.kill()
            except psutil.Error:
                pass
