"""A smoke sweep through a real local Ray instance into a real MLflow store."""

import json

import pytest

from metaocl.cli import main

pytestmark = pytest.mark.slow


def test_quickstart_smoke_sweep_end_to_end(capsys, in_tmp):
    assert main(["sweep", "quickstart", "--smoke", "--set", "train.checkpoint_minutes=0"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    # progress (no terminal here): lines per trial, and the final counts of the sweep
    assert "[s0] epoch 1, eval 1/3, stage 1: acc qd1consis" in captured.err
    assert captured.err.rstrip().endswith("quickstart: 2 done, 0 running, 0 failed; 6/6 evals")
    assert "after stage 1" in out and "after stage 2" in out
    assert "OCL" in out and "meta-OCL" in out
    assert "trials: 2 done, 0 failed" in out
    assert (in_tmp / "mlflow.db").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("metaocl/quickstart-smoke")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("metaocl.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("metaocl.role") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    # the interim verdicts (written when the first trial finished) are replaced by the final ones
    assert "could not log" not in captured.err
    assert "so far" not in parents[0].data.tags["metaocl.verdict.meta_ocl"]
    assert parents[0].data.tags["metaocl.invocation"] == "sweep" and len(parents[0].data.tags["metaocl.fingerprint"]) == 16
    assert {r.data.tags["seed"] for r in children} == {"0", "1"}
    for r in children:
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert json.loads(r.data.tags["metaocl.grid"]) == {}
        assert r.data.params["data.n_variables"] == "200"
        for subset in ("qd1consis", "qd2incons", "d1consis", "d2consis"):
            history = client.get_metric_history(r.info.run_id, f"acc/{subset}")
            assert [m.step for m in history] == [1, 2, 3]
        assert [m.value for m in client.get_metric_history(r.info.run_id, "stage")] == [1, 1, 2]
        assert [a.path for a in client.list_artifacts(r.info.run_id)] == ["config.yaml"]

    # Checkpoints: written once into the experiment folder's metaocl/checkpoints/<trial>/, none through
    # Ray; each finished trial keeps exactly its last one (checkpoint_minutes 0: after epoch 1 (seq 0)
    # and at stage 2's start (seq 1); none at the trial's end).
    from metaocl.experiments.checkpoints import LATEST, TrialCheckpoints

    (exp_dir,) = (in_tmp / "metaocl-results").iterdir()
    assert not list(exp_dir.glob("*/checkpoint_*"))  # Ray holds no copy
    for tid in ("s0", "s1"):
        store = TrialCheckpoints(str(exp_dir), tid)
        record = store.latest()
        assert record["seq"] == 1 and store.files() == sorted([record["file"], LATEST])
        assert (store.load()["stage"], store.load()["epoch"]) == (2, 0)
        rows = client.get_metric_history(next(r for r in children if r.data.tags["seed"] == tid[1:]).info.run_id,
                                          "perf/checkpoints")
        assert [m.value for m in rows][-1] == 2


def test_resume_tries_a_failed_trial_again_in_its_own_run(in_tmp, capsys):
    """A sweep ends with one trial FAILED (device meta: torch cannot train there, in every attempt);
    `--resume` tries that trial again (the finished one is not trained again), in the same MLflow run:
    no second run, still FAILED with its error, one sweep run."""
    from mlflow.tracking import MlflowClient

    path = in_tmp / "halffails.yaml"
    path.write_text("name: halffails\ndescription: one trial fails\nkind: set_inclusion\n"
                    "base:\n  data: {n_variables: 60}\n"
                    "  model: {hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}\n"
                    "  train: {stage1_epochs: 1, stage2_epochs: 1, batch_size: 128}\n"
                    "grid: {device: [cpu, meta]}\nseeds: 1\nresources: {cpu: 1, gpu: 0}\nmax_failures: 0\n")
    assert main(["sweep", str(path)]) == 1
    first = capsys.readouterr().out
    assert "trials: 1 done, 1 failed" in first, first
    assert main(["sweep", str(path), "--resume"]) == 1
    out = capsys.readouterr().out
    assert "trials: 1 done, 1 failed" in out, out

    tries = [json.loads(p.read_text())["trial_id"] for p in sorted(in_tmp.glob("metaocl-results/*/metaocl/attempts/*.json"))]
    assert sorted(tries) == ["p00_s0", "p01_s0", "p01_s0"]  # the failed one again, the finished one never
    client = MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("metaocl/halffails")
    runs = client.search_runs([exp.experiment_id])
    assert len([r for r in runs if r.data.tags.get("metaocl.role") == "sweep"]) == 1
    trials = {r.data.tags["metaocl.trial_id"]: r for r in runs if r.data.tags.get("metaocl.role") == "trial"}
    assert sorted(trials) == ["p00_s0", "p01_s0"]  # one run each: the retry reattached, never duplicated
    assert trials["p00_s0"].info.status == "FINISHED"
    assert trials["p01_s0"].info.status == "FAILED" and "meta tensors" in trials["p01_s0"].data.tags["metaocl.error"]
