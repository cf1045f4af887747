"""CVDB and T-REx readers on small files the tests write: selection rules, year rule, bad input."""

from __future__ import annotations

import json

import pytest

from metaocl.data.cvdb import anonymize_year, load_cvdb_entities, parse_citizenship
from metaocl.data.errors import DataError
from metaocl.data.trex import load_trex_entities


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("METAOCL_DATA", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.parametrize(
    "year,text",
    [(1812, "19 century"), (-122, "2 century BC"), (-1, "1 century BC"), (100, "1 century"), (101, "2 century"),
     (1900, "19 century"), (1901, "1900s"), (1923, "1920s"), (1999, "1990s"), (2000, "2000"), (2015, "2015")],
)
def test_year_anonymization(year, text):
    assert anonymize_year(year) == text


def test_citizenship_parsing():
    assert parse_citizenship("'France'_'United_States'") == "France;United States"
    assert parse_citizenship("'Italy'") == "Italy"


CVDB_HEADER = "wikidata_code,name,birth,death,gender,level3_main_occ,string_citizenship_raw_d,un_region,wiki_readers_2015_2018\n"


def write_cvdb(path, rows):
    path.write_bytes((CVDB_HEADER + "".join(r + "\n" for r in rows)).encode("ISO-8859-1"))
    return path


def test_cvdb_selection_rules(tmp_path):
    csv = write_cvdb(tmp_path / "cvdb.csv", [
        "Q1,Leonardo_da_Vinci,1452,1519,Male,painter,'Italy',Europe,900",
        "Q2,Alive_Person,1950,,Male,actor,'France',Europe,99999",       # missing death: dropped
        "Q3,Jean-Paul_Dash,1905,1980,Male,writer,'France',Europe,5000",  # punctuation in name: dropped
        "Q4,Cleopatra,-69,-30,Female,monarch,'Egypt',Africa,800",
        "Q5,Marie_Curie,1867,1934,Female,physicist,'Poland'_'France',Europe,700",
        "Q6,Low_Popularity,1923,2004,Male,football_player,'Brazil',Americas,1",
        "Q7,Ren\xe9e_Z,1923,2004,Female,film_director,'France',Europe,600",  # accented letter: kept
        "Q8,Third_Man,1800,1850,Male,singer,'Spain',Europe,10",
    ])
    ents = load_cvdb_entities(csv, 4)
    names = [e["name"] for e in ents]
    assert names == ["Leonardo da Vinci", "Third Man", "Cleopatra", "Marie Curie"]
    facts = {e["name"]: {k: a for k, _, a in e["facts"]} for e in ents}
    assert facts["Cleopatra"] == {"gender": "Female", "birth": "1 century BC", "death": "1 century BC",
                                  "region": "Africa", "occupation": "monarch", "nationality": "Egypt"}
    assert facts["Third Man"]["birth"] == "18 century" and facts["Third Man"]["death"] == "19 century"
    assert facts["Marie Curie"]["nationality"] == "Poland;France"
    templates = [t for _, t, _ in ents[0]["facts"]]
    assert "When was [X] born?" in templates and len(templates) == 6
    # the extracted table is cached; a second call reads the cache
    assert list((tmp_path / "home" / "cache").glob("cvdb_4_*.json"))
    assert load_cvdb_entities(csv, 4) == ents
    six = load_cvdb_entities(csv, 6)
    assert [e["name"] for e in six] == ["Leonardo da Vinci", "Third Man", "Low Popularity", "Cleopatra", "Marie Curie", "Ren\xe9e Z"]
    assert {k: a for k, _, a in six[2]["facts"]}["occupation"] == "football player"


def test_cvdb_bad_input(tmp_path):
    bad = tmp_path / "nocol.csv"
    bad.write_text("name,birth,death,gender\nX,1,2,Male\n")
    with pytest.raises(DataError, match=r"nocol\.csv: column 'level3_main_occ' missing"):
        load_cvdb_entities(bad, 2)
    csv = write_cvdb(tmp_path / "small.csv", ["Q1,A_B,1452,1519,Male,painter,'Italy',Europe,900",
                                               "Q2,C_D,1452,1519,Female,painter,'Italy',Europe,900"])
    with pytest.raises(DataError, match=r"small\.csv: n_entities: asked for 4"):
        load_cvdb_entities(csv, 4)
    with pytest.raises(DataError, match="not found"):
        load_cvdb_entities(tmp_path / "missing.csv", 2)


def triple(s, p, o):
    return {"subject": {"surfaceform": s}, "predicate": {"uri": f"http://www.wikidata.org/prop/direct/{p}"}, "object": {"surfaceform": o}}


def test_trex_rules_table2(tmp_path):
    folder = tmp_path / "trex"
    folder.mkdir()
    docs = [{"triples": [
        triple("Dune (novel)", "P50", "Frank Herbert"),
        triple("Dune (novel)", "P577", "1965-08-01T00:00:00Z"),
        triple("Dune (novel)", "P136", "science fiction"),
        triple("Dune (novel)", "P136", "adventure"),
        triple("Dune (novel)", "P407", "English"),
        triple("Dune (novel)", "P31", "book"),       # not a table-2 predicate
        triple("It", "P136", "horror"),              # pronoun subject
        triple("Short", "P136", "drama"),            # too few questions
        triple("Short", "P407", "French"),
    ]}, {"triples": [
        triple("Dune (novel)", "P50", "Frank Herbert"),  # duplicate
        triple("Dune (novel)", "P123", "Cher"),          # single-word person? no: P123 is not a person predicate
        triple("Dune (novel)", "P57", "Madonna"),        # single-word person name: dropped
    ]}]
    (folder / "a.json").write_text(json.dumps(docs[:1]))
    (folder / "b.json").write_text(json.dumps(docs[1:]))
    ents = load_trex_entities(folder, 1, construction="table2")
    assert [e["name"] for e in ents] == ["Dune"]
    facts = {k: a for k, _, a in load_trex_entities(folder, 1, construction="table2")[0]["facts"]}
    assert len(ents[0]["facts"]) == 4
    all_facts = {"P50": "Frank", "P577": "1960s", "P136": "adventure;science fiction", "P407": "English", "P123": "Cher"}
    assert all(all_facts[k] == v for k, v in facts.items())
    from metaocl.data.trex import read_triples, triples_to_entities

    assert {k: a for k, _, a in triples_to_entities(read_triples(folder))[0]["facts"]} == all_facts
    with pytest.raises(DataError, match="asked for 2 T-REx entities but only 1 subjects"):
        load_trex_entities(folder, 2, construction="table2")


def test_trex_authors_construction_vs_table2_on_one_file(tmp_path):
    """The authors' predicates add P31 and drop P161/P88, keep every question, leave P1040 answers
    whole and draw the entity sample and answer order by the seed; Table 2 keeps exactly 4."""
    folder = tmp_path / "trex"
    folder.mkdir()
    docs = [{"triples": [
        triple("Dune (novel)", "P50", "Frank Herbert"),
        triple("Dune (novel)", "P577", "1965-08-01T00:00:00Z"),
        triple("Dune (novel)", "P136", "science fiction"),
        triple("Dune (novel)", "P136", "adventure"),
        triple("Dune (novel)", "P407", "English"),
        triple("Dune (novel)", "P31", "book"),
        triple("Dune (novel)", "P123", "Cher"),
        triple("Dune (novel)", "P57", "Madonna"),          # one-word person: dropped in both
        triple("Dune (novel)", "P1040", "Jane Doe"),       # editor: the authors' person list misses P1040
        triple("Heat (1995 film)", "P161", "Al Pacino"),   # Table 2 only
        triple("Heat (1995 film)", "P88", "Art Linson"),   # Table 2 only
        triple("Heat (1995 film)", "P57", "Michael Mann"),
        triple("Heat (1995 film)", "P136", "crime"),
        triple("Mona", "P31", "painting"),                 # the authors' only
        triple("Mona", "P180", "woman"),
        triple("Mona", "P195", "Louvre collection"),
        triple("Mona", "P135", "Renaissance"),
        triple("It", "P136", "horror"),
    ]}]
    (folder / "a.json").write_text(json.dumps(docs))
    authors = load_trex_entities(folder, 2, seed=0)  # the default construction
    assert [e["name"] for e in authors] == ["Dune", "Mona"]
    dune = {k: a for k, _, a in authors[0]["facts"]}
    assert dune.pop("P136") in ("adventure;science fiction", "science fiction;adventure")
    assert dune == {"P50": "Frank", "P577": "1960s", "P407": "English", "P31": "book", "P123": "Cher", "P1040": "Jane Doe"}
    assert {k: a for k, _, a in authors[1]["facts"]} == {"P31": "painting", "P180": "woman", "P195": "Louvre collection",
                                                         "P135": "Renaissance"}
    assert ("P31", "What is the type of [X]?", "painting") in [tuple(f) for f in authors[1]["facts"]]
    table2 = load_trex_entities(folder, 2, construction="table2")
    assert [e["name"] for e in table2] == ["Dune", "Heat"] and all(len(e["facts"]) == 4 for e in table2)
    assert {k: a for k, _, a in table2[1]["facts"]} == {"P161": "Al", "P88": "Art", "P57": "Michael", "P136": "crime"}
    assert {f[0] for f in table2[0]["facts"]} <= {"P50", "P577", "P136", "P407", "P123", "P1040"}
    # seeded: which of two answers comes first, and which subjects are drawn
    orders = {dict((k, a) for k, _, a in load_trex_entities(folder, 2, seed=s)[0]["facts"])["P136"] for s in range(12)}
    assert orders == {"adventure;science fiction", "science fiction;adventure"}
    assert {load_trex_entities(folder, 1, seed=s)[0]["name"] for s in range(12)} == {"Dune", "Mona"}
    assert {load_trex_entities(folder, 1, seed=s, construction="table2")[0]["name"] for s in range(4)} == {"Heat"}
    with pytest.raises(DataError, match=r"trex: n_entities: asked for 3 T-REx entities but only 2 subjects have >= 4 questions \(authors"):
        load_trex_entities(folder, 3)


def test_trex_bad_shape(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "x.json").write_text(json.dumps({"triples": []}))
    with pytest.raises(DataError, match=r"x\.json: expected a list of documents"):
        load_trex_entities(folder, 1)
    (folder / "x.json").write_text(json.dumps([{"text": "no triples"}]))
    with pytest.raises(DataError, match=r"x\.json: document 0: field 'triples'"):
        load_trex_entities(folder, 1)
    (folder / "x.json").write_text(json.dumps([{"triples": [{"subject": {"surfaceform": "A"}}]}]))
    with pytest.raises(DataError, match="predicate.uri"):
        load_trex_entities(folder, 1)
    with pytest.raises(DataError, match="not found"):
        load_trex_entities(tmp_path / "nowhere", 1)


def test_generated_samples_are_deterministic_and_read_by_the_real_loaders(tmp_path):
    from metaocl.data.sample import write_cvdb_sample, write_trex_sample

    a = write_cvdb_sample(tmp_path / "a.csv", 50, seed=1).read_bytes()
    b = write_cvdb_sample(tmp_path / "b.csv", 50, seed=1).read_bytes()
    c = write_cvdb_sample(tmp_path / "c.csv", 50, seed=2).read_bytes()
    assert a == b and a != c
    assert len(load_cvdb_entities(tmp_path / "a.csv", 50)) == 50
    t1 = write_trex_sample(tmp_path / "t1", 30, seed=1)
    t2 = write_trex_sample(tmp_path / "t2", 30, seed=1)
    assert sorted(p.read_bytes() for p in t1.iterdir()) == sorted(p.read_bytes() for p in t2.iterdir())
    assert len(load_trex_entities(t1, 30)) == 30
