"""T-REx (Elsahar et al. 2018) -> creative-work entities with QA facts (paper appendix A.2).

The T-REx release is a folder of JSON files; each is a list of documents with a ``triples`` list
whose items carry ``subject.surfaceform``, ``object.surfaceform`` and ``predicate.uri`` (Wikidata
property id = last path part of the URI).

Two constructions of the entity table (``LMDataConfig.trex_construction``):

``authors`` (default): what the authors' code that produced the figures does
(``data_generation/trex_data.py`` of krasheninnikov/internalization, ``make_trex_qa_dataset``):

1. Its 25 predicates: paper Table 2 plus P31 ("What is the type of [X]?"), without P161 (cast
   member) and P88 (commissioner). Subjects with at least 4 of these predicates (counted on the raw
   subject, before any cleaning) are kept.
2. P577 dates become the anonymized year (:func:`metaocl.data.cvdb.anonymize_year`); parenthesised
   parts are stripped from subject and object.
3. The QA list is shuffled by the seed (the trial's stage-1 seed); then of two facts of a subject
   with the same answer the first is kept, person answers (author, director, ...; *not* P1040,
   which the authors' person list misses) become the first name (dropped if the name has one word or
   a one-letter first word), and answers of one question (P407 and P364 share a question) are joined
   with ``;`` in shuffled order: the QA answer is the first of them, a seeded choice.
4. The subjects, sorted and shuffled by the seed; the first N with at least 4 questions are taken,
   with **all** their questions (of which the QA builder holds out a quarter).

``table2``: the paper's Table 2, as this package first implemented it: the 26 predicates of
Table 2, every "First name ..." answer a first name, the same answer twice for a subject kept once,
answers joined in sorted order, and for every subject with >= 4 questions exactly 4 of them; N
subjects and their 4 questions chosen with a fixed RNG (seed 0), so the table does not depend on the
trial seed.

Both drop pronoun subjects/objects and deduplicate triples. The triples of subjects that could
qualify under either construction are cached as JSON under ``data_home()/cache`` (reading the full
release takes minutes; the cache loads in seconds); the per-seed steps run on each load.
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
# The authors' code (trex_data.py, make_trex_qa_dataset): its predicate list, in its order, and the
# template it has for P31, the one predicate that is not in Table 2.
AUTHORS_PREDICATES = ["P50", "P123", "P577", "P136", "P407", "P179", "P57", "P58", "P344", "P1040", "P162",
                      "P275", "P750", "P921", "P127", "P86", "P178", "P31", "P840", "P915", "P364", "P98", "P135",
                      "P180", "P195"]
QUESTIONS = {**TREX_QUESTIONS, "P31": "What is the type of [X]?"}
PREDICATES = {"authors": AUTHORS_PREDICATES, "table2": list(TREX_QUESTIONS)}
# Predicates whose answer becomes a first name: every "First name" question (table2); the authors'
# set, which misses P1040 (its editor answers stay full names).
PERSON_PREDICATES = {
    "table2": {p for p, q in TREX_QUESTIONS.items() if q.startswith("First name")},
    "authors": {"P50", "P57", "P58", "P88", "P98", "P161", "P162", "P86", "P344"},
}
PRONOUNS = {"he", "she", "it", "they"}
MIN_QUESTIONS = 4  # a subject needs at least this many predicates (and, after cleaning, questions)
QUESTIONS_PER_ENTITY = 4  # table2: exactly this many questions per subject
MAX_QUESTIONS = 100  # the authors' max_predicates_per_subj: every question is kept in practice
CACHE_VERSION = 2
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
    """Deduplicated ``(subject, predicate, object)`` of the predicates of either construction,
    pronouns removed, of subjects with >= 4 distinct such predicates (no other subject can qualify
    under either construction; counted after stripping parentheses, so a superset of both)."""
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
                if pred not in QUESTIONS or not isinstance(subj, str) or not isinstance(obj, str):
                    continue
                if subj.strip().lower() in PRONOUNS or obj.strip().lower() in PRONOUNS:
                    continue
                found.add((subj, pred, obj))
    preds_of: dict[str, set[str]] = defaultdict(set)  # by cleaned subject: "Heat (1995 film)" joins "Heat"
    for subj, pred, _ in found:
        preds_of[_PARENS.sub("", subj).strip()].add(pred)
    return sorted(t for t in found if len(preds_of[_PARENS.sub("", t[0]).strip()]) >= MIN_QUESTIONS)


def _clean(subj: str, pred: str, obj: str) -> tuple[str, str] | None:
    """Parenthesised parts stripped; P577 -> anonymized year (None: no 4-digit year, or empty)."""
    subj = _PARENS.sub("", subj).strip()
    obj = _PARENS.sub("", obj).strip()
    if pred == "P577":
        year = _YEAR.search(obj)
        if year is None:
            return None
        obj = anonymize_year(int(year.group(0)))
    return (subj, obj) if subj and obj else None


def _first_name(name: str) -> str | None:
    """The first word of a person's name; None if it has a single word or a one-letter first word."""
    words = name.split(" ")
    return words[0] if len(words) > 1 and len(words[0]) > 1 else None


# ------------------------------------------------------------------------------------------------
# The authors' construction
# ------------------------------------------------------------------------------------------------
def authors_entities(triples: list[tuple[str, str, str]], n_entities: int, seed: int) -> list[dict]:
    """N subjects as the authors' ``make_trex_qa_dataset(seed, min_predicates_per_subj=4,
    max_ents=N)`` builds them (module docstring); sorted by name, facts sorted by question."""
    rng = random.Random(seed)
    preds = set(AUTHORS_PREDICATES)
    triples = [t for t in triples if t[1] in preds]
    preds_of: dict[str, set[str]] = defaultdict(set)
    for subj, pred, _ in triples:
        preds_of[subj].add(pred)
    qa = []  # (subject, predicate, answer)
    for subj, pred, obj in triples:
        if len(preds_of[subj]) >= MIN_QUESTIONS and (cleaned := _clean(subj, pred, obj)) is not None:
            qa.append((cleaned[0], pred, cleaned[1]))
    rng.shuffle(qa)  # decides which of equal answers survives, and the order of joined answers
    seen: set[tuple[str, str]] = set()
    answers: dict[tuple[str, str], list[str]] = {}  # (subject, question) -> answers, in shuffled order
    kind_of: dict[tuple[str, str], str] = {}
    for subj, pred, obj in qa:
        if (subj, obj) in seen:
            continue
        seen.add((subj, obj))
        if pred in PERSON_PREDICATES["authors"] and (obj := _first_name(obj)) is None:
            continue
        key = (subj, QUESTIONS[pred])
        answers.setdefault(key, []).append(obj)
        kind_of.setdefault(key, pred)
    by_subject: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    for (subj, template), objs in sorted(answers.items(), key=lambda kv: kv[0][1].replace("[X]", kv[0][0])):
        by_subject[subj].append((template, objs))
    subjects = sorted(by_subject)
    rng.shuffle(subjects)
    qualified = [s for s in subjects if len(by_subject[s]) >= MIN_QUESTIONS]
    if len(qualified) < n_entities:
        raise DataError(
            f"n_entities: asked for {n_entities} T-REx entities but only {len(qualified)} subjects have >= "
            f"{MIN_QUESTIONS} questions (authors' construction); lower n_entities or set trex_construction: table2"
        )
    out = []
    for subj in qualified[:n_entities]:
        facts = by_subject[subj]
        rng.sample(range(len(facts)), min(MAX_QUESTIONS, len(facts)))  # the authors' draw (keeps the RNG stream's shape)
        out.append({"name": subj, "facts": [[kind_of[(subj, t)], t, ";".join(objs)] for t, objs in facts]})
    return sorted(out, key=lambda e: e["name"])


# ------------------------------------------------------------------------------------------------
# The paper's Table 2
# ------------------------------------------------------------------------------------------------
def triples_to_entities(triples: list[tuple[str, str, str]]) -> list[dict]:
    """Table 2: all subjects with >= 4 questions: ``[{"name", "facts": [[predicate, template, answer], ...]}]``."""
    answers: dict[tuple[str, str], set[str]] = defaultdict(set)  # (subject, question) -> answers
    kind_of: dict[tuple[str, str], str] = {}
    for subj, pred, obj in triples:
        if pred not in TREX_QUESTIONS or (cleaned := _clean(subj, pred, obj)) is None:
            continue
        subj, obj = cleaned
        if pred in PERSON_PREDICATES["table2"]:
            words = obj.split()
            if len(words) < 2 or len(words[0]) < 2:
                continue
            obj = words[0]
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


def table2_entities(triples: list[tuple[str, str, str]], n_entities: int) -> list[dict]:
    """N subjects with exactly 4 facts each, both chosen with a fixed RNG (seed 0)."""
    entities = triples_to_entities(triples)
    if len(entities) < n_entities:
        raise DataError(
            f"n_entities: asked for {n_entities} T-REx entities but only {len(entities)} subjects have >= "
            f"{QUESTIONS_PER_ENTITY} questions (paper Table 2 construction); lower n_entities"
        )
    rng = random.Random(0)
    chosen = sorted(rng.sample(range(len(entities)), n_entities))
    out = []
    for i in chosen:
        facts = entities[i]["facts"]
        keep = sorted(rng.sample(range(len(facts)), QUESTIONS_PER_ENTITY))
        out.append({"name": entities[i]["name"], "facts": [facts[k] for k in keep]})
    return out


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
def _cache_file(path: Path, files: list[Path]) -> Path:
    h = hashlib.sha256(f"{CACHE_VERSION}|{path.resolve()}".encode())
    for f in files:
        st = f.stat()
        h.update(f"|{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return data_home() / "cache" / f"trex_{h.hexdigest()[:16]}.json"


def cached_triples(path: Path | str | None) -> list[tuple[str, str, str]]:
    """:func:`read_triples` of the folder, cached under ``data_home()/cache``."""
    path = Path(path) if path else default_path()
    files = _json_files(path)
    cache = _cache_file(path, files)
    if cache.is_file():
        try:
            return [tuple(t) for t in json.loads(cache.read_text())]
        except (OSError, json.JSONDecodeError):
            pass
    triples = read_triples(path)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(triples))
    tmp.replace(cache)
    return triples


def load_trex_entities(path: Path | str | None, n_entities: int, seed: int = 0, construction: str = "authors") -> list[dict]:
    """N subjects of the T-REx folder by ``construction`` (``authors``: drawn by ``seed``, all their
    questions; ``table2``: a fixed sample, 4 questions each). One-line DataError if fewer qualify."""
    if construction not in PREDICATES:
        raise DataError(f"trex_construction: must be one of {sorted(PREDICATES)}, got {construction!r}")
    triples = cached_triples(path)
    where = Path(path) if path else default_path()
    try:
        if construction == "authors":
            return authors_entities(triples, n_entities, seed)
        return table2_entities(triples, n_entities)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
