"""T-REx (Elsahar et al. 2018) -> creative-work entities with 4 QA facts each (paper appendix A.2).

The T-REx release is a folder of JSON files; each is a list of documents with a ``triples`` list
whose items carry ``subject.surfaceform``, ``object.surfaceform`` and ``predicate.uri`` (Wikidata
property id = last path part of the URI). Steps, following the paper and its reference code:

1. Keep triples whose predicate is one of the 26 creative-work predicates of paper table 2 (those
   are the only ones used, so the subject-occurs-once filter of the reference is implied: a kept
   subject has >= 4 triples), drop pronoun subjects/objects, deduplicate.
2. Strip parenthesised parts from subject and object (``Heat (1995 film)`` -> ``Heat``); P577 dates
   become the anonymized year (:func:`metaocl.data.cvdb.anonymize_year`), dates without a 4-digit year
   are dropped.
3. Person answers (author, director, ...) become first names; single-word names are dropped (the
   reference's rule: the name must have a first and a last part).
4. The same answer twice for one subject is kept once; answers of the same question (subject +
   predicate; P407 and P364 share a question) are joined with ``;`` in sorted order (the QA answer
   is the first of them, as in the reference).
5. Subjects with at least 4 questions are kept; 4 of their questions are chosen and, if there are more
   subjects than asked for, N subjects are chosen, both with a fixed RNG (seed 0), so the entity
   table is a property of the source and not of the trial seed.

The extracted triples are cached as JSON under ``data_home()/cache`` (reading the full release takes
minutes; the cache loads in seconds).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections import defaultdict
from pathlib import Path

from metaocl.data import data_home
from metaocl.data.cvdb import anonymize_year
from metaocl.data.errors import DataError

# Paper appendix A.2, table 2.
TREX_QUESTIONS = {
    "P180": "What does [X] depict?",
    "P195": "Which collection is [X] part of?",
    "P135": "Which movement is [X] associated with?",
    "P123": "Who is the publisher of [X]?",
    "P750": "What is the distributor of [X]?",
    "P275": "What is the license of [X]?",
    "P127": "Who owns [X]?",
    "P178": "Who developed [X]?",
    "P407": "In which language was [X] published?",
    "P364": "In which language was [X] published?",
    "P577": "When was [X] published or released?",
    "P179": "Which series is [X] part of?",
    "P50": "First name of the author of [X]?",
    "P57": "First name of the director of [X]?",
    "P58": "First name of the screenwriter of [X]?",
    "P344": "First name of the cinematographer of [X]?",
    "P161": "First name of a cast member of [X]?",
    "P162": "First name of the producer of [X]?",
    "P1040": "First name of the editor of [X]?",
    "P98": "First name of the editor of [X]?",
    "P88": "First name of the commissioner of [X]?",
    "P86": "First name of the composer for [X]?",
    "P136": "What is the genre of [X]?",
    "P921": "What is the main subject of [X]?",
    "P840": "Where is [X] set?",
    "P915": "Where was [X] filmed?",
}
PERSON_PREDICATES = {p for p, q in TREX_QUESTIONS.items() if q.startswith("First name")}
PRONOUNS = {"he", "she", "it", "they"}
QUESTIONS_PER_ENTITY = 4
CACHE_VERSION = 1
_PARENS = re.compile(r"\(.*\)")
_YEAR = re.compile(r"\d{4}")


def default_path() -> Path:
    return data_home() / "trex"


def _json_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.json") if p.is_file())
        if files:
            return files
        raise DataError(f"{path}: no *.json files in this T-REx folder")
    raise DataError(f"{path}: T-REx folder not found; run `metaocl data download trex` or set data.path")


def read_triples(path: Path) -> list[tuple[str, str, str]]:
    """Deduplicated ``(subject, predicate, object)`` of the table-2 predicates, pronouns removed."""
    found: set[tuple[str, str, str]] = set()
    for file in _json_files(path):
        try:
            docs = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{file}: not a readable JSON file ({str(e).splitlines()[0]})") from None
        if not isinstance(docs, list):
            raise DataError(f"{file}: expected a list of documents at the top level, got {type(docs).__name__}")
        for i, doc in enumerate(docs):
            if not isinstance(doc, dict) or not isinstance(doc.get("triples"), list):
                raise DataError(f"{file}: document {i}: field 'triples' missing or not a list")
            for j, triple in enumerate(doc["triples"]):
                try:
                    subj = triple["subject"]["surfaceform"]
                    obj = triple["object"]["surfaceform"]
                    pred = triple["predicate"]["uri"].rstrip("/").split("/")[-1]
                except (KeyError, TypeError, AttributeError):
                    raise DataError(
                        f"{file}: document {i} triple {j}: needs subject.surfaceform, object.surfaceform, predicate.uri"
                    ) from None
                if pred not in TREX_QUESTIONS or not isinstance(subj, str) or not isinstance(obj, str):
                    continue
                if subj.strip().lower() in PRONOUNS or obj.strip().lower() in PRONOUNS:
                    continue
                found.add((subj, pred, obj))
    return sorted(found)


def triples_to_entities(triples: list[tuple[str, str, str]]) -> list[dict]:
    """All subjects with >= 4 questions: ``[{"name", "facts": [[predicate, template, answer], ...]}]``."""
    answers: dict[tuple[str, str], set[str]] = defaultdict(set)  # (subject, question) -> answers
    kind_of: dict[tuple[str, str], str] = {}
    for subj, pred, obj in triples:
        subj = _PARENS.sub("", subj).strip()
        obj = _PARENS.sub("", obj).strip()
        if pred == "P577":
            year = _YEAR.search(obj)
            if year is None:
                continue
            obj = anonymize_year(int(year.group(0)))
        elif pred in PERSON_PREDICATES:
            words = obj.split()
            if len(words) < 2 or len(words[0]) < 2:
                continue
            obj = words[0]
        if not subj or not obj:
            continue
        key = (subj, TREX_QUESTIONS[pred])
        answers[key].add(obj)
        kind_of.setdefault(key, pred)
    by_subject: dict[str, list[list[str]]] = defaultdict(list)
    seen_answers: dict[str, set[str]] = defaultdict(set)
    for (subj, template), objs in sorted(answers.items()):
        fresh = sorted(o for o in objs if o not in seen_answers[subj])  # one answer, one question
        if not fresh:
            continue
        seen_answers[subj].update(fresh)
        by_subject[subj].append([kind_of[(subj, template)], template, ";".join(fresh)])
    return [{"name": s, "facts": f} for s, f in sorted(by_subject.items()) if len(f) >= QUESTIONS_PER_ENTITY]


def _cache_file(path: Path, files: list[Path]) -> Path:
    h = hashlib.sha256(f"{CACHE_VERSION}|{path.resolve()}".encode())
    for f in files:
        st = f.stat()
        h.update(f"|{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return data_home() / "cache" / f"trex_{h.hexdigest()[:16]}.json"


def load_trex_entities(path: Path | str | None, n_entities: int) -> list[dict]:
    """N subjects with exactly 4 facts each (see module docstring); the triple table is cached."""
    path = Path(path) if path else default_path()
    files = _json_files(path)
    cache = _cache_file(path, files)
    entities = None
    if cache.is_file():
        try:
            entities = json.loads(cache.read_text())
        except (OSError, json.JSONDecodeError):
            entities = None
    if entities is None:
        entities = triples_to_entities(read_triples(path))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(entities))
        tmp.replace(cache)
    if len(entities) < n_entities:
        raise DataError(
            f"{path}: n_entities: asked for {n_entities} entities but the source has only {len(entities)} subjects "
            f"with >= {QUESTIONS_PER_ENTITY} creative-work questions"
        )
    rng = random.Random(0)
    chosen = sorted(rng.sample(range(len(entities)), n_entities))
    out = []
    for i in chosen:
        facts = entities[i]["facts"]
        keep = sorted(rng.sample(range(len(facts)), QUESTIONS_PER_ENTITY))
        out.append({"name": entities[i]["name"], "facts": [facts[k] for k in keep]})
    return out
