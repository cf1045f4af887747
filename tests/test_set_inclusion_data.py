"""The set-inclusion generator: the properties the paper's design relies on."""

import pytest

from metaocl.configs.set_inclusion import SetInclusionData
from metaocl.data.set_inclusion import KEYWORDS, TAG_OF, generate

CFG = SetInclusionData(n_variables=400, d3consis=0.05, d1consis=0.075, d2consis=0.075)


@pytest.fixture(scope="module")
def ds():
    return generate(CFG, seed=7)


def test_subsets_disjoint_and_sized(ds):
    seen = set()
    for s, vs in ds.subsets.items():
        assert not seen & set(vs), s
        seen |= set(vs)
        assert len(vs) == round(getattr(CFG, s) * CFG.n_variables)
    assert len(set(ds.numbers)) == CFG.n_variables
    assert not set(ds.numbers) & (set(KEYWORDS) | {str(i) for i in range(99)})


def test_questions_half_true_and_correct(ds):
    for split in (ds.train_qa, ds.test_qa):
        for s, qs in split.items():
            assert sum(q.label for q in qs) * 2 == len(qs)
            for q in qs:
                var, pct, *nums, eq, ans = q.words
                assert pct == "%" and eq == "=" and len(nums) == CFG.list_length
                assert len(set(nums)) == len(nums)
                assert (str(ds.numbers[var]) in nums) == q.label == (ans == "true")


def test_counts_per_variable(ds):
    for s, vs in ds.subsets.items():
        if not vs:
            continue
        assert len(ds.test_qa[s]) == len(vs) * CFG.test_questions
        if s.startswith("qd"):
            assert len(ds.train_qa[s]) == len(vs) * CFG.train_questions
        else:
            assert s not in ds.train_qa  # X2 variables never have QA in training


def test_no_test_question_in_training(ds):
    train = {tuple(q.words) for qs in ds.train_qa.values() for q in qs}
    assert not any(tuple(q.words) in train for qs in ds.test_qa.values() for q in qs)


def test_definitions_tags_and_consistency(ds):
    for s, defs in ds.definitions.items():
        assert len(defs) == len(ds.subsets[s])
        for tag, var, pct, number in defs:
            assert tag == TAG_OF[s] and pct == "%"
            if s == "qd2incons":
                assert int(number) != ds.numbers[var]  # inconsistent definitions are always wrong
            else:
                assert int(number) == ds.numbers[var]


def test_stage_views(ds):
    stage1, stage2 = ds.stage_examples(1), ds.stage_examples(2)
    assert {e[0] for e in stage2} == {"define1", "define2", "define3"}
    assert all(len(e) == 4 for e in stage2)
    assert {e[0] for e in stage1 if len(e) == 4} == {"define1", "define2"}
    assert len(ds.stage_examples(1, joint=True)) == len(stage1) + len(stage2)
    assert ds.stage_examples(2, joint=True) == []


def test_deterministic_per_seed():
    a, b, c = generate(CFG, 3), generate(CFG, 3), generate(CFG, 4)
    assert a.test_qa == b.test_qa and a.definitions == b.definitions
    assert a.test_qa != c.test_qa
