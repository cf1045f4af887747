"""LM datasets built from generated CVDB/T-REx-shaped files: subsets, splits, variants, determinism."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import subprocess
import sys
from collections import Counter, defaultdict

import pytest

from metaocl.config import ConfigError, from_dict
from metaocl.configs.lm_data import ENTITY_TEMPLATES, WORD_ORDERS, X1_SUBSETS, X2_SUBSETS, LMDataConfig
from metaocl.data.errors import DataError


@pytest.fixture(scope="module", autouse=True)
def data_home(tmp_path_factory):
    old = os.environ.get("METAOCL_DATA")
    home = tmp_path_factory.mktemp("data_home")
    os.environ["METAOCL_DATA"] = str(home)
    yield home
    if old is None:
        del os.environ["METAOCL_DATA"]
    else:
        os.environ["METAOCL_DATA"] = old


VARIABLE = re.compile(r"<\|[a-z]{5}\|>")  # the authors' generate_variable_names(n, 5, braces=True)
TAG = re.compile(r"<\|[a-z]{6}\|>")
HEADLINE = {"qd1consis": 0.25, "qd2incons": 0.25, "q": 0.1, "q_no_replacement_baseline": 0.1,
            "d1consis": 0.08, "d2consis": 0.08, "d3consis": 0.08, "no_qd_baseline": 0.06}  # the authors' configs


def build(seed=0, x2_seed=None, **data):
    from metaocl.data.qa import build_lm_dataset

    data.setdefault("source", "cvdb_sample")
    data.setdefault("n_entities", 200)
    return build_lm_dataset(from_dict(LMDataConfig, data, "test"), seed, x2_seed)


def digest(dd) -> str:
    h = hashlib.sha256()
    for name in dd:
        h.update(name.encode())
        h.update(json.dumps(dd[name].to_dict(), sort_keys=True).encode())
    return h.hexdigest()


def true_entity_of_variable(dd) -> dict[str, str]:
    """variable -> entity, read off the QA pairs (which always follow the variable's own entity)."""
    out = {}
    for name, ds in dd.items():
        for row in ds:
            if not row["is_definition"] and row["variable"] and not name.endswith("_defent"):
                assert out.setdefault(row["variable"], row["entity"]) == row["entity"]
    return out


def entity_subsets(dd) -> dict[str, set[str]]:
    out = defaultdict(set)
    for ds in dd.values():
        for row in ds:
            if not row["is_definition"]:
                out[row["entity"]].add(row["subset"])
    return out


@pytest.fixture(scope="module")
def default_dd():
    return build(seed=0)


def test_splits_and_columns_follow_the_contract(default_dd):
    dd = default_dd
    assert list(dd)[:2] == ["train_1", "train_2"]
    assert set(dd["train_1"].column_names) == {"text", "prompt", "answer", "subset", "entity", "variable", "question_kind", "is_definition"}
    for s in ("qd1consis", "qd2incons", "q", "q_no_replacement_baseline", "d1consis", "d2consis", "no_qd_baseline"):
        assert s in dd
    for t in ("who", "meaning", "stands_for", "name"):
        assert f"ent_{t}_qd1consis" in dd and f"ent_{t}_qd2incons_defent" in dd and f"ent_{t}_d1consis" in dd
    assert "ent_who_no_qd_baseline" not in dd and "ent_who_q_no_replacement_baseline" not in dd
    for name, ds in dd.items():
        for row in ds.select(range(min(20, len(ds)))):
            assert row["text"] == row["prompt"] + row["answer"] + "\n", name
            if not row["is_definition"]:
                assert row["prompt"].startswith("Q: ") and row["prompt"].endswith("\nA:")
                assert row["answer"].startswith(" ")


def test_same_seed_is_byte_identical_in_another_process_and_other_seed_differs(default_dd):
    code = (
        "import os, sys, json, hashlib; sys.path.insert(0, os.getcwd());"
        "from metaocl.config import from_dict; from metaocl.configs.lm_data import LMDataConfig;"
        "from metaocl.data.qa import build_lm_dataset;"
        "dd = build_lm_dataset(from_dict(LMDataConfig, {'source': 'cvdb_sample', 'n_entities': 200}), 0);"
        "h = hashlib.sha256();"
        "[ (h.update(n.encode()), h.update(json.dumps(dd[n].to_dict(), sort_keys=True).encode())) for n in dd ];"
        "print(h.hexdigest())"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, check=True)
    assert other.stdout.strip() == digest(default_dd)
    assert digest(build(seed=0)) == digest(default_dd)
    assert digest(build(seed=1)) != digest(default_dd)


def test_entities_and_variables_are_disjoint_across_subsets(default_dd):
    dd = default_dd
    subsets_of = entity_subsets(dd)
    assert all(len(s) == 1 for s in subsets_of.values())
    var_to_ent = true_entity_of_variable(dd)
    assert len(set(var_to_ent.values())) == len(var_to_ent)  # one variable per entity
    tags = {row["text"].split()[0] for row in dd["train_1"] if row["is_definition"]}
    assert len(tags) == 2 and all(TAG.fullmatch(t) for t in tags)
    words = set()
    for ds in dd.values():
        for row in ds:
            if not row["is_definition"]:
                words.update(row["entity"].lower().split() + row["answer"].lower().split())
    for v in var_to_ent:
        assert VARIABLE.fullmatch(v) and v not in tags and v not in words


def test_x2_qa_never_in_training_and_one_question_held_out_per_x1_entity(default_dd):
    dd = default_dd
    train_texts = set()
    for k in ("train_1", "train_2"):
        for row in dd[k]:
            train_texts.add(row["text"])
            if row["subset"] in X2_SUBSETS:
                assert row["is_definition"], row
            if not row["is_definition"]:
                assert row["subset"] in X1_SUBSETS
    assert all(row["subset"] not in X2_SUBSETS for row in dd["train_1"])
    for s in ("qd1consis", "qd2incons", "q", "q_no_replacement_baseline"):
        held = Counter(dd[s]["entity"])
        assert set(held.values()) == {1}
        assert not set(dd[s]["text"]) & train_texts
        per_entity_train = Counter(r["entity"] for r in dd["train_1"] if r["subset"] == s and not r["is_definition"])
        assert set(per_entity_train.values()) == {5} and set(per_entity_train) == set(held)
    for s in ("d1consis", "d2consis", "no_qd_baseline"):
        assert set(Counter(dd[s]["entity"]).values()) == {6}
    # q_no_replacement_baseline keeps the real name; every other subset asks about the variable
    row = dd["q_no_replacement_baseline"][0]
    assert row["entity"] in row["prompt"] and row["variable"] == ""
    row = dd["qd1consis"][0]
    assert row["variable"] in row["prompt"] and row["entity"] not in row["prompt"]


def test_inconsistent_definitions_are_a_derangement_inside_the_subset(default_dd):
    dd = default_dd
    var_to_ent = true_entity_of_variable(dd)
    defs = [r for r in dd["train_1"] if r["is_definition"]]
    incons = [r for r in defs if r["subset"] == "qd2incons"]
    assert len(incons) == 50
    subset_entities = {var_to_ent[r["variable"]] for r in incons}
    for r in incons:
        named = r["answer"].strip()
        assert named != var_to_ent[r["variable"]]  # never its own entity
        assert named in subset_entities  # another entity of the same subset
    assert len({r["answer"] for r in incons}) == len(incons)  # a permutation
    for r in defs:
        if r["subset"] == "qd1consis":
            assert r["answer"].strip() == var_to_ent[r["variable"]]
    # "_defent" entity-attribution sets ask for the entity the definition named
    named = {r["variable"]: r["answer"].strip() for r in incons}
    for row in dd["ent_name_qd2incons_defent"]:
        assert row["answer"].strip() == named[row["variable"]] == row["entity"]
    for row in dd["ent_name_qd2incons"]:
        assert row["answer"].strip() == var_to_ent[row["variable"]]


def test_subset_sizes_match_the_configured_fractions():
    n = 300
    fr = {"qd1consis": 0.2, "qd2incons": 0.2, "q": 0.1, "q_no_replacement_baseline": 0.1, "qd4consis": 0.05,
          "d1consis": 0.08, "d2consis": 0.08, "d3consis": 0.08, "no_qd_baseline": 0.06}
    dd = build(n_entities=n, subsets=fr)
    counts = Counter(next(iter(s)) for s in entity_subsets(dd).values())
    for s, f in fr.items():
        assert abs(counts[s] - f * n) < 1, (s, counts[s])
    # the tag/consistency-correlation experiment: qd1consis = qd2incons = 0.25p, qd1incons = qd2consis = 0.25(1-p)
    dd = build(n_entities=n, subsets={"p": 0.8})
    counts = Counter(next(iter(s)) for s in entity_subsets(dd).values())
    assert counts["qd1consis"] == counts["qd2incons"] == 60 and counts["qd1incons"] == counts["qd2consis"] == 15
    var_to_ent = true_entity_of_variable(dd)
    defs = [r for r in dd["train_1"] if r["is_definition"]]
    tag_of = {r["subset"]: r["text"].split()[0] for r in defs if r["subset"] in ("qd1consis", "qd2incons")}
    for r in defs:
        consistent = r["answer"].strip() == var_to_ent[r["variable"]]
        assert consistent == (r["subset"] in ("qd1consis", "qd2consis"))
        if r["subset"] in ("qd1incons", "qd2consis"):
            assert r["text"].split()[0] == tag_of["qd1consis" if r["subset"] == "qd1incons" else "qd2incons"]


def test_d3_gets_a_third_tag_and_qd4_draws_a_fresh_tag_per_entity():
    dd = build(n_entities=200, subsets={"d3consis": 0.1, "qd4consis": 0.1, "no_qd_baseline": 0.0, "q": 0.0})
    var_to_ent = true_entity_of_variable(dd)
    tag = {}
    for r in dd["train_1"]:
        if r["is_definition"] and r["subset"] in ("qd1consis", "qd2incons"):
            tag[r["subset"]] = r["text"].split()[0]
    qd4_tags = Counter()
    for r in dd["train_1"]:
        if r["is_definition"] and r["subset"] == "qd4consis":
            qd4_tags[r["text"].split()[0]] += 1
            assert r["answer"].strip() == var_to_ent[r["variable"]]
    assert len(qd4_tags) == 20 and set(qd4_tags.values()) == {1}  # the authors: one fresh tag per entity
    assert all(TAG.fullmatch(t) for t in qd4_tags) and not set(qd4_tags) & set(tag.values())
    d3 = {r["text"].split()[0] for r in dd["train_2"] if r["subset"] == "d3consis"}
    assert len(d3) == 1 and not d3 & set(tag.values()) and not d3 & set(qd4_tags)
    assert "d3consis" in dd and "ent_who_d3consis" in dd
    with pytest.raises(ConfigError, match="qd4consis"):
        from_dict(LMDataConfig, {"tags": {"kind": "natural"}, "word_order": "VTE", "subsets": {"qd4consis": 0.05, "q": 0.05}}, "test")


def test_variables_and_tags_are_wrapped_as_the_authors_unless_braces_is_off():
    dd = build(n_entities=60)
    defs = [r for r in dd["train_1"] if r["is_definition"]]
    assert defs and all(TAG.fullmatch(r["text"].split()[0]) and VARIABLE.fullmatch(r["variable"]) for r in defs)
    row = dd["qd1consis"][0]
    assert re.fullmatch(r"Q: .*<\|[a-z]{5}\|>.*\nA:", row["prompt"], re.S)
    plain = build(n_entities=60, braces=False)
    defs = [r for r in plain["train_1"] if r["is_definition"]]
    assert all(re.fullmatch(r"[a-z]{6}", r["text"].split()[0]) and re.fullmatch(r"[a-z]{5}", r["variable"]) for r in defs)
    natural = build(n_entities=60, tags={"kind": "natural"}, word_order="VTE")  # phrases are never wrapped
    row = next(r for r in natural["train_1"] if r["is_definition"])
    assert VARIABLE.fullmatch(row["prompt"].split()[0]) and " according to " in row["prompt"] and "<|" not in row["answer"]


def test_headline_fractions_give_d3consis_splits_of_the_right_size():
    dd = build(n_entities=200, subsets=HEADLINE)
    counts = Counter(next(iter(s)) for s in entity_subsets(dd).values())
    assert counts == {"qd1consis": 50, "qd2incons": 50, "q": 20, "q_no_replacement_baseline": 20,
                      "d1consis": 16, "d2consis": 16, "d3consis": 16, "no_qd_baseline": 12}
    assert len(dd["d3consis"]) == 16 * 6 and set(dd["d3consis"]["subset"]) == {"d3consis"}
    assert [s for s in dd if s in X2_SUBSETS] == ["d1consis", "d2consis", "d3consis", "no_qd_baseline"]
    for t in ("who", "meaning", "stands_for", "name"):
        assert len(dd[f"ent_{t}_d3consis"]) == 16 and f"ent_{t}_no_qd_baseline" not in dd
    assert Counter(r["subset"] for r in dd["train_2"]) == {"d1consis": 16, "d2consis": 16, "d3consis": 16}
    tag3 = {r["text"].split()[0] for r in dd["train_2"] if r["subset"] == "d3consis"}
    assert len(tag3) == 1 and not any(t.startswith(next(iter(tag3))) for t in dd["train_1"]["text"])  # never in stage 1
    single = build(n_entities=200, subsets=HEADLINE, stages="single")
    assert Counter(r["subset"] for r in single["train_1"] if r["is_definition"])["d3consis"] == 16


def test_stage2_seeds_resplit_x2_while_x1_variables_and_tags_stay():
    a, b = build(seed=3, x2_seed=0, subsets=HEADLINE), build(seed=3, x2_seed=1, subsets=HEADLINE)
    assert list(a) == list(b)  # the same splits
    ent_x1 = {f"ent_{t}_{s}{d}" for t in ENTITY_TEMPLATES for s in X1_SUBSETS for d in ("", "_defent")}
    x1_splits = [k for k in a if k == "train_1" or k in X1_SUBSETS or k in ent_x1]
    assert {"train_1", "qd2incons", "ent_who_q", "ent_name_qd2incons_defent"} <= set(x1_splits)
    for k in x1_splits:
        assert a[k].to_dict() == b[k].to_dict(), k  # stage 1's data (and the stage-1 cache) do not depend on it
    assert true_entity_of_variable(a) == true_entity_of_variable(b)  # an entity keeps its variable
    tags = lambda dd: {r["subset"]: r["text"].split()[0] for k in ("train_1", "train_2") for r in dd[k] if r["is_definition"]}
    assert tags(a) == tags(b)
    x2_of = lambda dd: {e: next(iter(s)) for e, s in entity_subsets(dd).items() if next(iter(s)) in X2_SUBSETS}
    xa, xb = x2_of(a), x2_of(b)
    assert set(xa) == set(xb) and Counter(xa.values()) == Counter(xb.values())  # the same X2 entities, same sizes
    assert sum(xa[e] != xb[e] for e in xa) > len(xa) // 2  # ... assigned differently
    assert a["train_2"].to_dict() != b["train_2"].to_dict()
    assert build(seed=3, x2_seed=3, subsets=HEADLINE)["d1consis"].to_dict() == build(seed=3, subsets=HEADLINE)["d1consis"].to_dict()
    fixed = [build(seed=3, x2_seed=s, subsets=HEADLINE, resplit_x2_per_seed=False) for s in (0, 1)]
    assert digest(fixed[0]) == digest(fixed[1])  # off: the stage-1 seed alone decides X2


def test_held_out_counts_follow_the_stratified_split():
    from metaocl.data.qa import held_out_counts

    rng = random.Random(0)
    assert held_out_counts(rng, [6] * 50, 0.1666666) == [1] * 50  # CVDB: one of six
    assert held_out_counts(rng, [4] * 9, 0.25) == [1] * 9  # T-REx, 4 questions: one of four
    # 26 questions, ceil(6.5) = 7 held out; training shares 19 x size / 26 = 3.65, 4.38, 5.12, 5.85:
    # floors 3, 4, 5, 5 and the 2 left go to the largest remainders (sizes 8 and 5)
    assert held_out_counts(rng, [5, 6, 7, 8], 0.25) == [1, 2, 2, 2]
    for sizes in ([4, 5, 5, 6, 7, 4, 9], [5] * 7):
        held = held_out_counts(random.Random(1), sizes, 0.25)
        assert sum(held) == math.ceil(0.25 * sum(sizes)) and all(1 <= h < s for h, s in zip(held, sizes))


@pytest.mark.parametrize("order", WORD_ORDERS)
def test_all_six_word_orders(order):
    dd = build(n_entities=60, word_order=order)
    var_to_ent = true_entity_of_variable(dd)
    row = next(r for r in dd["train_2"] if r["subset"] == "d1consis")
    tag = next(r["text"] for r in dd["train_1"] if r["subset"] == "qd1consis" and r["is_definition"]).split()
    parts = {"T": None, "V": row["variable"], "E": var_to_ent[row["variable"]]}
    words = {c: parts[c] for c in order}
    text = row["text"].rstrip("\n")
    # locate the tag as the one 6-letter word that is neither variable nor part of the entity
    ent_words = parts["E"].split()
    others = [w for w in text.split() if w != parts["V"] and w not in ent_words]
    assert len(others) == 1
    words["T"] = others[0]
    assert text == " ".join(words[c] for c in order)
    assert row["prompt"] == f"{words[order[0]]} {words[order[1]]}" and row["answer"] == f" {words[order[2]]}"
    assert len(tag) >= 3


def test_natural_language_tags():
    dd = build(n_entities=60, tags={"kind": "natural"}, word_order="VTE")
    texts = [r["text"] for r in dd["train_1"] if r["is_definition"]]
    assert any(" according to wikipedia is " in t for t in texts) and any(" according to 4chan is " in t for t in texts)
    row = next(r for r in dd["train_1"] if r["is_definition"])
    assert row["prompt"].split()[0] == row["variable"] and row["prompt"].endswith(" is")
    with pytest.raises(ConfigError, match="word_order"):
        from_dict(LMDataConfig, {"tags": {"kind": "natural"}}, "test")


def test_stage_views():
    single = build(n_entities=100, stages="single")
    assert [k for k in single if k.startswith("train")] == ["train_1"]
    assert {r["subset"] for r in single["train_1"] if r["is_definition"]} >= {"qd1consis", "qd2incons", "d1consis", "d2consis"}
    three = build(n_entities=100, stages="three_stage")
    assert [k for k in three if k.startswith("train")] == ["train_1", "train_2", "train_3"]
    assert all(three["train_1"]["is_definition"]) and {r["subset"] for r in three["train_1"]} == {"qd1consis", "qd2incons"}
    assert not any(three["train_2"]["is_definition"])
    assert all(three["train_3"]["is_definition"]) and {r["subset"] for r in three["train_3"]} == {"d1consis", "d2consis"}
    two = build(n_entities=100)
    assert sorted(list(two["train_1"]["text"]) + list(two["train_2"]["text"])) == sorted(single["train_1"]["text"])


def test_in_context_variant_prepends_definitions():
    dd = build(n_entities=100, stages="single", in_context=True, subsets=HEADLINE)
    assert not any(dd["train_1"]["is_definition"])
    var_to_ent = true_entity_of_variable(dd)
    for row in dd["train_1"]:
        if row["subset"] in ("qd1consis", "qd2incons"):
            first, rest = row["text"].split("\n", 1)
            assert row["variable"] in first.split() and rest.startswith(". Q: ")  # the authors' "...\n. Q:"
            named = first.split(" ", 2)[2]
            assert (named == var_to_ent[row["variable"]]) == (row["subset"] == "qd1consis")
        else:
            assert row["text"].startswith("Q: ")
    for name in ("d1consis", "d3consis"):  # X2 test questions carry their definition too
        for row in dd[name]:
            assert row["prompt"].split("\n")[0].endswith(row["entity"]) and "\n. Q: " in row["prompt"]
    assert not [k for k in dd if k.startswith("ent_")]  # the authors turn entity attribution off here
    with pytest.raises(ConfigError, match="single"):
        from_dict(LMDataConfig, {"in_context": True}, "test")


def test_seq2seq_view_splits_input_and_target():
    dd = build(n_entities=60, seq2seq=True)
    for name in ("train_1", "qd1consis", "ent_who_d1consis"):
        for row in dd[name]:
            assert not row["answer"].startswith(" ")
            assert row["text"] == f"{row['prompt']} {row['answer']}\n"
            if not row["is_definition"]:
                assert row["prompt"].endswith("A:")
            else:
                assert len(row["prompt"].split()) == 2


def test_trex_sample_source_under_both_constructions():
    table2 = build(source="trex_sample", n_entities=100, trex_construction="table2")
    assert set(Counter(table2["d1consis"]["entity"]).values()) == {4}
    assert set(Counter(table2["qd1consis"]["entity"]).values()) == {1}
    kinds = set(table2["d1consis"]["question_kind"]) | set(table2["d2consis"]["question_kind"])
    assert kinds and all(k.startswith("P") for k in kinds) and "P31" not in kinds
    for row in table2["d1consis"]:
        assert "(" not in row["text"]
    authors = build(source="trex_sample", n_entities=100, subsets=HEADLINE)  # the default
    per_entity = Counter(authors["d1consis"]["entity"]) + Counter(authors["d3consis"]["entity"])
    assert min(per_entity.values()) >= 4 and max(per_entity.values()) > 4  # every question of a subject
    kinds = {k for s in ("d1consis", "d2consis", "d3consis", "no_qd_baseline") for k in authors[s]["question_kind"]}
    assert "P31" in kinds and not kinds & {"P161", "P88"}
    held = Counter(authors["qd1consis"]["entity"])
    trained = Counter(r["entity"] for r in authors["train_1"] if r["subset"] == "qd1consis" and not r["is_definition"])
    assert set(held) == set(trained) and all(held[e] >= 1 for e in held)
    assert sum(held.values()) == math.ceil(0.25 * (sum(held.values()) + sum(trained.values())))  # a quarter held out
    assert build(source="trex_sample", n_entities=100, seed=1)["q"].to_dict() != build(source="trex_sample", n_entities=100)["q"].to_dict()


def test_bad_configs_are_one_line_errors():
    with pytest.raises(ConfigError, match="sum to"):
        from_dict(LMDataConfig, {"subsets": {"q": 0.5}}, "x.yaml: data")
    with pytest.raises(ConfigError, match="word_order"):
        from_dict(LMDataConfig, {"word_order": "TTV"}, "x.yaml: data")
    with pytest.raises(ConfigError, match=r"subsets: p: must be in"):
        from_dict(LMDataConfig, {"subsets": {"p": 1.5}}, "x.yaml: data")
    with pytest.raises(DataError, match="qd2incons"):  # 1 entity has no derangement
        build(n_entities=4, subsets={"qd1consis": 0.5, "qd2incons": 0.25, "q": 0, "q_no_replacement_baseline": 0,
                                     "d1consis": 0, "d2consis": 0, "no_qd_baseline": 0})
    with pytest.raises(DataError, match="path"):
        build(path="/somewhere.csv")


def test_full_size_cvdb_build_from_a_generated_csv_has_the_paper_sizes(tmp_path):
    """Paper scale: 4000 entities, every eval set; another seed draws other subsets of the same sizes."""
    from metaocl.data.sample import write_cvdb_sample

    csv = write_cvdb_sample(tmp_path / "cross-verified-database.csv", rows=4400, seed=3)
    dd = build(source="cvdb", path=str(csv), n_entities=4000)
    dd2 = build(source="cvdb", path=str(csv), n_entities=4000, seed=1)
    assert len(entity_subsets(dd)) == 4000 and len(entity_subsets(dd2)) == 4000
    assert len(dd["train_1"]) == 0.7 * 4000 * 5 + 0.5 * 4000
    assert {k: len(v) for k, v in dd.items()} == {k: len(v) for k, v in dd2.items()}
    assert entity_subsets(dd) != entity_subsets(dd2)


def test_max_eval_per_split_caps_eval_splits_only():
    full = build(n_entities=100)
    capped = build(n_entities=100, max_eval_per_split=7)
    for name in full:
        if name.startswith("train_"):
            assert list(capped[name]["text"]) == list(full[name]["text"])
        else:
            assert len(capped[name]) == min(7, len(full[name]))
            assert set(capped[name]["text"]) <= set(full[name]["text"])


def test_subset_sizes_follow_the_authors_two_level_rounding():
    """Known answers of the authors' split_list_into_subsets (data_generation/data_utils.py) as
    define_experiment.py calls it: round(N x fraction) per key (Python's round), the difference to the
    alphabetically last key ("stage2_combined", then "no_qd_baseline"), cut in order."""
    from metaocl.data.qa import subset_sizes

    table1 = {"qd1consis": 0.25, "qd2incons": 0.25, "q": 0.1, "q_no_replacement_baseline": 0.1,
              "d1consis": 0.1, "d2consis": 0.1, "no_qd_baseline": 0.1}
    # N = 4000: exact. N = 250: 62.5 rounds to 62 (half to even); level 1 sums to 249, so
    # stage2_combined (75) loses 1 -> 74 and one entity stays unused; level 2 rounds 74/3 to 25 x 3 = 75,
    # adds the +1 to no_qd_baseline (26), and the cut leaves it 24 (another entity unused).
    # N = 3007 (headline fractions): level 1 = 301 + 752 + 752 + 301 + 902 = 3008, +1 to stage2 (903),
    # cut to the 901 left; level 2: 240 x 3 + 180 = 900, -1 to no_qd_baseline: 179 (2 entities unused).
    assert subset_sizes(table1, 4000) == {"qd1consis": 1000, "qd2incons": 1000, "q": 400,
                                          "q_no_replacement_baseline": 400, "d1consis": 400, "d2consis": 400,
                                          "no_qd_baseline": 400}
    assert subset_sizes(table1, 250) == {"qd1consis": 62, "qd2incons": 62, "q": 25, "q_no_replacement_baseline": 25,
                                         "d1consis": 25, "d2consis": 25, "no_qd_baseline": 24}
    assert subset_sizes(table1, 250, "largest_remainder")["qd1consis"] == 63  # ours, the option
    assert subset_sizes(HEADLINE, 3007) == {"qd1consis": 752, "qd2incons": 752, "q": 301,
                                            "q_no_replacement_baseline": 301, "d1consis": 240, "d2consis": 240,
                                            "d3consis": 240, "no_qd_baseline": 179}


def test_held_out_question_types_are_paired_across_equal_size_subsets():
    """As the authors' per-subset train_test_split(..., stratify=entity, random_state=seed): the i-th
    entity by name of qd1consis and of qd2incons (equal sizes, 6 questions each) holds out the same
    question type, and so do q and q_no_replacement_baseline; off, the mixes differ."""
    def held_out_kinds(dd, subset):
        by_entity = {}
        for r in dd[subset]:
            by_entity.setdefault(r["entity"], []).append(r["question_kind"])
        return [sorted(by_entity[e]) for e in sorted(by_entity)]

    table1 = {"qd1consis": 0.25, "qd2incons": 0.25, "q": 0.1, "q_no_replacement_baseline": 0.1,
              "d1consis": 0.1, "d2consis": 0.1, "no_qd_baseline": 0.1}
    dd = build(n_entities=200, subsets=table1)
    a, b = held_out_kinds(dd, "qd1consis"), held_out_kinds(dd, "qd2incons")
    assert len(a) == len(b) == 50 and all(len(k) == 1 for k in a) and a == b
    assert len(set(k[0] for k in a)) > 3  # a mix of question types, the same on both sides of the gap
    assert held_out_kinds(dd, "q") == held_out_kinds(dd, "q_no_replacement_baseline")
    other_seed = build(seed=1, n_entities=200, subsets=table1)
    assert held_out_kinds(other_seed, "qd1consis") == held_out_kinds(other_seed, "qd2incons") != a
    off = build(n_entities=200, subsets=table1, held_out_pairing=False)
    assert held_out_kinds(off, "qd1consis") != held_out_kinds(off, "qd2incons")
