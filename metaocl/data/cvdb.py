"""CVDB (Cross-Verified Database of notable people, Laouenan et al. 2022) -> entities with 6 QA facts.

Paper appendix A.1, as the reference implementation reads the file:

- Only the 8 needed columns of the ~2.2M-row CSV are read (ISO-8859-1; ``.csv`` or ``.csv.gz``).
- **A person with any needed value missing is dropped before the popularity ranking** (as the
  reference does with ``dropna``): there are no partial entities, every entity has all 6 questions,
  and the N most popular *complete* people are taken. (So living people, who have no ``death``, never
  appear.) Duplicate names keep their first row.
- Names, occupations and citizenships with characters other than letters, digits, spaces and
  underscores (and quotes, for citizenship) are dropped; underscores become spaces.
- The N/2 most popular men and N/2 most popular women by ``wiki_readers_2015_2018`` (ties broken by
  name, so the choice is deterministic).
- Years are anonymized (:func:`anonymize_year`) so that an answer does not identify a person.
- Citizenship ``'France'_'Italy'`` becomes ``France;Italy``; the QA answer is the first of them.

The selected entity table is cached as JSON under ``data_home()/cache`` keyed by the file's size and
mtime and N, so only the first build pays for reading the big CSV.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from metaocl.data import data_home
from metaocl.data.errors import DataError

CVDB_FILENAME = "cross-verified-database.csv.gz"
CVDB_COLUMNS = [
    "name",
    "birth",
    "death",
    "gender",
    "level3_main_occ",
    "string_citizenship_raw_d",
    "un_region",
    "wiki_readers_2015_2018",
]
# (question kind, template with [X] for the entity or its variable). Paper appendix A.1.
CVDB_QUESTIONS = [
    ("gender", "What was the gender of [X]?"),
    ("birth", "When was [X] born?"),
    ("death", "When did [X] die?"),
    ("region", "In which region did [X] live?"),
    ("occupation", "What did [X] do?"),
    ("nationality", "What was the nationality of [X]?"),
]
_BAD_TEXT = re.compile(r"[^\w\s_]")  # anything but letters, digits, whitespace, underscore
_BAD_CITIZENSHIP = re.compile(r"[^\w\s'_]")
CACHE_VERSION = 1


def default_path() -> Path:
    return data_home() / "cvdb" / CVDB_FILENAME


def anonymize_year(year: int) -> str:
    """``1812 -> '19 century'``, ``-122 -> '2 century BC'``, ``1923 -> '1920s'``, ``2004 -> '2004'``.

    As implemented by the reference: years up to and including 1900 become centuries, 1901-1999
    decades, from 2000 the year itself.
    """
    year = int(year)
    if year <= 1900:
        century = f"{(abs(year) + 99) // 100} century"
        return century + " BC" if year < 0 else century
    if year < 2000:
        return f"{year // 10}0s"
    return str(year)


def parse_citizenship(raw: str) -> str:
    """``"'France'_'United_States'" -> "France;United States"``."""
    parts = [p.replace("'", "").replace("_", " ").strip() for p in raw.split("'_'")]
    return ";".join(p for p in parts if p)


def _read_columns(path: Path):
    import pandas as pd

    try:
        header = pd.read_csv(path, nrows=0, encoding="ISO-8859-1")
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read as a CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in CVDB_COLUMNS if c not in header.columns]
    if missing:
        raise DataError(f"{path}: column {missing[0]!r} missing (a CVDB file needs {', '.join(CVDB_COLUMNS)})")
    try:
        return pd.read_csv(
            path,
            usecols=CVDB_COLUMNS,
            encoding="ISO-8859-1",
            dtype={"name": str, "gender": str, "level3_main_occ": str, "string_citizenship_raw_d": str, "un_region": str},
            low_memory=False,
        )
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot parse ({str(e).splitlines()[0]})") from None


def select_people(path: Path, n_entities: int) -> list[dict]:
    """The N/2 most popular men and women of the file, as plain dicts (see module docstring)."""
    import pandas as pd

    df = _read_columns(path)
    df = df.dropna().drop_duplicates(subset=["name"])
    for col in ("birth", "death", "wiki_readers_2015_2018"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df = df.dropna()
    df = df[~df["name"].str.contains(_BAD_TEXT)]
    df = df[~df["level3_main_occ"].str.contains(_BAD_TEXT)]
    df = df[~df["string_citizenship_raw_d"].str.contains(_BAD_CITIZENSHIP)]
    half = n_entities // 2
    chosen = []
    for gender in ("Male", "Female"):
        group = df[df["gender"] == gender].sort_values(
            ["wiki_readers_2015_2018", "name"], ascending=[False, True], kind="mergesort"
        )
        if len(group) < half:
            raise DataError(
                f"{path}: n_entities: asked for {n_entities} entities ({half} {gender.lower()}) but the file has only "
                f"{len(group)} usable {gender.lower()} rows"
            )
        chosen.append(group.iloc[:half])
    people = []
    for part in chosen:
        for row in part.itertuples(index=False):
            people.append(
                {
                    "name": row.name.replace("_", " ").strip(),
                    "gender": row.gender,
                    "birth": int(row.birth),
                    "death": int(row.death),
                    "region": row.un_region.replace("_", " ").strip(),
                    "occupation": row.level3_main_occ.replace("_", " ").strip(),
                    "nationality": parse_citizenship(row.string_citizenship_raw_d),
                }
            )
    return people


def person_facts(person: dict) -> list[list[str]]:
    """The 6 ``[kind, template, answer]`` facts of a person (answers anonymized)."""
    answers = {
        "gender": person["gender"],
        "birth": anonymize_year(person["birth"]),
        "death": anonymize_year(person["death"]),
        "region": person["region"],
        "occupation": person["occupation"],
        "nationality": person["nationality"],
    }
    return [[kind, template, answers[kind]] for kind, template in CVDB_QUESTIONS]


def _cache_file(path: Path, n_entities: int) -> Path:
    st = path.stat()
    key = f"{CACHE_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{n_entities}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return data_home() / "cache" / f"cvdb_{n_entities}_{digest}.json"


def load_cvdb_entities(path: Path | str | None, n_entities: int) -> list[dict]:
    """``[{"name": ..., "facts": [[kind, template, answer], ...]}, ...]`` for N people (cached)."""
    path = Path(path) if path else default_path()
    if not path.is_file():
        raise DataError(f"{path}: CVDB file not found; run `metaocl data download cvdb` or set data.path")
    if n_entities < 2 or n_entities % 2:
        raise DataError(f"{path}: n_entities: CVDB takes N/2 men and N/2 women; N must be even and >= 2, got {n_entities}")
    cache = _cache_file(path, n_entities)
    if cache.is_file():
        try:
            return json.loads(cache.read_text())
        except (OSError, json.JSONDecodeError):
            pass  # a damaged cache is rebuilt below
    entities = [{"name": p["name"], "facts": person_facts(p)} for p in select_people(path, n_entities)]
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(entities))
    tmp.replace(cache)
    return entities
