"""LM datasets built from generated CVDB/T-REx-shaped files: subsets, splits, variants, determinism."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict

import pytest

from metaocl.config import ConfigError, from_dict
from metaocl.configs.lm_data import WORD_ORDERS, X1_SUBSETS, X2_SUBSETS, LMDataConfig
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


def build(seed=0, **data):
    from metaocl.data.qa import build_lm_dataset

    data.setdefault("source", "cvdb_sample")
    data.setdefault("n_entities", 200)
    return build_lm_dataset(from_dict(LMDataConfig, data, "test"), seed)


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
    assert len(tags) == 2 and all(len(t) == 6 for t in tags)
    words = set()
    for ds in dd.values():
        for row in ds:
            if not row["is_definition"]:
                words.update(row["entity"].lower().split() + row["answer"].lower().split())
    for v in var_to_ent:
        assert len(v) == 5 and v not in tags and v not in words


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


def test_d3_gets_a_third_tag_and_qd4_draws_tag_1_or_2_consistently():
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
    assert set(qd4_tags) == {tag["qd1consis"], tag["qd2incons"]}
    d3 = {r["text"].split()[0] for r in dd["train_2"] if r["subset"] == "d3consis"}
    assert len(d3) == 1 and not d3 & set(tag.values())
    assert "d3consis" in dd and "ent_who_d3consis" in dd


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
    dd = build(n_entities=100, stages="single", in_context=True)
    assert not any(dd["train_1"]["is_definition"])
    var_to_ent = true_entity_of_variable(dd)
    for row in dd["train_1"]:
        if row["subset"] in ("qd1consis", "qd2incons"):
            first, rest = row["text"].split("\n", 1)
            assert row["variable"] in first.split() and rest.startswith("Q: ")
            named = first.split(" ", 2)[2]
            assert (named == var_to_ent[row["variable"]]) == (row["subset"] == "qd1consis")
        else:
            assert row["text"].startswith("Q: ")
    for row in dd["d1consis"]:  # X2 test questions carry their definition too
        assert row["prompt"].split("\n")[0].endswith(row["entity"]) and "\nQ: " in row["prompt"]
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


def test_trex_sample_source_has_four_questions_per_entity():
    dd = build(source="trex_sample", n_entities=100)
    assert set(Counter(dd["d1consis"]["entity"]).values()) == {4}
    assert set(Counter(dd["qd1consis"]["entity"]).values()) == {1}
    kinds = set(dd["d1consis"]["question_kind"]) | set(dd["d2consis"]["question_kind"])
    assert kinds and all(k.startswith("P") for k in kinds)
    for row in dd["d1consis"]:
        assert "(" not in row["text"]


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


def test_full_size_cvdb_build_from_a_generated_csv_is_fast(tmp_path):
    """Paper scale: 4000 entities, every eval set. Prints timings; no timed assertion."""
    from metaocl.data.sample import write_cvdb_sample

    csv = write_cvdb_sample(tmp_path / "cross-verified-database.csv", rows=4400, seed=3)
    t0 = time.perf_counter()
    dd = build(source="cvdb", path=str(csv), n_entities=4000)
    t1 = time.perf_counter()
    dd2 = build(source="cvdb", path=str(csv), n_entities=4000, seed=1)
    t2 = time.perf_counter()
    print(f"\n4000-entity CVDB build: first (reads CSV) {t1 - t0:.2f}s, cached {t2 - t1:.2f}s, "
          f"{sum(len(d) for d in dd.values())} rows in {len(dd)} splits")
    assert len(entity_subsets(dd)) == 4000 and len(entity_subsets(dd2)) == 4000
    assert len(dd["train_1"]) == 0.7 * 4000 * 5 + 0.5 * 4000


def test_max_eval_per_split_caps_eval_splits_only():
    full = build(n_entities=100)
    capped = build(n_entities=100, max_eval_per_split=7)
    for name in full:
        if name.startswith("train_"):
            assert list(capped[name]["text"]) == list(full[name]["text"])
        else:
            assert len(capped[name]) == min(7, len(full[name]))
            assert set(capped[name]["text"]) <= set(full[name]["text"])
