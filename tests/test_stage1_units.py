"""Stage-1 units: planning (which trials share a unit), the searcher's order (units first, a unit's
trials only after it completed, nothing suggested while waiting), its save/restore, and the
stage-1 store in a folder (written once, complete only with its reports)."""

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
