"""Small generated stand-ins for the CVDB CSV and the T-REx JSON release (tests, CPU smoke sweeps).

They have the real files' layout (column names, JSON shape, ISO-8859-1 encoding, underscored CVDB
values, Wikidata predicate URIs), so the *real* loaders read them, and values drawn from small
vocabularies so that questions are learnable patterns (occupation from a short list, region
correlated with nationality, death after birth). A few rows the loaders must drop are mixed in
(missing values, names with punctuation, duplicates, pronoun subjects, unused predicates).

Nothing here is ever substituted for real data silently: configs name them as ``source:
cvdb_sample`` / ``trex_sample``. Output is a pure function of (rows, seed).
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import zlib
from pathlib import Path

from metaocl.data import data_home

MALE_FIRST = "James John Robert Michael William David Richard Joseph Thomas Charles Pierre Hans Luca Ivan Kenji Ahmed Carlos Diego Lars Omar".split()
FEMALE_FIRST = "Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Marie Anna Sofia Elena Yuki Fatima Lucia Ingrid Amira Chloe".split()
SYLLABLES = "ber ka lo ven dra mon tel sor pak rin gu fal dor mi zan ho wel tra nik sel".split()
# region -> nationalities (CVDB writes them quoted and underscored: 'United_States')
REGIONS = {
    "Europe": ["France", "Germany", "Italy", "United Kingdom", "Spain", "Poland"],
    "Americas": ["United States", "Brazil", "Mexico", "Canada", "Argentina"],
    "Asia": ["Japan", "China", "India", "Iran", "Turkey"],
    "Africa": ["Egypt", "Nigeria", "Kenya", "Morocco"],
    "Oceania": ["Australia", "New Zealand"],
}
OCCUPATIONS = ["actor", "singer", "politician", "football player", "writer", "painter", "composer", "film director", "physicist", "monarch"]


def _surname(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def cvdb_rows(rows: int, seed: int) -> list[dict]:
    """``rows`` complete, usable people (half men, half women) plus ~10% rows the loader drops."""
    rng = random.Random(seed)
    people, names = [], set()
    while len(people) < rows:
        gender = "Male" if len(people) % 2 == 0 else "Female"
        first = rng.choice(MALE_FIRST if gender == "Male" else FEMALE_FIRST)
        name = f"{first}_{_surname(rng)}"
        if rng.random() < 0.3:
            name = f"{first}_{_surname(rng)}_{_surname(rng)}"
        if name in names:
            continue
        names.add(name)
        region = rng.choice(sorted(REGIONS))
        nations = rng.sample(REGIONS[region], 2 if rng.random() < 0.15 else 1)
        birth = rng.choice([rng.randint(-600, 1899), rng.randint(1850, 1975)])
        birth = birth or 1
        death = min(birth + rng.randint(25, 95), 2018)
        people.append(
            {
                "name": name,
                "birth": birth,
                "death": death,
                "gender": gender,
                "level3_main_occ": rng.choice(OCCUPATIONS).replace(" ", "_"),
                "string_citizenship_raw_d": "_".join(f"'{n.replace(' ', '_')}'" for n in nations),
                "un_region": region,
                "wiki_readers_2015_2018": int(rng.lognormvariate(9, 2)) + 1,
            }
        )
    extra = []
    for i in range(max(2, rows // 10)):  # rows the loader must drop
        bad = dict(rng.choice(people))
        kind = i % 4
        if kind == 0:
            bad["name"] = bad["name"] + f"_Jr{i}"
            bad["death"] = ""  # still alive: missing answer
        elif kind == 1:
            bad["name"] = bad["name"].replace("_", "-", 1) + f"{i}"  # punctuation in the name
        elif kind == 2:
            bad["wiki_readers_2015_2018"] = 10**9  # duplicate name: one of the two rows is dropped
        else:
            bad["name"] = bad["name"] + f"_X{i}"
            bad["gender"] = ""  # missing gender
        extra.append(bad)
    out = people + extra
    rng.shuffle(out)
    for i, row in enumerate(out):  # a few unused columns, as in the real file
        row["wikidata_code"] = f"Q{100000 + i}"
        row["sum_visib_ln_5criteria"] = round(rng.random() * 20, 3)
    return out


def write_cvdb_sample(path: Path | str, rows: int, seed: int) -> Path:
    """Write a CVDB-shaped CSV (ISO-8859-1) with ``rows`` usable people."""
    path = Path(path)
    data = cvdb_rows(rows, seed)
    cols = ["wikidata_code", "name", "birth", "death", "gender", "level3_main_occ", "string_citizenship_raw_d",
            "un_region", "sum_visib_ln_5criteria", "wiki_readers_2015_2018"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", newline="", encoding="ISO-8859-1") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(data)
    tmp.replace(path)
    return path


# --- T-REx ---------------------------------------------------------------------------------------
ADJECTIVES = "Silent Hidden Golden Broken Distant Crimson Frozen Burning Quiet Endless Lost Secret Wild Pale Hollow Iron Velvet Last First Bitter".split()
NOUNS = "River Garden Empire Mirror Harbor Winter Tower Forest Letter Island Kingdom Shadow Voyage Crown Bridge Storm Promise Orchard Lantern Machine".split()
PLACES = "Paris Avalon Kyoto Lisbon Ohio Cairo Vienna Dublin Lima Oslo".split()
VALUES = {
    "P123": ["Penguin Books", "Random House", "Gallimard", "HarperCollins", "Faber and Faber"],
    "P750": ["Warner Bros", "Universal Pictures", "Paramount Pictures", "Columbia Pictures"],
    "P275": ["Creative Commons", "GNU General Public License", "MIT License"],
    "P127": ["Louvre", "Tate", "Prado", "Uffizi"],
    "P178": ["Nintendo", "Ubisoft", "Valve", "Sega"],
    "P407": ["English", "French", "German", "Spanish", "Japanese", "Italian"],
    "P179": ["Discworld", "Star Wars", "Dune", "Foundation"],
    "P136": ["drama", "comedy", "science fiction", "horror", "fantasy", "thriller", "romance"],
    "P921": ["war", "love", "friendship", "revenge", "family"],
    "P840": ["London", "New York City", "Paris", "Tokyo", "Rome"],
    "P915": ["California", "Morocco", "Iceland", "Prague"],
    "P180": ["Madonna", "landscape", "horse", "sea", "portrait"],
    "P195": ["Louvre collection", "National Gallery collection", "Hermitage collection"],
    "P135": ["Romanticism", "Modernism", "Impressionism", "Realism"],
}
PERSON_PREDICATES = ["P50", "P57", "P58", "P344", "P162", "P1040", "P86"]
# Table 2 has them, the authors' predicate list does not: extra facts on top of a work's >= 4 common ones.
TABLE2_ONLY = ["P161", "P88"]
TYPES = ["book", "film", "painting", "video game", "album"]  # P31, in the authors' list only
SAMPLE_VERSION = 2  # part of the folder name: a changed generator never reads an old folder


def _entity(text: str) -> dict:
    return {"surfaceform": text, "uri": f"http://www.wikidata.org/entity/Q{zlib.crc32(text.encode()) % 10**7}", "boundaries": None}


def _predicate(pid: str) -> dict:
    return {"surfaceform": pid, "uri": f"http://www.wikidata.org/prop/direct/{pid}", "boundaries": None}


def trex_documents(subjects: int, seed: int) -> list[dict]:
    """Documents whose triples give ``subjects`` creative works with >= 4 usable questions under both
    constructions (:mod:`metaocl.data.trex`): 4-6 facts of predicates both use, distinct answers
    (person answers have distinct first names), sometimes a cast member or commissioner (Table 2
    only) and a type (P31, the authors' only)."""
    rng = random.Random(seed)
    titles: set[str] = set()
    docs = []
    while len(titles) < subjects:
        title = f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
        if rng.random() < 0.6:
            title += f" of {rng.choice(PLACES)}"
        if rng.random() < 0.4:
            title += f" {rng.randint(2, 9)}"
        if title in titles:
            continue
        titles.add(title)
        shown = title + (" (novel)" if rng.random() < 0.2 else "")  # parenthesised qualifier, stripped
        preds = rng.sample(sorted(VALUES) + PERSON_PREDICATES + ["P577"], rng.randint(4, 6))
        preds += [p for p in TABLE2_ONLY if rng.random() < 0.25]
        first_names = iter(rng.sample(MALE_FIRST + FEMALE_FIRST, 2 * len(preds)))  # distinct per work
        triples = []
        for pid in preds:
            if pid == "P577":
                objs = [f"{rng.randint(1700, 2017)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T00:00:00Z"]
            elif pid in PERSON_PREDICATES or pid in TABLE2_ONLY:
                objs = [f"{next(first_names)} {_surname(rng)}" for _ in range(2 if rng.random() < 0.2 else 1)]
            else:
                objs = [rng.choice(VALUES[pid])]
            for obj in objs:
                triples.append({"subject": _entity(shown), "predicate": _predicate(pid), "object": _entity(obj)})
        triples.append({"subject": _entity(shown), "predicate": _predicate("P31"), "object": _entity(rng.choice(TYPES))})
        # noise the loader must drop: an unused predicate, a pronoun subject, a duplicate triple
        triples.append({"subject": _entity(shown), "predicate": _predicate("P495"), "object": _entity("United States")})
        triples.append({"subject": _entity("It"), "predicate": _predicate("P136"), "object": _entity("drama")})
        triples.append(dict(triples[0]))
        docs.append({"docid": f"doc{len(docs)}", "title": shown, "text": f"{shown} is a work.", "triples": triples})
    for i in range(max(1, subjects // 10)):  # works with too few questions: dropped
        shown = f"Minor Work {i}"
        triples = [{"subject": _entity(shown), "predicate": _predicate("P136"), "object": _entity("drama")}]
        docs.append({"docid": f"minor{i}", "title": shown, "text": "", "triples": triples})
    rng.shuffle(docs)
    return docs


def write_trex_sample(folder: Path | str, subjects: int, seed: int, n_files: int = 3) -> Path:
    """Write a T-REx-shaped folder of JSON files (lists of documents with ``triples``)."""
    folder = Path(folder)
    docs = trex_documents(subjects, seed)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    per_file = -(-len(docs) // n_files)
    for k in range(n_files):
        (tmp / f"re-nlg_{k * per_file}-{(k + 1) * per_file}.json").write_text(json.dumps(docs[k * per_file : (k + 1) * per_file]))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.replace(folder)
    return folder


def sample_path(source: str, rows: int, seed: int) -> Path:
    """Where the generated source lives; written on first use (a pure function of rows and seed)."""
    if source == "cvdb_sample":
        path = data_home() / "samples" / f"cvdb_sample_r{rows}_s{seed}.csv"
        if not path.is_file():
            write_cvdb_sample(path, rows, seed)
        return path
    if source == "trex_sample":
        path = data_home() / "samples" / f"trex_sample_v{SAMPLE_VERSION}_r{rows}_s{seed}"
        if not path.is_dir():
            write_trex_sample(path, rows, seed)
        return path
    raise ValueError(f"not a sample source: {source}")
