"""Language-model and MNIST smoke sweeps through a real local Ray instance, killed and resumed.

Each sweep runs as ``metaocl sweep`` in its own process (and session, with its own local Ray), is
killed with SIGKILL (driver, Ray and trials at once) as soon as one trial has finished, and is then
continued with ``--resume``. Checked: no finished trial trains again, one MLflow run per trial with
each evaluation logged once, the progress lines count every evaluation, and (LM) the trials of one
stage-1 seed branch from one stage-1 unit, trained once. Sizes are the smallest that keep two trials
running side by side on 2 cores.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from processes import kill_session, ray_env, start, stop, wait_for

pytestmark = pytest.mark.slow


def sweep_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "metaocl.cli", "sweep", *args]


def env_for(tmp: Path) -> dict:
    # progress lines for every report (no rate limit), data and stage-1 cache under tmp, offline
    return ray_env(METAOCL_DATA=str(tmp / "data"), METAOCL_PROGRESS_INTERVAL="0", HF_HUB_OFFLINE="1")


def attempts(storage: Path) -> list[str]:
    return [json.loads(p.read_text())["trial_id"] for p in sorted(storage.glob("*/metaocl/attempts/*.json"))]


def finished_markers(storage: Path) -> set[str]:
    return {p.name for p in storage.glob("*/metaocl/finished/*")}


def run_killed_then_resumed(tmp: Path, args: list[str]) -> tuple[set[str], list[str], str]:
    """Start the sweep, SIGKILL it when a first trial has finished, resume it to the end.

    Returns the trials finished before the kill, the attempts started before it, and the resumed run's output."""
    storage = tmp / "metaocl-results"
    log = tmp / "first.log"
    proc = start(sweep_cmd(args), log, env=env_for(tmp), cwd=tmp)
    try:
        wait_for(lambda: finished_markers(storage) or proc.poll() is not None, "a first trial to finish",
                 timeout=400, every=0.1)
        kill_session(proc)
    finally:
        stop(proc)
    done = finished_markers(storage)
    assert done, log.read_text()[-3000:]
    before = attempts(storage)
    log = tmp / "resumed.log"
    proc = start(sweep_cmd(args + ["--resume"]), log, env=env_for(tmp), cwd=tmp)
    try:
        code = proc.wait(timeout=400)
    finally:
        stop(proc)
    out = log.read_text()
    assert code == 0, out[-3000:]
    return done, before, out


def mlflow_children(tmp: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("metaocl.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("metaocl.role") == "trial"]
    return client, parents, children


def check_resumed(tmp: Path, experiment: str, trial_ids: list[str], metric: str, steps: list[int],
                  done: set[str], before: list[str], out: str, name: str, evals: int) -> None:
    after = attempts(tmp / "metaocl-results")
    for tid in done:  # a trial finished before the kill never trained again
        assert after.count(tid) == before.count(tid), (tid, before, after)
    assert set(after) == set(trial_ids)
    client, parents, children = mlflow_children(tmp, experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["metaocl.trial_id"] for r in children) == sorted(trial_ids)  # none duplicated
    for r in children:
        assert r.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(r.info.run_id, metric)] == steps  # each once
    total = evals * len(trial_ids)
    # progress of the resumed invocation: earlier trials count as done, every evaluation counted once
    assert f"{name}: {len(trial_ids)} done, 0 running, 0 failed; {total}/{total} evals" in out, out[-3000:]
    assert f"trials: {len(trial_ids)} done, 0 failed" in out


def test_lm_two_stage_smoke_killed_between_stage1_and_stage2_and_resumed(tmp_path):
    """3 trials sharing one stage-1 seed: the stage-1 unit trains first (alone), the sweep is killed
    as soon as something finished (the unit: between stage 1 and stage 2), and the resumed sweep
    runs the three stage-2 trials from the unit's model in storage; stage 1 is never trained again."""
    from metaocl.report.runs import load_invocation

    args = ["two_stage", "--smoke", "--seeds", "3", "--set", "train.epochs=[2,1]"]
    done, before, out = run_killed_then_resumed(tmp_path, args)
    assert "p00_stage1" in done, done  # the unit finishes before any of its trials starts
    after = attempts(tmp_path / "metaocl-results")
    assert after.count("p00_stage1") == before.count("p00_stage1") == 1  # stage 1 trained once, in all
    assert set(after) == {"p00_stage1", "p00_s0", "p00_s1", "p00_s2"}
    stores = list((tmp_path / "metaocl-results").glob("*/metaocl/stage1/*/complete.json"))
    assert len(stores) == 1
    client, parents, children = mlflow_children(tmp_path, "metaocl/two_stage-smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    exp = client.get_experiment_by_name("metaocl/two_stage-smoke")
    units = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("metaocl.role") == "stage1"]
    assert [r.data.tags["metaocl.trial_id"] for r in units] == ["p00_stage1"]
    assert [m.step for m in client.get_metric_history(units[0].info.run_id, "em/qd1consis")] == [1, 2]
    assert sorted(r.data.tags["metaocl.trial_id"] for r in children) == ["p00_s0", "p00_s1", "p00_s2"]
    for r in children:  # each trial logs its own stage once, linked to the unit's run
        assert r.info.status == "FINISHED"
        assert r.data.tags["metaocl.stage1_run"] == units[0].info.run_id
        assert [m.step for m in client.get_metric_history(r.info.run_id, "em/qd1consis")] == [3]
    runs = load_invocation(f"sqlite:///{tmp_path / 'mlflow.db'}", "metaocl/two_stage-smoke")
    trials = [t for c in runs.configurations for t in c.trials]
    assert len(trials) == 3 and all(sorted(t.history["em/qd1consis"]) == [1, 2, 3] for t in trials)  # stitched
    assert "two_stage: stage 1: 1/1 units · trials: 3/3 done, 0 running, 0 failed; 5/5 evals" in out, out[-3000:]
    assert "trials: 3 done, 0 failed" in out


def test_mnist_smoke_killed_and_resumed(tmp_path):
    """3 trials (one grid point pinned, 3 seeds), 2 at a time, 2 evaluations each."""
    args = ["mnist", "--smoke", "--seeds", "3", "--set", "data.n_pairs=20", "--set", "train.steps=60",
            "--set", "train.eval_every=30", "--set", "train.warmup_steps=5", "--set", "train.batch_size=16",
            "--set", "eval.batches=1", "--set", "eval.batch_size=32"]
    done, before, out = run_killed_then_resumed(tmp_path, args)
    ids = ["s0", "s1", "s2"]
    check_resumed(tmp_path, "metaocl/mnist-smoke", ids, "acc/qd1consis", [30, 60], done, before, out, "mnist", evals=2)


def test_config_error_inside_a_trial_is_not_retried(tmp_path):
    """block_size too small for the data: only the trial finds out (after tokenizing); the sweep file
    allows 3 retries, yet the trial fails at its first attempt with the error's one line."""
    args = ["two_stage", "--smoke", "--seeds", "1", "--set", "train.faithful_padding=true",
            "--set", "train.block_size=4"]
    log = tmp_path / "sweep.log"
    proc = start(sweep_cmd(args), log, env=env_for(tmp_path), cwd=tmp_path)
    try:
        code = proc.wait(timeout=400)
    finally:
        stop(proc)
    out = log.read_text()
    assert code == 1, out[-3000:]
    # one attempt each, no retry: the stage-1 unit finds the error first and releases its trial, which
    # (training stage 1 itself) finds it too
    assert sorted(attempts(tmp_path / "metaocl-results")) == ["p00_s0", "p00_stage1"]
    row = next(line for line in out.splitlines() if line.startswith("p00_s0 "))
    assert row.split()[1:3] == ["FAILED", "0"] and "train.block_size: a datapoint has" in row, out[-3000:]
    assert "trials: 0 done, 1 failed, 0 retried" in out
    client, parents, children = mlflow_children(tmp_path, "metaocl/two_stage-smoke")
    assert [r.info.status for r in children] == ["FAILED"]
    assert "train.block_size" in children[0].data.tags["metaocl.error"]
