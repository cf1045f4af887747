"""bench/chaos.py, small: a sweep on a local 3-node Ray cluster (loopback) with an MLflow server loses
nothing under two worker-node kills (each landing on a node with a trial mid-run), a SIGKILL of the
driver followed by --resume, and a restart of the MLflow server. No timing is asserted."""

import pytest

from bench_scripts import load_bench

pytestmark = pytest.mark.slow


def test_small_sweep_under_chaos_finishes_every_trial_once_with_every_step_once(tmp_path):
    chaos = load_bench("chaos")
    trials = 6
    # one trial per worker node at a time (each node's Ray worker runs its trials one after another):
    # 6 trials x 12 evaluations outlast the two kills, each of which lands on a node running a trial
    result = chaos.main(["--trials", str(trials), "--epochs", "8,4", "--trial-cpus", "1", "--raylet-kills", "2",
                         "--kill-every", "5,10", "--chaos-minutes", "20", "--no-calm", "--workdir",
                         str(tmp_path / "work"), "--timeout-minutes", "30"])
    run, got = result["run"], result["check"]
    # the faults happened (each raylet kill on a node that ran a trial at that moment)
    assert (run["raylet_kills"], run["driver_kills"], run["mlflow_restarts"]) == (2, 1, 1), run["events"]
    assert run["exit_code"] == 0, run["logs"]
    # what survived: one sweep run, every trial once and FINISHED, every evaluation logged once
    assert got["parents"] == 1 and got["parent_status"] == ["FINISHED"]
    assert got["trials_once"] and got["trial_runs"] == trials, got
    assert got["duplicated"] == [] and got["missing"] == [] and got["not_finished"] == []
    assert got["bad_steps"] == {}
    # the kills cost attempts, and each retry was one line in the driver's output, never a traceback
    assert got["trials_started"] == trials and got["attempts"] > trials
    assert sum(got["retries"].values()) >= 1 and got["retry_lines"] >= 1, got
    assert got["traceback_lines"] == 0 and got["url_lines"] == 0
