"""The paper's own numbers, to print beside ours where the experiment is the same.

The paper gives learning curves, not tables: every value below is READ OFF A FIGURE (about +-0.01),
and labelled approximate wherever it appears. Source: Krasheninnikov et al., "Implicit meta-learning
may lead language models to trust more reliable sources", ICML 2024 (PMLR 235), Fig. 2 (two-stage
finetuning of Pythia-2.8B-deduped on CVDB: test exact match per data subset over training, in
distribution, with the d3consis curve), as plotted on the authors' ICML poster, and the entity-
attribution plot of the same experiment ("What is the name of xyz?"; arXiv:2310.15047, "Meta-
(out-of-context) learning in neural networks", Fig. 2b). No value comes from a table.

Matching is deliberately strict: a sweep configuration gets paper values only when its logged params
say it *is* that experiment: LM kind, ``model.name`` a Pythia-2.8B *deduped* checkpoint (the one the
authors finetuned) loaded pretrained (``model.from_scratch`` false), the real CVDB source, two
stages, TVE order, not in-context, random tags, p unset or 1. Anything else (a smaller model, the
non-deduplicated checkpoint, a smoke run on the generated ``cvdb_sample``) shows our numbers alone
rather than a misleading comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class PaperReference:
    """Approximate end-of-stage values of one paper experiment."""

    title: str
    source: str
    # (split, stage) -> value of the headline measure (EM for LMs)
    subsets: Mapping[tuple[str, int], float]
    # (effect name, stage) -> value; effect names as EffectPair.name gives them (metaocl.experiments.base)
    effects: Mapping[tuple[str, int], float]


HEADLINE_PYTHIA_2_8B_CVDB = PaperReference(
    title="Pythia-2.8B, CVDB, two-stage (paper Fig. 2)",
    source="Krasheninnikov et al., ICML 2024, Fig. 2 and its entity-attribution panel; values read off the figure (approx. +-0.01)",
    subsets={
        # End of stage 1, in-distribution test EM.
        ("q_no_replacement_baseline", 1): 0.58,
        ("qd1consis", 1): 0.51,
        ("q", 1): 0.46,
        ("qd2incons", 1): 0.45,
        # End of stage 2.
        ("d3consis", 2): 0.305,
        ("d1consis", 2): 0.31,
        ("d2consis", 2): 0.28,
        ("no_qd_baseline", 2): 0.245,
        # Entity attribution, "What is the name of xyz?".
        ("ent_name_qd1consis", 1): 0.185,
        ("ent_name_qd2incons_defent", 1): 0.04,
        ("ent_name_d3consis", 2): 0.22,
        ("ent_name_d1consis", 2): 0.18,
        ("ent_name_d2consis", 2): 0.07,
    },
    effects={
        ("OCL", 1): 0.51 - 0.45,
        ("meta-OCL", 2): 0.31 - 0.28,
        ("OCL (entity attribution, name)", 1): 0.185 - 0.04,
        ("meta-OCL (entity attribution, name)", 2): 0.18 - 0.07,
    },
)


def _lower_values(params: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): str(v).strip().lower() for k, v in params.items()}


def match_reference(kind: str | None, params: Mapping[str, str], n_stages: int) -> PaperReference | None:
    """The paper experiment a configuration reproduces, or None.

    ``params`` are the MLflow params of one of its trials (flattened config, values as strings);
    ``n_stages`` the number of stages seen in its metrics.
    """
    if kind not in (None, "lm"):
        return None
    p = _lower_values(params)
    model = p.get("model.name", "").rstrip("/").split("/")[-1]
    if model != "pythia-2.8b-deduped" or p.get("model.from_scratch", "false") not in ("false", "0"):
        return None
    if p.get("data.source") != "cvdb" or n_stages != 2:
        return None
    if p.get("data.stages", "two_stage") != "two_stage":
        return None
    if p.get("data.word_order", "tve") != "tve":
        return None
    if p.get("data.in_context", "false") not in ("false", "0"):
        return None
    if p.get("data.tags.kind", "random") != "random":
        return None
    if p.get("data.subsets.p", "none") not in ("none", "", "1", "1.0"):
        return None
    return HEADLINE_PYTHIA_2_8B_CVDB
