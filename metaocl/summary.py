"""The table a sweep prints when it ends: per subset, the headline measure after each stage.

Mean and bootstrap 95% confidence interval over seeds, then the OCL gap (qd1consis - qd2incons)
after stage 1 and the meta-OCL gap (d1consis - d2consis) after the last stage, each with the same
verdict wording and statistics as ``metaocl report`` (:mod:`metaocl.report.stats`), which adds the
figures and reads everything back from MLflow.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Mapping, Sequence

from metaocl.configs.lm_data import ALL_SUBSETS
from metaocl.report.stats import mean_ci_text, paired_effect, verdict_line

GAPS = {"OCL": ("qd1consis", "qd2incons"), "meta-OCL": ("d1consis", "d2consis")}
SUBSET_ORDER = ALL_SUBSETS  # Table 1's order; set inclusion and MNIST use a subset of these names


def end_of_stage(history: Sequence[Mapping[str, float]]) -> dict[int, Mapping[str, float]]:
    """The last report of each stage of one trial."""
    out: dict[int, Mapping[str, float]] = {}
    for row in history:
        out[int(row.get("stage", 1))] = row
    return out


def headline_measure(rows: Sequence[Mapping[str, float]]) -> str:
    keys = {k for r in rows for k in r}
    return "acc" if any(k.startswith("acc/") for k in keys) else "em"


def summarize(histories: Mapping[str, Sequence[Mapping[str, float]]], params: Mapping[str, Mapping]) -> str:
    """Text of the end-of-sweep summary, one block per grid configuration.

    ``histories``: trial id -> the metrics it reported, in order; ``params``: trial id -> its grid values.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for tid in histories:
        groups[json.dumps(params.get(tid, {}), sort_keys=True)].append(tid)
    blocks = []
    for key, tids in groups.items():
        ends = [end_of_stage(histories[t]) for t in tids if histories[t]]
        if not ends:
            continue
        stages = sorted({s for e in ends for s in e})
        measure = headline_measure([r for e in ends for r in e.values()])
        subsets = sorted({k.split("/", 1)[1] for e in ends for r in e.values() for k in r if k.startswith(measure + "/")},
                         key=lambda s: (SUBSET_ORDER.index(s) if s in SUBSET_ORDER else len(SUBSET_ORDER), s))
        title = ", ".join(f"{k}={v}" for k, v in json.loads(key).items()) or "configuration"
        lines = [f"{title}  ({len(ends)} seed{'s' if len(ends) != 1 else ''}; {measure}, mean [95% CI])"]
        lines.append(f"  {'subset':<28}" + "".join(f"{'after stage ' + str(s):>26}" for s in stages))
        for sub in subsets:
            cells = []
            for s in stages:
                vals = [e[s][f"{measure}/{sub}"] for e in ends if s in e and f"{measure}/{sub}" in e[s]]
                cells.append(mean_ci_text(vals) if vals else "-")
            lines.append(f"  {sub:<28}" + "".join(f"{c:>26}" for c in cells))
        # as in `metaocl report`: OCL where X1 training ends (the stage before the last, or the only
        # stage); meta-OCL after the last stage (X2 definitions)
        for name, (a, b) in GAPS.items():
            at = stages[-1] if name == "meta-OCL" or len(stages) == 1 else stages[-2]
            pairs = [(e[at][f"{measure}/{a}"], e[at][f"{measure}/{b}"]) for e in ends
                     if at in e and f"{measure}/{a}" in e[at] and f"{measure}/{b}" in e[at]]
            if pairs:
                effect = paired_effect(name, a, b, [x for x, _ in pairs], [y for _, y in pairs],
                                       measure=measure, stage=at)
                lines.append("  " + verdict_line(effect, with_context=False) + f" (after stage {at})")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
