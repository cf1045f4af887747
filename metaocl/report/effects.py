"""Effects and verdicts of one sweep invocation: the one computation behind ``metaocl report`` and
the summary a sweep prints when it ends (:mod:`metaocl.report.summary`), so the two never differ.

For each configuration (grid point, all its seeds; see :mod:`metaocl.report.runs` for replicate
axes) it measures, at the end of every stage, every effect pair of the kind
(:attr:`ExperimentKind.effect_pairs`): OCL = ``qd1consis - qd2incons`` and meta-OCL =
``d1consis - d2consis`` of the headline measure and, for language models, the same per
entity-attribution template (OCL against ``ent_T_qd2incons_defent``, the entity the inconsistent
definition named, as in paper Fig. 2b).

Verdicts use the stage where each effect is meant to be read: meta-OCL at the end of the last stage;
OCL at the end of the stage before it (stage 1 of the two-stage experiment, stage 2 of the
three-stage one) or of the only stage. A verdict is given for the in-distribution pairs and the
``name`` entity template (paper Fig. 2b); every other effect and stage is in the report's table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from metaocl.report.runs import Configuration, SweepRuns
from metaocl.report.stats import Effect, paired_effect, sequential_effects, verdict_line

VERDICT_TEMPLATES = (None, "name")  # in-distribution and "What is the name of xyz?"


@dataclass
class ConfigurationEffects:
    configuration: Configuration
    stages: list[int]
    effects: list[Effect]  # every measurable effect at the end of every stage
    headline: list[Effect]  # the effects a verdict is given for


def verdict_stages(stages: list[int]) -> dict[str, int]:
    """Effect kind -> the stage whose end its verdict reads (see the module docstring)."""
    last = stages[-1]
    return {"OCL": stages[-2] if len(stages) >= 2 else last, "meta-OCL": last}


def configuration_effects(c: Configuration, runs: SweepRuns) -> tuple[list[Effect], list[Effect]]:
    """``(every measurable effect of c at the end of every stage, the headline ones)``."""
    kind = runs.kind_spec
    measure = kind.measure
    names = c.metric_names()
    stages = c.stages()
    wanted = verdict_stages(stages) if stages else {}
    n_runs = len(c.trials) if c.replicate_keys else 0
    effects, headline = [], []
    for stage in stages:
        for pair in kind.effect_pairs:
            ma, mb = f"{measure}/{pair.a}", f"{measure}/{pair.b}"
            if ma in names and mb in names:
                av, bv = c.unit_values(ma, stage), c.unit_values(mb, stage)
            elif pair.metric in names:
                # Only the logged gap is there: test it against 0 (same statistics, b = 0).
                av = c.unit_values(pair.metric, stage)
                bv = [0.0 if math.isfinite(v) else math.nan for v in av]
            else:
                continue
            eff = paired_effect(pair.name, pair.a, pair.b, av, bv, measure=measure, stage=stage,
                                configuration=c.label, n_runs=n_runs)
            if not eff.n:
                continue
            is_headline = pair.template in VERDICT_TEMPLATES and wanted.get(pair.effect) == stage
            if is_headline and runs.sequential and not c.replicate_keys and ma in names and mb in names:
                # group-sequential: the test at each look so far, seeds in the order they ran
                boundary, looks = runs.sequential.split(":")
                ordered = sorted(c.trials, key=lambda t: t.seed)
                looked = sequential_effects(
                    pair.name, pair.a, pair.b, [t.at_stage_end(ma, stage) for t in ordered],
                    [t.at_stage_end(mb, stage) for t in ordered], looks=[int(n) for n in looks.split(",")],
                    boundary=boundary, measure=measure, stage=stage, seeds=[t.seed for t in ordered],
                    configuration=c.label)
                effects += looked
                headline.append(looked[-1])
                continue
            effects.append(eff)
            if is_headline:
                headline.append(eff)
    headline.sort(key=lambda e: ("(" in e.name, e.name.startswith("meta-OCL"), e.name))
    return effects, headline


def analyse(runs: SweepRuns) -> list[ConfigurationEffects]:
    """Effects of every configuration of ``runs``, in the order of ``runs.configurations``."""
    out = []
    for c in runs.configurations:
        effects, headline = configuration_effects(c, runs)
        out.append(ConfigurationEffects(c, c.stages(), effects, headline))
    return out


def verdict_lines(analysed: list[ConfigurationEffects]) -> list[str]:
    """One verdict line per headline effect (configuration prefix, measure and stage included)."""
    return [verdict_line(e) for r in analysed for e in r.headline]
