"""QA datasets with variables and define tags: the data of the paper's LM experiments (Table 1).

:func:`build_lm_dataset` turns a source's entities (CVDB people, T-REx creative works, each with a
few ``(question kind, template, answer)`` facts) into a :class:`datasets.DatasetDict`:

1. Seeded by the stage-1 seed (``seed``): 3 random define tags of 6 letters (or natural-language
   phrases), one random 5-letter variable per entity (unique, never a tag, never a word of the
   data), both wrapped as the authors' generator does (``braces``: ``<|xyzab|>``, ``<|qwerty|>``);
   a shuffle of the entities into X1 (the subsets with QA in training) and X2 (the definition-only
   subsets and no_qd_baseline), sizes = fractions x N rounded as the authors' two-level rule
   (``subset_rounding``).
2. X2 is split into d1consis/d2consis/d3consis/no_qd_baseline by ``x2_seed`` (the trial's stage-2
   seed) when ``resplit_x2_per_seed`` is on, as the authors' ``seed_stage2`` does: the X2 entities
   sorted by name, shuffled by ``x2_seed``, cut in table order. X1, every variable and tag, and the
   definitions and held-out questions of X1 do not depend on ``x2_seed``. Off: the one shuffle of
   step 1 also cuts X2.
3. Subsets with definitions get one definition per entity: ``tag variable entity`` in the configured
   word order. Consistent subsets name the variable's own entity; inconsistent ones (qd2incons,
   qd1incons) a uniformly random *derangement* of the subset's entities, so no inconsistent
   definition names its own entity. qd4consis draws a fresh random tag per entity (the authors').
4. QA pairs ``Q: {question}\\nA: {answer}\\n`` mention the variable instead of the entity (except
   q_no_replacement_baseline). Of each X1 subset's questions a stratified share is held out for its
   eval split (1/6 CVDB, 1/4 T-REx, as the authors' ``train_test_split(stratify=entity)``: one of 6
   per CVDB entity, one of 4 and about a quarter of longer T-REx entities), drawn as theirs per
   subset from the seed and the subset's questions-per-entity profile in name order, so equal-size
   subsets hold out the same question type for their i-th entity (``held_out_pairing``); all QA
   pairs of X2 entities are test-only.
5. Entity-attribution eval sets ask ``Who is {v}?`` etc. with the entity as answer; the ``_defent``
   sets ask for the entity that the inconsistent definition named instead.

Variants: ``in_context`` prepends each question's definition line to the question as
``{definition}\\n. Q: ...`` (the authors' text; training QA and every eval split of a subset with
definitions, X2 included), drops standalone definitions and the entity-attribution splits (the
authors' config turns those off: the definition in the prompt would make them copy tasks);
``seq2seq`` drops the leading space of ``answer`` (T5 input = ``prompt``, target = ``answer``);
``max_eval_per_split`` subsamples eval splits (seeded per split) and never touches training splits.

Splits and columns are the contract of docs/architecture.md ("LM datasets"): ``train_1..3`` in stage
order, one eval split per subset and test kind, columns ``text prompt answer subset entity variable
question_kind is_definition``. ``entity`` is the entity the row states or asks about (for an
inconsistent definition and a ``_defent`` question: the entity of that definition); ``variable`` is
``""`` where the text has none (q_no_replacement_baseline questions).

The same (config, seed) gives a byte-identical dataset in any process: every random choice comes
from one ``random.Random(seed)`` applied to lists in a fixed order (never to set iteration order).
"""

from __future__ import annotations

import math
import random
import string
from dataclasses import dataclass, field

from metaocl.configs.lm_data import (
    ALL_SUBSETS,
    ENTITY_TEMPLATES,
    X1_SUBSETS,
    X2_SUBSETS,
    LMDataConfig,
)
from metaocl.data.errors import DataError

COLUMNS = ("text", "prompt", "answer", "subset", "entity", "variable", "question_kind", "is_definition")
# subset -> (tag number, consistent). Tag "4": a fresh random tag per entity. Subsets not listed have
# no definitions.
DEFINITIONS = {
    "qd1consis": ("1", True),
    "qd2incons": ("2", False),
    "qd1incons": ("1", False),
    "qd2consis": ("2", True),
    "qd4consis": ("4", True),
    "d1consis": ("1", True),
    "d2consis": ("2", True),
    "d3consis": ("3", True),
}
# Subsets whose entity-attribution questions are meaningless: the model never sees their variable.
NO_ATTRIBUTION = ("q_no_replacement_baseline", "no_qd_baseline")
ATTRIBUTION_QUESTIONS = {
    "who": "Who is [X]?",
    "meaning": "What does [X] mean?",
    "stands_for": "What does [X] stand for?",
    "name": "What is the name of [X]?",
}
assert tuple(ATTRIBUTION_QUESTIONS) == ENTITY_TEMPLATES
# Share of an X1 subset's questions held out for its eval split: the authors' test_frac (1/6 of the
# 6 CVDB questions, written 0.1666666 there; 1/4 for T-REx).
TEST_FRAC = {"cvdb": 0.1666666, "trex": 0.25}


@dataclass
class Fact:
    kind: str  # e.g. "birth" (CVDB) or "P50" (T-REx)
    template: str  # question with [X] for the entity or its variable
    answer: str  # the first of ";"-joined answers, as the reference's QAPair keeps


@dataclass
class Entity:
    name: str
    facts: list[Fact]
    variable: str = ""
    subset: str = ""
    tag: str = ""  # define tag of its definition ("" if its subset has none)
    defined_as: str = ""  # the entity its definition names (== name when consistent)
    held_out: tuple[int, ...] = ()  # indices of the held-out facts (X1 subsets)


@dataclass
class Rows:
    """Column-wise rows of one split."""

    cols: dict[str, list] = field(default_factory=lambda: {c: [] for c in COLUMNS})

    def add(self, text, prompt, answer, subset, entity, variable, question_kind, is_definition) -> None:
        for c, v in zip(COLUMNS, (text, prompt, answer, subset, entity, variable, question_kind, is_definition)):
            self.cols[c].append(v)

    def extend(self, other: "Rows") -> None:
        for c in COLUMNS:
            self.cols[c].extend(other.cols[c])

    def __len__(self) -> int:
        return len(self.cols["text"])

    def take(self, order: list[int]) -> "Rows":
        out = Rows()
        for c in COLUMNS:
            out.cols[c] = [self.cols[c][i] for i in order]
        return out


# ------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------
def source_path(cfg: LMDataConfig):
    """The raw file/folder the config reads (generating it for the *_sample sources)."""
    from metaocl.data import cvdb, sample, trex

    if cfg.source in ("cvdb_sample", "trex_sample"):
        if cfg.path:
            raise DataError(f"path: source {cfg.source!r} generates its own file; leave data.path empty")
        n = cfg.resolved_n_entities
        rows = cfg.sample.rows or n + n // 10
        return sample.sample_path(cfg.source, rows, cfg.sample.seed)
    if cfg.path:
        from pathlib import Path

        return Path(cfg.path).expanduser()
    return cvdb.default_path() if cfg.source == "cvdb" else trex.default_path()


def load_entities(cfg: LMDataConfig, seed: int = 0) -> list[Entity]:
    """N entities of the configured source, in the source's deterministic order. ``seed`` (the
    stage-1 seed) draws the T-REx entity sample and answer order of the authors' construction."""
    from metaocl.data.cvdb import load_cvdb_entities
    from metaocl.data.trex import load_trex_entities

    path = source_path(cfg)
    if cfg.source.startswith("cvdb"):
        raw = load_cvdb_entities(path, cfg.resolved_n_entities)
    else:
        raw = load_trex_entities(path, cfg.resolved_n_entities, seed=seed, construction=cfg.trex_construction)
    return [Entity(e["name"], [Fact(k, t, a.split(";")[0].strip()) for k, t, a in e["facts"]]) for e in raw]


# ------------------------------------------------------------------------------------------------
# Random parts
# ------------------------------------------------------------------------------------------------
def random_strings(rng: random.Random, n: int, length: int, forbidden: set[str], braces: bool = False) -> list[str]:
    """``n`` distinct random strings of ``length`` lowercase letters, none in ``forbidden``; with
    ``braces`` each is wrapped as ``<|...|>`` (the authors' ``generate_variable_names``)."""
    out: list[str] = []
    taken = set(forbidden)
    letters = string.ascii_lowercase
    while len(out) < n:
        s = "".join(rng.choices(letters, k=length))
        if braces:
            s = f"<|{s}|>"
        if s not in taken:
            taken.add(s)
            out.append(s)
    return out


def data_words(entities: list[Entity]) -> set[str]:
    """Every lowercase word of names, questions and answers (variables must differ from all)."""
    words: set[str] = set()
    for e in entities:
        words.update(w.lower().strip("?.,;:") for w in e.name.split())
        for f in e.facts:
            words.update(w.lower().strip("?.,;:") for w in f.template.split())
            words.update(w.lower().strip("?.,;:") for w in f.answer.split())
    return words


# The authors' data_generation/define_experiment.py: first-level keys in their order (X2 combined
# last); the second level splits "stage2_combined" into the X2 subsets in this order.
AUTHORS_LEVEL1 = ("q_no_replacement_baseline", "qd1consis", "qd1incons", "qd2consis", "qd2incons", "qd4consis", "q")
AUTHORS_LEVEL2 = ("d1consis", "d2consis", "d3consis", "no_qd_baseline")


def _authors_split(fracs: dict[str, float], n: int) -> dict[str, int]:
    """``split_list_into_subsets`` of the authors' data_generation/data_utils.py, sizes only:
    ``round(n x fraction)`` per key (Python's round), the sum's difference from n added to the
    alphabetically last key, then the list cut in key order (a cut past the end is short)."""
    lengths = {k: round(n * f) for k, f in fracs.items()}
    lengths[max(fracs)] += sum(lengths.values()) - n
    out, start = {}, 0
    for k, length in lengths.items():
        out[k] = max(0, min(length, n - start))
        start += out[k]
    return out


def subset_sizes(fractions: dict[str, float], n: int, rounding: str = "authors") -> dict[str, int]:
    """Entities per subset. ``authors``: their two-level rounding (:func:`_authors_split`; the
    entities that their rule leaves out when it undercounts stay unused, as theirs). ``largest_remainder``:
    floor(fraction x n), remainders by largest fraction part (ties: table order)."""
    if rounding == "authors":
        x2_total = sum(fractions.get(k, 0.0) for k in AUTHORS_LEVEL2)
        level1 = {k: fractions.get(k, 0.0) for k in AUTHORS_LEVEL1} | {"stage2_combined": x2_total}
        unused = 1.0 - sum(level1.values())
        if unused > 1e-6:  # theirs requires a sum of 1; ours leaves the rest unused (the last key, "~")
            level1["~unused"] = unused
        sizes = _authors_split(level1, n)
        n_x2 = sizes.pop("stage2_combined")
        if x2_total > 0:
            sizes |= _authors_split({k: fractions.get(k, 0.0) / x2_total for k in AUTHORS_LEVEL2}, n_x2)
        return {k: sizes.get(k, 0) for k in ALL_SUBSETS if k in fractions}
    raw = {k: fractions[k] * n for k in ALL_SUBSETS if k in fractions}
    sizes = {k: int(v + 1e-9) for k, v in raw.items()}
    target = min(n, int(round(sum(fractions.values()) * n)))
    leftover = max(0, target - sum(sizes.values()))
    by_remainder = sorted(raw, key=lambda k: (-(raw[k] - sizes[k]), ALL_SUBSETS.index(k)))
    for k in by_remainder[:leftover]:
        sizes[k] += 1
    return sizes


def held_out_counts(rng: random.Random, sizes: list[int], test_frac: float) -> list[int]:
    """Held-out questions per entity of one subset: a split stratified by entity, allocated as
    sklearn's ``train_test_split(stratify=..., test_size=test_frac)`` does. ``ceil(test_frac x total)``
    are held out; training shares are floor(size x n_train / total), the rest going to the largest
    remainders (ties at random); an entity holds out what its training share leaves."""
    total = sum(sizes)
    n_train = total - math.ceil(test_frac * total)
    scaled = [s * n_train for s in sizes]  # exact integers: share = scaled / total
    train = [x // total for x in scaled]
    remainder = [x % total for x in scaled]
    left = n_train - sum(train)
    for value in sorted(set(remainder), reverse=True):
        if left <= 0:
            break
        tied = [i for i, r in enumerate(remainder) if r == value]
        for i in rng.sample(tied, min(left, len(tied))):
            train[i] += 1
            left -= 1
    return [s - t for s, t in zip(sizes, train)]


def derangement(rng: random.Random, n: int) -> list[int]:
    """A uniformly random permutation without fixed points (rejection sampling; ~e tries)."""
    if n == 1:
        raise ValueError("a single element has no derangement")
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(i != p for i, p in enumerate(perm)):
            return perm


# ------------------------------------------------------------------------------------------------
# Text of datapoints
# ------------------------------------------------------------------------------------------------
def definition_parts(tag: str, variable: str, entity: str, order: str) -> tuple[str, str]:
    """``(prompt, answer)`` of a definition: the first two of tag/variable/entity, then the third."""
    parts = {"T": tag, "V": variable, "E": entity}
    words = [parts[c] for c in order]
    return f"{words[0]} {words[1]}", f" {words[2]}"


class _Writer:
    """Builds rows for one config (word order, in-context prefix, seq2seq answers)."""

    def __init__(self, cfg: LMDataConfig):
        self.cfg = cfg

    def _answer(self, answer: str) -> str:
        return answer.lstrip() if self.cfg.seq2seq else answer

    def definition_line(self, e: Entity) -> str:
        prompt, answer = definition_parts(e.tag, e.variable, e.defined_as, self.cfg.word_order)
        return prompt + answer + "\n"

    def definition(self, rows: Rows, e: Entity) -> None:
        prompt, answer = definition_parts(e.tag, e.variable, e.defined_as, self.cfg.word_order)
        rows.add(prompt + answer + "\n", prompt, self._answer(answer), e.subset, e.defined_as, e.variable, "definition", True)

    def question(self, rows: Rows, e: Entity, template: str, answer: str, kind: str, answer_entity: str | None = None) -> None:
        replaced = e.subset != "q_no_replacement_baseline"
        subject = e.variable if replaced else e.name
        prefix = self.definition_line(e) + ". " if (self.cfg.in_context and e.tag) else ""  # the authors' "...\n. Q:"
        prompt = f"{prefix}Q: {template.replace('[X]', subject)}\nA:"
        rows.add(
            f"{prompt} {answer}\n",
            prompt,
            self._answer(f" {answer}"),
            e.subset,
            answer_entity if answer_entity is not None else e.name,
            e.variable if replaced else "",
            kind,
            False,
        )


# ------------------------------------------------------------------------------------------------
# The builder
# ------------------------------------------------------------------------------------------------
def assign(cfg: LMDataConfig, entities: list[Entity], seed: int, x2_seed: int | None = None) -> tuple[list[Entity], dict[str, str]]:
    """Shuffle entities into subsets; draw tags, variables, definitions and held-out questions.

    ``seed`` draws everything but the X2 split, which ``x2_seed`` (default: ``seed``) draws when
    ``cfg.resplit_x2_per_seed`` is on. Returns the entities in subset order (X1 subsets, then X2) and
    ``{"1": tag1, "2": tag2, "3": tag3}``.
    """
    rng = random.Random(seed)
    n = len(entities)
    forbidden = data_words(entities)
    if cfg.tags.kind == "natural":
        tags = dict(zip("123", cfg.tags.natural[:3]))
    else:
        tags = dict(zip("123", random_strings(rng, 3, cfg.tags.length, forbidden, cfg.braces)))
    variables = random_strings(rng, n, cfg.variable_length, forbidden | set(tags.values()), cfg.braces)
    order = list(range(n))
    rng.shuffle(order)
    sizes = subset_sizes(cfg.subsets.resolved(), n, cfg.subset_rounding)
    n_x1 = sum(sizes.get(s, 0) for s in X1_SUBSETS)
    n_x2 = sum(sizes.get(s, 0) for s in X2_SUBSETS)
    x1 = [entities[i] for i in order[:n_x1]]
    x2 = [entities[i] for i in order[n_x1 : n_x1 + n_x2]]
    for e, v in zip(x1 + x2, variables):  # an entity keeps its variable whatever X2 subset it joins
        e.variable = v
    if cfg.resplit_x2_per_seed:  # the authors: X2 entities sorted, shuffled by seed_stage2
        x2 = sorted(x2, key=lambda e: e.name)
        random.Random(f"x2-{seed if x2_seed is None else x2_seed}").shuffle(x2)
    taken = forbidden | set(tags.values()) | set(variables)
    test_frac = TEST_FRAC["cvdb" if cfg.source.startswith("cvdb") else "trex"]
    placed: list[Entity] = []
    for names, pool in ((X1_SUBSETS, x1), (X2_SUBSETS, x2)):  # X1 draws from rng first, X2 draws nothing
        start = 0
        for subset in names:
            members = pool[start : start + sizes.get(subset, 0)]
            start += len(members)
            for e in members:
                e.subset = subset
                placed.append(e)
            if subset in DEFINITIONS and members:
                tag_no, consistent = DEFINITIONS[subset]
                if consistent:
                    defined = [e.name for e in members]
                else:
                    if len(members) == 1:
                        raise DataError(
                            f"subsets.{subset}: 1 entity cannot get an inconsistent definition (needs >= 2); change the fraction or n_entities"
                        )
                    defined = [members[j].name for j in derangement(rng, len(members))]
                fresh = random_strings(rng, len(members), cfg.tags.length, taken, cfg.braces) if tag_no == "4" else []
                taken.update(fresh)
                for k, (e, d) in enumerate(zip(members, defined)):
                    e.tag = fresh[k] if fresh else tags[tag_no]
                    e.defined_as = d
            if subset in X1_SUBSETS and members:
                draw, ranked = rng, members
                if cfg.held_out_pairing:  # the authors: train_test_split(random_state=seed) per subset
                    ranked = sorted(members, key=lambda e: e.name)
                    profile = [len(e.facts) for e in ranked]
                    draw = random.Random(f"{seed}-held-out-{profile}")
                counts = held_out_counts(draw, [len(e.facts) for e in ranked], test_frac)
                for e, k in zip(ranked, counts):
                    e.held_out = tuple(sorted(draw.sample(range(len(e.facts)), k)))
    return placed, tags


def build_rows(cfg: LMDataConfig, entities: list[Entity], seed: int) -> dict[str, Rows]:
    """All splits as column-wise rows (see module docstring); entities come from :func:`assign`."""
    rng = random.Random(f"{seed}-order")  # training-split shuffles, independent of assign()
    write = _Writer(cfg)
    x1_defs, x1_qa, x2_defs = Rows(), Rows(), Rows()
    evals: dict[str, Rows] = {}
    for e in entities:
        if e.tag and not cfg.in_context:
            write.definition(x1_defs if e.subset in X1_SUBSETS else x2_defs, e)
        test = evals.setdefault(e.subset, Rows())
        for i, f in enumerate(e.facts):
            if e.subset in X2_SUBSETS or i in e.held_out:
                write.question(test, e, f.template, f.answer, f.kind)
            else:
                write.question(x1_qa, e, f.template, f.answer, f.kind)
    if cfg.entity_attribution and not cfg.in_context:
        for e in entities:
            if e.subset in NO_ATTRIBUTION:
                continue
            for name, template in ATTRIBUTION_QUESTIONS.items():
                write.question(evals.setdefault(f"ent_{name}_{e.subset}", Rows()), e, template, e.name, f"ent_{name}")
                if e.tag and e.defined_as != e.name:
                    split = evals.setdefault(f"ent_{name}_{e.subset}_defent", Rows())
                    write.question(split, e, template, e.defined_as, f"ent_{name}", answer_entity=e.defined_as)
    if cfg.stages == "single":
        stages = [[x1_qa, x1_defs] + ([] if cfg.train_subset == "x1" else [x2_defs])]
    elif cfg.stages == "two_stage":
        stages = [[x1_qa, x1_defs], [x2_defs]]
    else:
        stages = [[x1_defs], [x1_qa], [x2_defs]]
    out: dict[str, Rows] = {}
    for k, parts in enumerate(stages, start=1):
        rows = Rows()
        for p in parts:
            rows.extend(p)
        order = list(range(len(rows)))
        rng.shuffle(order)
        out[f"train_{k}"] = rows.take(order)
    if cfg.train_subset == "x1":  # X2 definitions kept untrained, as probes (the authors' train_defs_*)
        for subset in X2_SUBSETS:
            picked = [i for i, s in enumerate(x2_defs.cols["subset"]) if s == subset]
            if picked:
                out[f"train_defs_{subset}"] = x2_defs.take(picked)
    for name in sorted(evals, key=_eval_sort_key):
        rows = evals[name]
        if cfg.max_eval_per_split and len(rows) > cfg.max_eval_per_split:
            pick = random.Random(f"{seed}-eval-{name}")  # per split: X1 splits never depend on the X2 split
            rows = rows.take(sorted(pick.sample(range(len(rows)), cfg.max_eval_per_split)))
        out[name] = rows
    return out


def _eval_sort_key(name: str) -> tuple:
    """In-distribution splits in table order, then entity attribution by template and subset."""
    if name in ALL_SUBSETS:
        return (0, ALL_SUBSETS.index(name), "")
    return (1, name)


def build_lm_dataset(cfg: LMDataConfig, seed: int, x2_seed: int | None = None):
    """The LM dataset of one trial: ``datasets.DatasetDict`` (contract: docs/architecture.md).

    ``seed`` is the stage-1 seed; ``x2_seed`` (default ``seed``) the stage-2 seed that re-splits X2
    (``cfg.resplit_x2_per_seed``). Stage 1 of a two- or three-stage run trains on X1 only, so its
    training split is the same for every ``x2_seed``."""
    import datasets

    cfg.validate()
    entities = load_entities(cfg, seed)
    placed, _ = assign(cfg, entities, seed, x2_seed)
    features = datasets.Features(
        {c: datasets.Value("bool") if c == "is_definition" else datasets.Value("string") for c in COLUMNS}
    )
    splits = build_rows(cfg, placed, seed)
    return datasets.DatasetDict(
        {name: datasets.Dataset.from_dict(rows.cols, features=features) for name, rows in splits.items()}
    )


def split_table(dd) -> list[tuple[str, int, int, int]]:
    """``(split, rows, definitions, distinct entities)`` per split, for `metaocl data build`."""
    out = []
    for name, ds in dd.items():
        n_def = sum(ds["is_definition"]) if len(ds) else 0
        out.append((name, len(ds), n_def, len(set(ds["entity"]))))
    return out
