"""The data half of a language-model trial: which QA source, which subsets, which variant.

Embedded by the LM config as ``LMConfig.data: LMDataConfig`` and consumed by
:func:`metaocl.data.qa.build_lm_dataset`. The defaults build the paper's two-stage CVDB experiment
with the subset fractions of paper Table 1; where the paper and the authors' code
(``krasheninnikov/internalization``) differ in how the data is built, the default follows the code
that produced the figures and the paper's variant is a named option (``braces``,
``resplit_x2_per_seed``, ``trex_construction``; docs/fidelity.md). Sweep files vary single fields,
e.g. ``data.word_order: [TVE, TEV, VTE, VET, ETV, EVT]`` or ``data.subsets.p: [0.6, 0.8, 0.97]``.

No heavy imports here: config validation runs before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from metaocl.config import ConfigError

# Stage-1 (X1) subsets carry QA pairs in training; stage-2 (X2) subsets only definitions.
X1_SUBSETS = ("qd1consis", "qd2incons", "qd1incons", "qd2consis", "qd4consis", "q", "q_no_replacement_baseline")
X2_SUBSETS = ("d1consis", "d2consis", "d3consis", "no_qd_baseline")
ALL_SUBSETS = X1_SUBSETS + X2_SUBSETS
WORD_ORDERS = ("TVE", "TEV", "VTE", "VET", "ETV", "EVT")
ENTITY_TEMPLATES = ("who", "meaning", "stands_for", "name")

# Paper-scale entity counts per source (appendix A): 2000 men + 2000 women; 6900 T-REx subjects.
DEFAULT_N_ENTITIES = {"cvdb": 4000, "trex": 6900, "cvdb_sample": 4000, "trex_sample": 6900}


@dataclass
class SubsetFractions:
    """Fractions of all entities per subset (paper Table 1). The rest of the entities is unused.

    ``p`` switches on the tag/consistency-correlation experiment (paper 2.6): with
    ``m = (qd1consis + qd2incons) / 2`` the four stage-1 definition subsets become
    qd1consis = qd2incons = m*p and qd1incons = qd2consis = m*(1-p) (any configured
    qd1incons/qd2consis is then replaced). ``p = 1`` is the default experiment.
    """

    qd1consis: float = 0.25
    qd2incons: float = 0.25
    qd1incons: float = 0.0
    qd2consis: float = 0.0
    qd4consis: float = 0.0
    q: float = 0.1
    q_no_replacement_baseline: float = 0.1
    d1consis: float = 0.1
    d2consis: float = 0.1
    d3consis: float = 0.0
    no_qd_baseline: float = 0.1
    p: float | None = None

    def resolved(self) -> dict[str, float]:
        """Subset name -> fraction with ``p`` applied (only subsets with fraction > 0)."""
        fr = {name: float(getattr(self, name)) for name in ALL_SUBSETS}
        if self.p is not None:
            m = (self.qd1consis + self.qd2incons) / 2
            fr["qd1consis"] = fr["qd2incons"] = m * self.p
            fr["qd1incons"] = fr["qd2consis"] = m * (1 - self.p)
        return {k: v for k, v in fr.items() if v > 0}

    def validate(self) -> None:
        for name in ALL_SUBSETS:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: fraction must be >= 0, got {getattr(self, name)}")
        if self.p is not None and not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"p: must be in [0, 1], got {self.p}")
        total = sum(self.resolved().values())
        if total > 1.0 + 1e-9:
            raise ConfigError(f"fractions sum to {total:.4g} > 1")
        if total <= 0:
            raise ConfigError("all fractions are 0; nothing to build")


@dataclass
class TagConfig:
    """Define tags. ``random``: 6-letter random strings (tag 1 reliable, tag 2 unreliable, tag 3 for
    d3consis; qd4consis draws a fresh one per entity), drawn per seed and wrapped like variables
    (``LMDataConfig.braces``: ``<|qwerty|>``). ``natural``: the phrases below, never wrapped, used with
    word order VTE, e.g. ``<|xyzab|> according to wikipedia is Cleopatra``."""

    kind: Literal["random", "natural"] = "random"
    length: int = 6
    natural: list[str] = field(
        default_factory=lambda: ["according to wikipedia is", "according to 4chan is", "according to reddit is"]
    )

    def validate(self) -> None:
        if self.length < 3:
            raise ConfigError(f"length: must be >= 3, got {self.length}")
        if self.kind == "natural" and len(self.natural) < 3:
            raise ConfigError("natural: needs 3 phrases (tags 1, 2 and 3)")


@dataclass
class SampleSourceConfig:
    """The generated stand-in sources ``cvdb_sample`` / ``trex_sample`` (CPU smoke runs, tests).

    They write small files with the real column layout (see :mod:`metaocl.data.sample`) and read them
    through the same loader as the real data. ``rows``: people (CVDB) or subjects (T-REx) to
    generate; ``0`` means enough for ``n_entities``. ``seed`` fixes the generated source,
    independent of the trial seed (which draws variables, tags and subsets).
    """

    rows: int = 0
    seed: int = 0


@dataclass
class LMDataConfig:
    """Everything that decides the LM dataset of a trial, besides its seeds (the stage-1 seed draws
    entities' subsets, variables and tags; the trial seed re-splits X2, see ``resplit_x2_per_seed``)."""

    # cvdb | trex: the real sources (``metaocl data download``); *_sample: named generated stand-ins.
    source: Literal["cvdb", "trex", "cvdb_sample", "trex_sample"] = "cvdb"
    # Raw source file (CVDB CSV) or folder (T-REx JSON files); "" = the default under data_home().
    path: str = ""
    # Entities to use; 0 = the paper's count (4000 CVDB, 6900 T-REx).
    n_entities: int = 0
    subsets: SubsetFractions = field(default_factory=SubsetFractions)
    # two_stage: X1 defs + train QA, then X2 defs; single: all at once;
    # three_stage: X1 definitions, then X1 QA, then X2 definitions.
    stages: Literal["two_stage", "single", "three_stage"] = "two_stage"
    tags: TagConfig = field(default_factory=TagConfig)
    variable_length: int = 5
    # Wrap variables and random tags as the authors' generator does (generate_variable_names(...,
    # braces=True)): <|xyzab|>, <|qwerty|>. false: plain letters (the paper's text says "random string").
    braces: bool = True
    # Re-assign the X2 entities to d1consis/d2consis/d3consis/no_qd_baseline per trial (stage-2) seed,
    # as the authors' seed_stage2 does; X1, variables and tags stay those of the stage-1 seed. false:
    # the X2 split is fixed by the stage-1 seed.
    resplit_x2_per_seed: bool = True
    # T-REx entity table. authors: the code behind the figures (its 25 predicates: adds P31 "type",
    # drops P161 and P88; all >= 4 questions of a subject kept, 25% of them held out; entity sample and
    # answer order drawn by the stage-1 seed). table2: the paper's Table 2 (26 predicates, exactly 4
    # questions per subject, one held out; a fixed sample, first answer alphabetically).
    trex_construction: Literal["authors", "table2"] = "authors"
    # Order of tag (T), variable (V), entity (E) in a definition.
    word_order: Literal["TVE", "TEV", "VTE", "VET", "ETV", "EVT"] = "TVE"
    # Prepend each QA pair's definition instead of standalone definitions (single stage only), as
    # "<def line>\n. Q: ..." like the authors; no entity-attribution splits then (the authors' config
    # turns them off: with the definition in the prompt they would be copy tasks).
    in_context: bool = False
    # Seq2seq (T5) view: answers without the leading space (input = prompt, target = answer).
    seq2seq: bool = False
    # Entity-attribution eval sets (who / meaning / stands_for / name) and their "_defent" variants.
    entity_attribution: bool = True
    # Cap every eval split at this many rows (seeded subsample); 0 = all.
    max_eval_per_split: int = 0
    # all: stage(s) train what data.stages says. x1 (single stage only): train on X1 only, as the
    # authors' gradient-alignment config (train_subset: 'stage1'); the X2 definitions are then kept as
    # untrained splits train_defs_<subset> (probes, like their train_defs_* sets; never evaluated).
    train_subset: Literal["all", "x1"] = "all"
    # Entities per subset. authors: their data_utils.split_list_into_subsets in two levels (X1
    # subsets + "stage2_combined", then the X2 subsets within it): round(fraction x N) each, the
    # difference to the alphabetically last key, cut in order. largest_remainder: floor, then the
    # largest remainders (the same at N = 4000; +-1 or 2 at other N).
    subset_rounding: Literal["authors", "largest_remainder"] = "authors"
    # Held-out questions paired across subsets, as the authors' per-subset train_test_split(...,
    # random_state=seed): the i-th entity by name of two subsets with the same questions-per-entity
    # profile (e.g. qd1consis and qd2incons) holds out the same question type. false: drawn per
    # subset from the one dataset RNG (other question-type mixes on the two sides of a gap).
    held_out_pairing: bool = True
    sample: SampleSourceConfig = field(default_factory=SampleSourceConfig)

    @property
    def resolved_n_entities(self) -> int:
        return self.n_entities or DEFAULT_N_ENTITIES[self.source]

    @property
    def n_stages(self) -> int:
        return {"single": 1, "two_stage": 2, "three_stage": 3}[self.stages]

    def validate(self) -> None:
        if self.n_entities < 0:
            raise ConfigError(f"n_entities: must be >= 0, got {self.n_entities}")
        if self.variable_length < 3:
            raise ConfigError(f"variable_length: must be >= 3, got {self.variable_length}")
        if self.tags.kind == "natural" and self.word_order != "VTE":
            raise ConfigError(
                f"word_order: natural-language tags read 'variable tag entity'; set word_order: VTE (got {self.word_order})"
            )
        if self.in_context and self.stages != "single":
            raise ConfigError(f"in_context: the in-context variant is single-stage; set stages: single (got {self.stages})")
        if self.train_subset == "x1" and self.stages != "single":
            raise ConfigError(f"train_subset: x1 applies to stages: single (got {self.stages})")
        if self.max_eval_per_split < 0:
            raise ConfigError(f"max_eval_per_split: must be >= 0, got {self.max_eval_per_split}")
        if self.sample.rows < 0:
            raise ConfigError(f"sample.rows: must be >= 0, got {self.sample.rows}")
        if self.tags.kind == "natural" and self.subsets.qd4consis > 0:
            raise ConfigError("subsets.qd4consis: draws a fresh random tag per entity; needs tags.kind: random")
