"""Stage-1 units: planning (which trials share a unit), the searcher's order (units first, a unit's
trials only after it completed, nothing suggested while waiting), its save/restore, and the
stage-1 store in a folder (written once, complete only with its reports)."""

import re

import pytest
from ray.tune.search import Searcher

from metaocl.config import kind, load_sweep
from metaocl.sweep import stage1
from metaocl.sweep.stage1 import Stage1FirstSearcher


def two_stage(n_stage1: int, seeds: int, *extra: str, tmp=None):
    import tempfile
    from pathlib import Path

    text = (f"name: s1\ndescription: test\nkind: lm\nbase:\n  data: {{source: cvdb_sample, n_entities: 60, stages: two_stage}}\n"
            f"  model: {{name: tiny-gpt-neox}}\n  train: {{epochs: [3, 2], batch_size: 32, stage1_cache: s1}}\n"
            f"grid:\n  train.stage1_seed: {list(range(n_stage1))}\nseeds: {seeds}\n")
    path = Path(tempfile.mkdtemp()) / "s1.yaml"
    path.write_text(text)
    return {t.trial_id: t for t in load_sweep(str(path), overrides=list(extra)).trials()}


def test_plan_groups_trials_by_stage1_seed():
    trials = two_stage(2, 3)
    units, unit_of = stage1.plan(trials, kind("lm"))
    assert list(units) == ["p00_stage1", "p01_stage1"]
    assert units["p00_stage1"].members == ["p00_s0", "p00_s1", "p00_s2"]
    assert units["p01_stage1"].trial.seed == 1 and units["p01_stage1"].trial.config.seed == 1
    assert unit_of == {tid: tid[:3] + "_stage1" for tid in trials}
    expected = stage1.expected_reports(trials, units, unit_of, kind("lm"))
    assert expected["p00_stage1"] == 3 and expected["p00_s0"] == 2  # smoke epochs [3, 2]


def test_plan_leaves_trials_alone_without_the_stage1_cache():
    trials = two_stage(2, 2, "train.stage1_cache=null")
    assert stage1.plan(trials, kind("lm")) == ({}, {})


def test_stage2_from_epoch_cuts_the_branch_and_keys_the_unit():
    trials = two_stage(1, 2, "train.stage2_from_epoch=2")
    units, _ = stage1.plan(trials, kind("lm"))
    lm = kind("lm")
    assert [s.units for s in lm.shared.unit_stages(units["p00_stage1"].trial.config)] == [3]  # stage 1 whole
    assert [s.units for s in lm.stages(trials["p00_s0"].config)] == [2, 2]  # a trial: stage 1 cut at epoch 2
    other = two_stage(1, 2)
    assert lm.shared.key(trials["p00_s0"].config) != lm.shared.key(other["p00_s0"].config)


def test_stage2_from_the_authors_label_is_worked_out_from_the_built_stage1_rows(capsys):
    """cptN (the authors' label) resolves in the trial: 240 stage-1 rows at batch 32 are 8 slices, so
    checkpoints every epoch sit at steps 8, 16, 24, 32; sorted as strings (16, 24, 32, 8) the run
    labelled cpt4 starts from epoch 1, cpt1 from epoch 2. The plan counts stage 1 whole until then."""
    from metaocl.experiments.lm import engine_dataset, resolve_stage2_start

    lm = kind("lm")
    trials = two_stage(1, 2, "train.epochs=[4,2]", "train.stage2_from_epoch=cpt4", "train.authors_save_each_epochs=1")
    config = trials["p00_s0"].config
    dataset = engine_dataset(config)
    assert len(dataset["train_1"]) == 240
    assert [s.units for s in lm.stages(config)] == [4, 2]  # planning: not known before the data is built
    resolved = resolve_stage2_start(config, dataset)
    assert resolved.train.stage2_from_epoch == 1 and [s.units for s in lm.stages(resolved)] == [1, 2]
    assert "stage 2 starts from stage-1 epoch 1: the authors' cpt4 run (240 stage-1 rows" in capsys.readouterr().out
    assert [config.stage2_start(240) for config in (
        two_stage(1, 1, "train.epochs=[4,2]", f"train.stage2_from_epoch=cpt{n}", "train.authors_save_each_epochs=1")
        ["p00_s0"].config for n in (1, 2, 3))] == [2, 3, None]  # cpt3 = epoch 4 = the end of stage 1
    assert resolve_stage2_start(resolved, dataset) is resolved  # an epoch (or null) stays as it is
    # the unit key holds the label: every trial of the stage-1 seed resolves it from the same rows
    assert lm.shared.key(config) != lm.shared.key(two_stage(1, 2, "train.epochs=[4,2]")["p00_s0"].config)


@pytest.mark.parametrize("sets, message", [
    (["train.stage2_from_epoch=cpt4"], "needs train.authors_save_each_epochs"),
    (["train.stage2_from_epoch=cpt5", "train.authors_save_each_epochs=2"], "cpt2, cpt4, ... up to the 4 stage-1"),
    (["train.stage2_from_epoch=cpt8", "train.authors_save_each_epochs=2"], "cpt2, cpt4, ... up to the 4 stage-1"),
    (["train.stage2_from_epoch=epoch3"], "must be a stage-1 epoch, null (the end of stage 1) or cptN"),
    (["train.stage2_from_epoch=5"], "must be a stage-1 epoch (1..4)"),
])
def test_stage2_from_epoch_errors_name_the_field(sets, message):
    from metaocl.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        two_stage(1, 1, "train.epochs=[4,2]", *sets)


def searcher_for(n_units: int, per_unit: int, alone: int = 0):
    units = [{"trial_id": f"u{u}"} for u in range(n_units)]
    waiting = {f"u{u}": [{"trial_id": f"u{u}_t{i}"} for i in range(per_unit)] for u in range(n_units)}
    return Stage1FirstSearcher(units, [{"trial_id": f"a{i}"} for i in range(alone)], waiting,
                               {f"u{u}": "/nonexistent/metaocl-test-store" for u in range(n_units)})


def test_searcher_suggests_units_first_and_a_units_trials_only_after_it_completed():
    s = searcher_for(2, 2, alone=1)
    got = [s.suggest(f"tune{i}") for i in range(3)]
    assert [g["trial"]["trial_id"] for g in got] == ["u0", "u1", "a0"]
    assert s.suggest("tune3") is None and s.suggest("tune3") is None  # both units still train: ask later
    s.on_trial_complete("tune1")  # u1 done
    assert [s.suggest(f"tune{i}")["trial"]["trial_id"] for i in (3, 4)] == ["u1_t0", "u1_t1"]
    assert s.suggest("tune5") is None
    s.on_trial_complete("tune0", error=True)  # u0 failed for good: its trials go (and train stage 1 themselves)
    assert [s.suggest(f"tune{i}")["trial"]["trial_id"] for i in (5, 6)] == ["u0_t0", "u0_t1"]
    assert s.suggest("tune7") == Searcher.FINISHED
    assert s.order == ["u0", "u1", "a0", "u1_t0", "u1_t1", "u0_t0", "u0_t1"]


def test_searcher_state_survives_save_and_restore(tmp_path):
    s = searcher_for(1, 2)
    assert s.suggest("t0")["trial"]["trial_id"] == "u0"
    s.save(str(tmp_path / "searcher.pkl"))
    restored = searcher_for(1, 2)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("t1") is None
    restored.on_trial_complete("t0")
    assert restored.suggest("t1")["trial"]["trial_id"] == "u0_t0"


def test_searcher_releases_trials_of_a_unit_found_complete_in_storage(tmp_path):
    """A unit that completed under a driver killed before Ray saved it: its model in storage is enough."""
    from metaocl.experiments import stage1_cache

    store = str(tmp_path / "stage1" / "key")
    s = Stage1FirstSearcher([{"trial_id": "u0"}], [], {"u0": [{"trial_id": "t0"}]}, {"u0": store})
    s.POLL_S = 0.0
    s.suggest("x0")
    assert s.suggest("x1") is None
    stage1_cache.publish_complete(store, [{"epoch": 1.0}])
    assert s.suggest("x1")["trial"]["trial_id"] == "t0"


class _Collect(list):
    def __call__(self, metrics):
        self.append({k: v for k, v in metrics.items() if not k.startswith("perf/")})


@pytest.mark.slow
def test_an_lm_trial_run_whole_starts_stage2_from_the_model_a_unit_hands_on(tmp_path):
    """Known answer, cut at stage-1 epoch 2 of 3 under the linear schedule: a stage-1 unit trains all
    3 epochs and hands on its epoch-2 model; a trial run whole in one process (no unit) stops stage 1
    at epoch 2 on the same schedule, so both report the same stage 1 up to the cut and the same stage 2."""
    from metaocl.experiments import lm

    trials = two_stage(1, 1, "train.stage2_from_epoch=2", "train.epochs=[3,1]")
    config = trials["p00_s0"].config
    assert config.train.lr_schedule == "linear"
    store = str(tmp_path / "unit")
    unit, branch, whole = _Collect(), _Collect(), _Collect()
    lm.run_stage1(config, unit, store)
    lm.run_branch(config, branch, store)
    import dataclasses

    lm.run(dataclasses.replace(config, train=dataclasses.replace(config.train, stage1_cache=None)), whole)
    assert [r["epoch"] for r in unit] == [1.0, 2.0, 3.0] and [r["epoch"] for r in branch] == [3.0]
    assert [r["epoch"] for r in whole] == [1.0, 2.0, 3.0]
    assert whole[:2] == unit[:2]
    assert whole[2] == branch[0]
