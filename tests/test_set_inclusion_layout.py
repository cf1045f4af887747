"""Set inclusion in the authors' seed layout: 20 stage-1 seeds x 3 stage-2 seeds, X2 re-split per
stage-2 seed, stage 1 trained once per stage-1 seed (a stage-1 unit) and branched from.

The authors (krasheninnikov/internalization at b325ab6): ``configs/num_choice_exps/
pythia70m_tokpervar_bs512_n8_i1{,_d3consis}.yaml`` (``n_seeds: 20``, ``n_seeds_stage2: 3``,
``save_each_epochs: 25``), ``src/experiment_pipeline.py`` (``TwoStageFineTuning``: stage 1 once per
seed, then stage 2 for ``seed_stage2`` in ``range(n_seeds_stage2)``), and
``data_generation/numeric_experiment.py`` (``make_num_selection_dataset``: every datapoint from
``seed``; the X2 indices, sorted, shuffled by ``random.Random(seed_stage2)`` and cut into
d1/d2/d3consis; stage 1 built with ``seed_stage2=0``).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys

import pytest

from metaocl.config import ConfigError, from_dict, kind, load_sweep
from metaocl.configs.set_inclusion import SetInclusionConfig
from metaocl.data.set_inclusion import STAGE2_SUBSETS, SPECIAL, KEYWORDS, Question, generate, subsample
from metaocl.experiments import set_inclusion as si
from metaocl.sweep import stage1

SI = kind("set_inclusion")


def _trials(name: str, **kw) -> dict:
    return {t.trial_id: t for t in load_sweep(name, **kw).trials()}


@pytest.mark.parametrize("name", ["set_inclusion", "set_inclusion_d3consis"])
def test_paper_sweeps_run_20_stage1_units_each_branched_into_3_stage2_seeds(name):
    trials = _trials(name)
    units, unit_of = stage1.plan(trials, SI)
    assert len(trials) == 60 and len(units) == 20
    assert list(units) == [f"p{i:02d}_stage1" for i in range(20)]
    for i in range(20):
        unit = units[f"p{i:02d}_stage1"]
        assert unit.members == [f"p{i:02d}_s{t}" for t in range(3)]  # stage-2 seeds 0, 1, 2 (the authors' range(3))
        assert unit.trial.seed == i and unit.trial.config.stage1_seed == i
        assert {trials[m].config.seed for m in unit.members} == {0, 1, 2}
    assert unit_of == {tid: tid[:3] + "_stage1" for tid in trials}
    assert len({u.key for u in units.values()}) == 20
    reports = stage1.expected_reports(trials, units, unit_of, SI)
    assert reports["p00_stage1"] == 20 and reports["p00_s0"] == 8  # 100 epochs / 5; 40 / 5
    # stage 2 starts from the end of stage 1: the unit trains and hands over all 100 epochs
    assert [(s.number, s.units) for s in SI.shared.unit_stages(units["p00_stage1"].trial.config)] == [(1, 100)]
    assert [(s.number, s.units) for s in SI.stages(trials["p00_s1"].config)] == [(1, 100), (2, 40)]


def _fingerprint(ds) -> str:
    blob = json.dumps([ds.numbers, ds.subsets, ds.definitions, {k: [q.words for q in v] for k, v in ds.train_qa.items()},
                       {k: [q.words for q in v] for k, v in ds.test_qa.items()}, ds.vocab], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def test_quickstart_keeps_its_single_seed_path_and_data():
    """The CPU demo is single-stage and has no stage-1 seed: no units, no per-stage seeds, and its
    data word for word as before the layout existed (fingerprints taken before the change)."""
    trials = _trials("quickstart")
    assert stage1.plan(trials, SI) == ({}, {})
    config = trials["s0"].config
    assert config.train.stage1_seed is None and config.train.joint
    assert [(s.number, s.seed) for s in SI.stages(config)] == [(1, None)]
    assert _fingerprint(si.datasets(config)[1]) == "30217867cd7dc890"
    assert _fingerprint(generate(trials["s1"].config.data, 1)) == "b083f312d365e52b"
    assert stage1.plan(_trials("quickstart", smoke=True), SI) == ({}, {})


TINY = {"data": {"n_variables": 120}, "train": {"stage1_epochs": 2, "stage2_epochs": 1, "batch_size": 64},
        "model": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
        "eval": {"every": 1}, "device": "cpu"}


def tiny(seed: int, stage1_seed: int | None, d3: float = 0.0, **train) -> SetInclusionConfig:
    data = dict(TINY["data"], **({"qd1consis": 0.35, "qd2incons": 0.35, "d3consis": d3} if d3 else {}))
    return from_dict(SetInclusionConfig, dict(TINY, seed=seed, data=data,
                                              train=dict(TINY["train"], stage1_seed=stage1_seed, **train)))


@pytest.mark.parametrize("d3", [0.0, 0.1])
def test_x2_resplit_redraws_only_which_x2_variable_gets_which_tag(d3):
    for s in (0, 1):
        first = si.datasets(tiny(0, s, d3))
        stage1_words = first[1].stage_examples(1)
        x2_vars = sorted(v for sub in STAGE2_SUBSETS for v in first[1].subsets.get(sub, []))
        splits = []
        for t in (0, 1, 2):
            data = si.datasets(tiny(t, s, d3))
            assert data[1].stage_examples(1) == stage1_words  # stage 1 identical for every stage-2 seed
            assert data[1].subsets == first[1].subsets  # stage 1 sees stage-2 seed 0's split (theirs: seed_stage2=0)
            ds = data[2]
            assert ds.numbers == first[1].numbers and ds.vocab == first[1].vocab
            for sub in ("qd1consis", "qd2incons"):
                assert ds.subsets[sub] == first[1].subsets[sub] and ds.test_qa[sub] == first[1].test_qa[sub]
            assert sorted(v for sub in STAGE2_SUBSETS for v in ds.subsets.get(sub, [])) == x2_vars
            assert {sub: len(ds.subsets[sub]) for sub in STAGE2_SUBSETS} == {
                sub: len(first[1].subsets[sub]) for sub in STAGE2_SUBSETS}
            # the known answer: the authors' random.Random(seed_stage2).shuffle of the sorted X2
            # indices (variable order = the vocabulary's), cut in subset order
            order = ds.vocab[len(SPECIAL) + len(KEYWORDS) + ds.max_number + 1:]
            x2 = sorted(order.index(v) for v in x2_vars)
            random.Random(t).shuffle(x2)
            start = 0
            for sub in STAGE2_SUBSETS:
                n = len(ds.subsets[sub])
                assert ds.subsets[sub] == [order[i] for i in sorted(x2[start:start + n])]
                start += n
                words = {d[1] for d in ds.definitions.get(sub, [])}
                assert words == set(ds.subsets[sub])  # definitions and test questions follow the split
                assert {q.words[0] for q in ds.test_qa.get(sub, [])} == set(ds.subsets[sub])
            splits.append(tuple(ds.subsets["d1consis"]))
            assert ds.stage_examples(2) != data[1].stage_examples(2) or t == 0
        assert len(set(splits)) == 3  # every stage-2 seed its own d1consis variables


def test_stage1_key_shares_stage1_only():
    key = SI.shared.key
    assert key(tiny(0, 3)) == key(tiny(1, 3)) == key(tiny(2, 3, stage2_epochs=5, stage2_lr=1e-3))
    assert key(tiny(0, 3)) != key(tiny(0, 4))
    assert key(tiny(0, 3)) != key(tiny(0, 3, stage2_from_epoch=1))
    assert key(tiny(0, None)) is None and key(tiny(0, 3, joint=True)) is None
    assert key(tiny(0, 3, stage2_epochs=0)) is None
    assert [(s.number, s.units) for s in SI.stages(tiny(0, 3, stage2_from_epoch=1))] == [(1, 1), (2, 1)]
    assert [(s.number, s.units) for s in SI.shared.unit_stages(tiny(0, 3, stage2_from_epoch=1))] == [(1, 2)]
    for bad in ({"stage2_from_epoch": 3}, {"stage2_from_epoch": 1, "joint": True}):
        with pytest.raises(ConfigError, match="stage2_from_epoch") as e:
            tiny(0, 3, **bad)
        assert "\n" not in str(e.value)


def test_eval_subsample_is_the_authors_max_eval_samples():
    """Known answer: ``sorted(random.Random(seed).sample(range(n), k))`` per split, order kept, a fresh
    generator per split (equal-size splits keep the same positions); at most k; all when n <= k."""
    qs = [Question([f"v{i}"], i % 2 == 0) for i in range(50)]
    got = subsample(qs, 7, seed=3)
    assert [q.words[0] for q in got] == [f"v{i}" for i in sorted(random.Random(3).sample(range(50), 7))]
    assert subsample(list(reversed(qs)), 7, seed=3) == [list(reversed(qs))[i] for i in
                                                          sorted(random.Random(3).sample(range(50), 7))]
    assert subsample(qs, 50, 3) is qs and subsample(qs, None, 3) is qs and subsample(qs, 80, 3) is qs
    # the paper sweeps: 3,200 qd1consis / qd2incons variables x 12 test questions = 38,400 -> 20,000;
    # d1consis / d2consis 800 x 12 = 9,600 stay whole
    c = load_sweep("set_inclusion", smoke=False).trials()[0].config
    assert c.eval.max_samples == 20_000
    assert round(c.data.qd1consis * c.data.n_variables) * c.data.test_questions == 38_400
    assert round(c.data.d1consis * c.data.n_variables) * c.data.test_questions == 9_600


def test_all_names_vocabulary_is_the_authors_tokenizer_size_and_changes_nothing_else():
    """Their create_tokenizer: 4 specials + 5 keywords + numbers 0-99 + 26 letters + 26**3 names = 17,711
    tokens; ours with all_names the same words plus our <eos> (theirs ends no example with one), the
    words in use first with their ids unchanged."""
    used = generate(tiny(0, None).data, 4)
    full = generate(from_dict(SetInclusionConfig, dict(TINY, data=dict(TINY["data"], vocabulary="all_names"))).data, 4)
    assert 4 + 5 + 100 + 26 + 26 ** 3 + 1 == 17_712 == len(full.vocab) and len(set(full.vocab)) == len(full.vocab)
    assert full.vocab[: len(used.vocab)] == used.vocab
    full.vocab = used.vocab
    assert _fingerprint(full) == _fingerprint(used)
    assert load_sweep("set_inclusion").trials()[0].config.data.vocabulary == "all_names"
    q = load_sweep("quickstart").trials()[0].config
    assert (q.data.vocabulary, q.eval.max_samples) == ("used", None)


class Collect(list):
    def __call__(self, metrics):
        self.append(dict(metrics))


def _strip(report: dict) -> dict:
    return {k: v for k, v in report.items() if not k.startswith("perf/")}


@pytest.mark.slow
@pytest.mark.parametrize("cut", [None, 1])
def test_a_branch_from_the_unit_goes_on_exactly_as_an_uninterrupted_trial(tmp_path, cut):
    """Known answer: stage 1 once in a unit, then stage-2 seeds 0 and 1 branching from its model in
    storage, report exactly what each trial run whole in one process reports (the unit's reports up to
    where stage 2 starts, then the branch's); the two stage-2 seeds differ."""
    store = str(tmp_path / "unit")
    extra = {} if cut is None else {"stage2_from_epoch": cut}
    if cut is not None:  # and the paper sweeps' evaluation sample (its seed follows the stage)
        TINY_PAPER = dict(TINY, eval=dict(TINY["eval"], max_samples=200))
    else:
        TINY_PAPER = TINY

    def tiny(seed, stage1_seed, **train):
        return from_dict(SetInclusionConfig, dict(TINY_PAPER, seed=seed,
                                                  train=dict(TINY_PAPER["train"], stage1_seed=stage1_seed, **train)))

    unit_reports = Collect()
    si.run_stage1(tiny(5, 5, **extra), unit_reports, store)
    assert [r["epoch"] for r in unit_reports] == [1.0, 2.0]  # stage 1 whole, whatever the cut
    finals = []
    for t in (0, 1):
        whole, branch = Collect(), Collect()
        si.run(tiny(t, 5, **extra), whole)
        si.run_branch(tiny(t, 5, **extra), branch, store)
        n1 = 2 if cut is None else cut
        assert [r["epoch"] for r in whole] == [float(e) for e in range(1, n1 + 2)]
        assert [_strip(r) for r in whole[:n1]] == [_strip(r) for r in unit_reports[:n1]]
        assert [r["epoch"] for r in branch] == [n1 + 1.0]
        assert _strip(branch[-1]) == _strip(whole[-1])
        finals.append(_strip(branch[-1]))
    assert finals[0] != finals[1]


@pytest.mark.slow
def test_tiny_sweep_trains_stage1_once_per_stage1_seed(in_tmp, capsys):
    """2 stage-1 seeds x 2 stage-2 seeds through Ray and MLflow: two units, each attempted once,
    each trial logs only its stage 2 and links its unit's run."""
    from mlflow.tracking import MlflowClient

    from metaocl.cli import main

    path = in_tmp / "layout.yaml"
    path.write_text("name: layout\ndescription: tiny set inclusion in the authors' seed layout\nkind: set_inclusion\n"
                    "base:\n  data: {n_variables: 80}\n"
                    "  model: {hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}\n"
                    "  train: {stage1_epochs: 2, stage2_epochs: 1, batch_size: 64}\n"
                    "grid:\n  train.stage1_seed: [0, 1]\nseeds: 2\nresources: {cpu: 1, gpu: 0}\n")
    assert main(["sweep", str(path)]) == 0, capsys.readouterr()
    out = capsys.readouterr()
    assert "layout: stage 1: 2/2 units · trials: 4/4 done, 0 running, 0 failed" in out.err, out.err[-2000:]
    tries = sorted(json.loads(p.read_text())["trial_id"] for p in in_tmp.glob("metaocl-results/*/metaocl/attempts/*.json"))
    assert tries == ["p00_s0", "p00_s1", "p00_stage1", "p01_s0", "p01_s1", "p01_stage1"]  # each unit once
    assert len(list(in_tmp.glob("metaocl-results/*/metaocl/stage1/*/complete.json"))) == 2
    client = MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("metaocl/layout")
    runs = client.search_runs([exp.experiment_id])
    units = {r.data.tags["metaocl.trial_id"]: r for r in runs if r.data.tags.get("metaocl.role") == "stage1"}
    assert sorted(units) == ["p00_stage1", "p01_stage1"]
    for r in units.values():
        assert [m.step for m in client.get_metric_history(r.info.run_id, "acc/qd1consis")] == [1, 2]
    children = {r.data.tags["metaocl.trial_id"]: r for r in runs if r.data.tags.get("metaocl.role") == "trial"}
    assert sorted(children) == ["p00_s0", "p00_s1", "p01_s0", "p01_s1"]
    for tid, r in children.items():  # stage 2 only (a trial that trained stage 1 itself would log 1, 2, 3)
        assert r.data.tags["metaocl.stage1_run"] == units[tid[:3] + "_stage1"].info.run_id
        assert [m.step for m in client.get_metric_history(r.info.run_id, "acc/d1consis")] == [3]
