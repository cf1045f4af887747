"""A report reads exactly one sweep invocation, and the end-of-sweep summary is the report's own numbers.

The stores here are written by the driver's own MLflow writer (:class:`metaocl.tracking.SweepTracker`:
parent run per invocation, child run per trial with the flattened config as params, per-epoch metrics),
with planted per-seed values, so every expected number is known. A RUNNING run is one the writer
never ended, exactly what a killed driver leaves behind.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
from scipy import stats as sps

from metaocl.cli import main
from metaocl.config import ConfigError, load_sweep
from metaocl.report.build import make_report
from metaocl.report.runs import load_invocation
from metaocl.report.summary import summarize_invocation, summarize_trial
from metaocl.tracking import SweepTracker


def planted(seed: int, ocl: float, meta: float) -> list[dict]:
    """Three epochs (stages 1, 1, 2) of a set-inclusion trial; OCL = ``ocl`` at the end of stage 1,
    meta-OCL = ``meta`` at the end of stage 2."""
    rows = []
    for epoch, stage in ((1, 1), (2, 1), (3, 2)):
        row = {"epoch": epoch, "stage": stage, "acc/qd1consis": 0.6 + ocl, "acc/qd2incons": 0.6,
               "acc/d1consis": 0.5 + (meta if stage == 2 else 0.0), "acc/d2consis": 0.5, "train/loss": 1.0 / epoch}
        if epoch == 1:  # values at other epochs must not matter
            row["acc/qd1consis"] = 0.99
        rows.append(row)
    return rows


def write_invocation(uri: str, sweep, values: dict[int, tuple[float, float]], running: tuple[int, ...] = (),
                     finish: bool = True) -> str:
    """One sweep invocation as the driver writes it; ``values``: seed -> (OCL, meta-OCL)."""
    tracker = SweepTracker.for_sweep(sweep, uri)
    for trial in sweep.trials():
        run_id = tracker.start_trial(trial, sweep.name, sweep.kind)
        for row in planted(trial.seed, *values[trial.seed]):
            tracker.log_metrics(run_id, row)
        if trial.seed not in running:
            tracker.end_trial(run_id, ok=True)
    if finish:
        tracker.end(True)
    return tracker.parent_id


def expected(diffs):
    """Mean, hand-computed t interval and p of paired differences."""
    d = np.asarray(diffs, dtype=float)
    se = d.std(ddof=1) / math.sqrt(d.size)
    half = sps.t.ppf(0.975, d.size - 1) * se
    p = 2 * sps.t.sf(abs(d.mean() / se), d.size - 1)
    return f"{d.mean():+.3f} [{d.mean() - half:.3f}, {d.mean() + half:.3f}], p={p:.3f}"


FIRST = {0: (0.20, 0.10), 1: (0.22, 0.12), 2: (0.24, 0.08)}
SECOND = {0: (0.05, 0.01), 1: (0.07, 0.04)}


@pytest.fixture
def store(tmp_path):
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_report_reads_only_the_newest_invocation_and_parent_chooses_another(store, tmp_path, capsys):
    first = load_sweep("quickstart", smoke=True, seeds=3, overrides=["train.lr=0.01"])
    second = load_sweep("quickstart", smoke=True, seeds=2, overrides=["train.lr=0.02"])
    p1 = write_invocation(store, first, FIRST)
    p2 = write_invocation(store, second, SECOND)
    # A `metaocl run` into the same experiment (no parent), trial id s0, absurd values: never read.
    single = SweepTracker(store, second.experiment_name, "s0", {})
    run_id = single.start_trial(second.trials()[0], second.name, second.kind)
    for row in planted(0, -0.5, -0.5):
        single.log_metrics(run_id, row)
    single.end_trial(run_id, ok=True)
    # A per-configuration aggregate run under the newest parent (metaocl.role=configuration): not a trial.
    client = single.client
    agg = client.create_run(single.experiment_id, run_name="aggregate", tags={
        "mlflow.parentRunId": p2, "metaocl.role": "configuration", "metaocl.trial_id": "s1", "metaocl.grid": "{}"})
    client.log_metric(agg.info.run_id, "acc/qd1consis", 0.0, step=2)
    client.set_terminated(agg.info.run_id)

    out = tmp_path / "report"
    assert main(["report", "quickstart", "--smoke", "--tracking-uri", store, "--out", str(out), "--no-log"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"metaocl/quickstart-smoke: sweep invocation {p2}, 2 finished trial runs"
    assert printed[1] == f"OCL inconclusive: qd1consis - qd2incons = {expected([0.05, 0.07])}, 2 seeds (acc, end of stage 1)"
    assert printed[2].startswith(f"meta-OCL inconclusive: d1consis - d2consis = {expected([0.01, 0.04])}, 2 seeds")
    summary = (out / "summary.md").read_text()
    assert f"sweep invocation (parent run) `{p2}` only" in summary and p1 not in summary

    verdicts, runs = make_report("quickstart", store, tmp_path / "old", smoke=True, parent_run_id=p1, log_to_mlflow=False)
    assert runs.parent_run_id == p1 and runs.n_trials == 3
    assert [t.params["train.lr"] for c in runs.configurations for t in c.trials] == ["0.01"] * 3
    assert verdicts[0] == f"OCL reproduced: qd1consis - qd2incons = {expected([0.20, 0.22, 0.24])}, 3 seeds (acc, end of stage 1)"
    assert verdicts[1].startswith(f"meta-OCL reproduced: d1consis - d2consis = {expected([0.10, 0.12, 0.08])}, 3 seeds")

    # --parent must name a sweep run of this experiment: one line, exit 2, nothing written.
    for bad, why in ((run_id, "not a sweep run"), ("0" * 32, "no such run")):
        assert main(["report", "quickstart", "--smoke", "--tracking-uri", store, "--parent", bad,
                     "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert why in err and "\n" not in err and not (tmp_path / "bad").exists()


def test_running_runs_of_a_killed_driver_are_left_out_and_named(store, tmp_path, capsys):
    sweep = load_sweep("quickstart", smoke=True, seeds=3)
    parent = write_invocation(store, sweep, FIRST, running=(2,), finish=False)
    runs = load_invocation(store, sweep.experiment_name)
    assert runs.parent_run_id == parent and runs.n_trials == 2
    (name,) = runs.left_out["RUNNING"]
    assert name.startswith("s2 (run ") and list(runs.left_out) == ["RUNNING"]

    out = tmp_path / "report"
    assert main(["report", "quickstart", "--smoke", "--tracking-uri", store, "--out", str(out), "--no-log"]) == 0
    printed = capsys.readouterr().out
    assert f"left out: 1 running run ({name})" in printed
    assert f"qd1consis - qd2incons = {expected([0.20, 0.22])}, 2 seeds" in printed
    assert f"left out: 1 running run ({name})" in (out / "summary.md").read_text()
    text = summarize_invocation(store, parent)
    assert f"left out: 1 running run ({name})" in text and "(2 seeds; acc, mean [95% CI])" in text

    # `--resume` reattaches to the same parent and finishes s2: still one invocation, now complete.
    tracker = SweepTracker.reattach(store, parent)
    assert tracker.trial_status["s2"] == "RUNNING"
    tracker.end_trial(tracker.trial_runs["s2"], ok=True)
    tracker.end(True)
    runs = load_invocation(store, sweep.experiment_name)
    assert runs.parent_run_id == parent and runs.n_trials == 3 and not runs.left_out


def test_runs_whose_configs_differ_beyond_the_seed_are_refused(store, tmp_path, capsys):
    a = load_sweep("quickstart", smoke=True, seeds=2)
    b = load_sweep("quickstart", smoke=True, seeds=2, overrides=["train.lr=0.5"])
    tracker = SweepTracker.for_sweep(a, store)
    for trial in (a.trials()[0], b.trials()[1]):  # one invocation holding s0 of one config and s1 of another
        run_id = tracker.start_trial(trial, a.name, a.kind)
        for row in planted(trial.seed, 0.1, 0.1):
            tracker.log_metrics(run_id, row)
        tracker.end_trial(run_id, ok=True)
    tracker.end(True)
    with pytest.raises(ConfigError, match=r"differ in train\.lr: '0\.002' vs '0\.5'"):
        load_invocation(store, a.experiment_name)
    assert summarize_invocation(store, tracker.parent_id).startswith("no summary: runs s0 (")
    out = tmp_path / "report"
    capsys.readouterr()  # MLflow's store-creation log lines
    assert main(["report", "quickstart", "--smoke", "--tracking-uri", store, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "refusing to pool them as seeds" in err and "\n" not in err and not out.exists()


def test_summary_and_report_agree_with_a_seed_grid_key(store, tmp_path):
    # two_stage's smoke variant with two stage-1 seeds: 2 x 2 runs, two independent units.
    path = tmp_path / "two_stage.yaml"
    shutil.copy(load_sweep("two_stage", smoke=True).path, path)
    path.write_text(path.read_text().replace("train.stage1_seed: [0]", "train.stage1_seed: [0, 1]"))
    sweep = load_sweep(str(path), smoke=True)
    assert sorted((t.grid_values["train.stage1_seed"], t.seed) for t in sweep.trials()) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    tracker = SweepTracker.for_sweep(sweep, store)
    ocl = {0: 0.2, 1: 0.3}  # shared stage 1: the same OCL for both runs of a stage-1 seed
    meta = {(0, 0): 0.10, (0, 1): 0.14, (1, 0): 0.02, (1, 1): 0.04}
    for trial in sweep.trials():
        s1 = trial.grid_values["train.stage1_seed"]
        run_id = tracker.start_trial(trial, sweep.name, sweep.kind)
        for row in planted(trial.seed, ocl[s1], meta[(s1, trial.seed)]):
            tracker.log_metrics(run_id, {k.replace("acc/", "em/"): v for k, v in row.items()})
        tracker.end_trial(run_id, ok=True)
    tracker.end(True)

    text = summarize_invocation(store, tracker.parent_id)
    verdicts, runs = make_report("two_stage", store, tmp_path / "r", smoke=True, log_to_mlflow=False)
    assert runs.replicate_keys == ["train.stage1_seed"]
    assert verdicts[0] == f"OCL inconclusive: qd1consis - qd2incons = {expected([0.2, 0.3])}, 2 seeds (4 runs) (em, end of stage 1)"
    assert verdicts[1].startswith(f"meta-OCL inconclusive: d1consis - d2consis = {expected([0.12, 0.03])}, 2 seeds (4 runs)")
    assert text.split("verdicts:\n", 1)[1].splitlines() == verdicts
    assert "all trials  (2 seeds (4 runs); em, mean [95% CI])" in text


def test_summary_of_one_trial_from_its_history():
    text = summarize_trial("set_inclusion", "s0", {}, 0, planted(0, 0.2, 0.1))
    lines = text.splitlines()
    assert lines[0] == "all trials  (1 seed; acc, mean [95% CI])"
    assert lines[2].split() == ["qd1consis", "0.800", "0.800"]
    assert lines[-2] == ("OCL inconclusive: qd1consis - qd2incons = +0.200 [no CI], p=n/a, 1 seed "
                         "(need at least 2 seeds for a CI and a test) (acc, end of stage 1)")


def test_trials_branching_from_a_stage1_unit_are_read_whole(tmp_path):
    """A stage-1 unit's run (role stage1) holds epochs 1-2 once; its trials log only epoch 3 and name
    the unit's run: the report reads each trial as epochs 1-3 and never counts the unit as a trial."""
    import dataclasses

    from metaocl.config import Trial
    from metaocl.mlflow_layout import STAGE1_RUN_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = load_sweep("quickstart", smoke=True, seeds=3)
    tracker = SweepTracker.for_sweep(sweep, uri)
    first = sweep.trials()[0]
    unit = tracker.start_trial(Trial("stage1", {}, 0, dataclasses.replace(first.config, seed=0)), sweep.name,
                               sweep.kind, role="stage1")
    diffs = {}
    for row in planted(0, 0.0, 0.0)[:2]:
        tracker.log_metrics(unit, dict(row, **{"acc/qd1consis": 0.8}))  # OCL +0.2 at the end of stage 1
    tracker.end_trial(unit, ok=True)
    for trial in sweep.trials():
        run_id = tracker.start_trial(trial, sweep.name, sweep.kind, extra_tags={STAGE1_RUN_TAG: unit})
        last = planted(trial.seed, 0.0, 0.1 * (trial.seed + 1))[2]
        diffs[trial.seed] = 0.1 * (trial.seed + 1)
        tracker.log_metrics(run_id, last)
        tracker.end_trial(run_id, ok=True)
    tracker.end(True)
    runs = load_invocation(uri, None, tracker.parent_id)
    trials = [t for c in runs.configurations for t in c.trials]
    assert sorted(t.trial_id for t in trials) == sorted(t.trial_id for t in sweep.trials())  # not the unit
    for t in trials:
        assert t.history["acc/qd1consis"] == {1: 0.8, 2: 0.8, 3: 0.6}
        assert t.at_stage_end("acc/qd1consis", 1) == 0.8 and t.stage_ends() == {1: 2, 2: 3}


def test_a_single_stage_summary_shows_only_its_stage():
    """A single-stage run (every epoch stage 1, as the quickstart) has no 'after stage 2' column."""
    rows = [{"epoch": float(e), "stage": 1.0, "acc/qd1consis": 0.6, "acc/qd2incons": 0.5, "acc/d1consis": 0.55,
             "acc/d2consis": 0.5} for e in (1, 2, 3)]
    text = summarize_trial("set_inclusion", "s0", {}, 0, rows)
    assert "after stage 1" in text and "after stage 2" not in text
    assert text.splitlines()[1].split() == ["split", "after", "stage", "1"]
