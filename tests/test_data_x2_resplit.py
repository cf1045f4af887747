"""X2 re-split per stage-2 seed through the LM runner: stage 1 (and so the stage-1 cache) sees the
stage-1 seed's data whatever the trial seed; stages 2.. see the trial seed's X2 split."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch

from metaocl.config import load_sweep
from metaocl.configs.lm_data import X2_SUBSETS
from metaocl.data.qa import build_lm_dataset
from metaocl.experiments import PrintReporter
from metaocl.experiments import lm as lm_runner

torch.set_num_threads(1)
FAST = ["data.n_entities=40", "data.entity_attribution=false"]


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("METAOCL_DATA", str(tmp_path))
    monkeypatch.setenv("METAOCL_TRIAL_CPUS", "1")


def two_stage(*extra):
    trials = load_sweep("two_stage", smoke=True, overrides=FAST + list(extra)).trials()
    assert [t.seed for t in trials] == [0, 1] and all(t.config.train.stage1_seed == 0 for t in trials)
    return [t.config for t in trials]


def x2_assignment(dd) -> dict[str, str]:
    return {e: s for s in X2_SUBSETS if s in dd for e in dd[s]["entity"]}


def test_stage1_view_is_shared_and_later_stages_see_the_trial_seeds_x2_split():
    c0, c1 = two_stage()
    stage1 = lm_runner.engine_dataset(c1)
    assert {k: v.to_dict() for k, v in stage1.items()} == {k: v.to_dict() for k, v in lm_runner.engine_dataset(c0).items()}
    later = lm_runner.engine_dataset(c1, stage=2)
    assert later["train_1"].to_dict() == stage1["train_1"].to_dict()  # stage 1 trains on X1 only
    assert later["qd1consis"].to_dict() == stage1["qd1consis"].to_dict()
    a, b = x2_assignment(stage1), x2_assignment(later)
    assert set(a) == set(b) and Counter(a.values()) == Counter(b.values()) and a != b
    assert later["train_2"].to_dict() == build_lm_dataset(c1.data, 0, x2_seed=1)["train_2"].to_dict()
    assert x2_assignment(lm_runner.engine_dataset(c0, stage=2)) == a  # trial seed == stage-1 seed
    off = dataclasses.replace(c1, data=dataclasses.replace(c1.data, resplit_x2_per_seed=False))
    assert x2_assignment(lm_runner.engine_dataset(off, stage=2)) == x2_assignment(lm_runner.engine_dataset(off))


@pytest.mark.slow
def test_a_stage2_seed_branched_from_the_stage1_cache_equals_its_uncached_run(tmp_path):
    c0, c1 = two_stage("train.epochs=[2,1]")
    lm_runner.run(c0, PrintReporter())  # trains stage 1 and fills the cache
    branched = PrintReporter()
    lm_runner.run(c1, branched)  # stage 1 from the cache (trained under seed 0), stage 2 on seed 1's split
    uncached = PrintReporter()
    lm_runner.run(dataclasses.replace(c1, train=dataclasses.replace(c1.train, stage1_cache=None)), uncached)
    rows = [[{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rep.history] for rep in (branched, uncached)]
    assert len(rows[0]) == len(rows[1]) == sum(c1.epochs)
    for a, b in zip(*rows):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-6) for k in a)
