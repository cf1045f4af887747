"""Tabulate every candidate of the CPU search from its MLflow store (written by scripts/cpu_search.py).

    python scripts/search_table.py                          # search-runs/mlflow.db, every metaocl/* experiment
    python scripts/search_table.py --db X.db R1 R7          # some candidates
    python scripts/search_table.py --per-seed --curves R7   # one row per seed; meta-OCL at every evaluation
    python scripts/search_table.py --seed-sets COS3         # one row per seed set (seeds 1000+, 2000+, ...)

Per candidate: seeds, mean CPU seconds and training examples per trial, final accuracies (mean),
and the OCL and meta-OCL verdicts over its seeds, computed by the report's own statistics
(:mod:`metaocl.report.stats`: paired t-test, t-based 95% CI). Only FINISHED trial runs with a
``cost/cpu_s`` metric count; for a trial id run twice, the newest run counts.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import yaml

from mlflow.tracking import MlflowClient

from metaocl import mlflow_layout as layout
from metaocl.report.stats import format_p, paired_effect

SUBSETS = ("qd1consis", "qd2incons", "d1consis", "d2consis")
GAPS = {"OCL": ("qd1consis", "qd2incons"), "meta-OCL": ("d1consis", "d2consis")}


def candidate_trials(client: MlflowClient, experiment) -> dict[int, dict]:
    """seed -> {run_id, final acc per subset, per-epoch acc, cost} of one candidate's finished trials."""
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1000)
    out: dict[int, dict] = {}
    for r in runs:
        m = r.data.metrics
        if "cost/cpu_s" not in m or r.data.tags.get(layout.ROLE_TAG) != layout.TRIAL_ROLE:
            continue
        seed = int(r.data.params.get("seed", r.data.tags.get(layout.TRIAL_ID_TAG, "s-1")[1:]))
        if seed in out:
            continue
        curves = {s: {h.step: h.value for h in client.get_metric_history(r.info.run_id, f"acc/{s}")} for s in SUBSETS}
        out[seed] = {"run_id": r.info.run_id, "final": {s: m.get(f"acc/{s}", math.nan) for s in SUBSETS},
                     "curves": curves, "cpu_s": m["cost/cpu_s"], "wall_s": m.get("cost/wall_s", math.nan),
                     "examples": m.get("cost/train_examples", math.nan), "load": r.data.tags.get("cost.loadavg", "")}
    return out


def effects(trials: dict[int, dict]) -> dict[str, object]:
    seeds = sorted(trials)
    return {name: paired_effect(name, a, b, [trials[s]["final"][a] for s in seeds], [trials[s]["final"][b] for s in seeds],
                                measure="acc", stage=1, seeds=seeds) for name, (a, b) in GAPS.items()}


def cell(e) -> str:
    """``reproduced +0.031 [0.012, 0.050] p=0.003`` (the verdict word and numbers of :func:`verdict_line`)."""
    if e.n < 2:
        return f"{e.mean:+.3f} (1 seed)"
    return f"{e.outcome} {e.mean:+.3f} [{e.lo:.3f}, {e.hi:.3f}] {format_p(e.p)}"


def row(name: str, trials: dict[int, dict]) -> str:
    """One markdown row: seeds, mean cost, mean final accuracies, OCL and meta-OCL verdicts."""
    seeds = sorted(trials)
    eff = effects(trials)
    accs = " / ".join(f"{sum(trials[s]['final'][k] for s in seeds) / len(seeds):.3f}" for k in SUBSETS)
    cpu = sum(trials[s]["cpu_s"] for s in seeds) / len(seeds)
    ex = sum(trials[s]["examples"] for s in seeds) / len(seeds)
    span = ",".join(map(str, seeds))
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        span = f"{seeds[0]}-{seeds[-1]}"
    return f"| {name} | {span} | {cpu:.0f} | {ex:,.0f} | {accs} | " + " | ".join(cell(e) for e in eff.values()) + " |"


def describe(db: str, name: str) -> str:
    """The candidate's overrides: the description cpu_search.py wrote into ``sweeps/NAME.yaml`` beside the store."""
    path = Path(db).parent / "sweeps" / f"{name}.yaml"
    return str(yaml.safe_load(path.read_text()).get("description", "")) if path.exists() else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="candidates (default: every metaocl/* experiment in the store)")
    ap.add_argument("--db", default="search-runs/mlflow.db")
    ap.add_argument("--per-seed", action="store_true", help="one row per seed too")
    ap.add_argument("--curves", action="store_true", help="meta-OCL per seed at every evaluation")
    ap.add_argument("--seed-sets", action="store_true",
                    help="one row per seed set (seeds grouped by seed // 1000, issue 16's fresh sets), "
                         "and on how many sets each effect was reproduced")
    args = ap.parse_args(argv)
    client = MlflowClient(layout.sqlite_uri(args.db))
    exps = {e.name.removeprefix("metaocl/").removesuffix("-run"): e  # `metaocl run` logs into metaocl/NAME-run
            for e in client.search_experiments() if e.name.startswith("metaocl/")}
    names = args.names or sorted(exps)
    missing = [n for n in names if n not in exps]
    if missing:
        print(f"search_table: error: no experiment metaocl/{missing[0]} in {args.db}", file=sys.stderr)
        return 2
    print("| candidate | seeds | CPU s/trial | examples/trial | qd1consis / qd2incons / d1consis / d2consis | OCL | meta-OCL |")
    print("|---|---|---|---|---|---|---|")
    details = defaultdict(list)
    summary: dict[str, str] = {}
    for name in names:
        trials = candidate_trials(client, exps[name])
        if not trials:
            continue
        if args.seed_sets:
            groups = defaultdict(dict)
            for seed, t in trials.items():
                groups[seed // 1000][seed] = t
            reproduced = defaultdict(int)
            for _, group in sorted(groups.items()):
                print(row(name, group))
                for gap, e in effects(group).items():
                    reproduced[gap] += e.outcome == "reproduced"
            summary[name] = ", ".join(f"{gap} reproduced on {k} of {len(groups)} seed sets" for gap, k in reproduced.items())
        else:
            print(row(name, trials))
        seeds = sorted(trials)
        details[name].append(f"  {name}: {describe(args.db, name)}")
        for s in seeds:
            t = trials[s]
            f = t["final"]
            details[name].append(
                f"  {name} seed {s}: " + " / ".join(f"{f[k]:.3f}" for k in SUBSETS)
                + f"  OCL {f['qd1consis'] - f['qd2incons']:+.3f}  meta {f['d1consis'] - f['d2consis']:+.3f}"
                + f"  cpu {t['cpu_s']:.0f}s load {t['load']}")
            if args.curves:
                c = t["curves"]
                steps = sorted(c["d1consis"])
                details[name].append("    meta by epoch: " + "  ".join(
                    f"{e}:{c['d1consis'][e] - c['d2consis'].get(e, math.nan):+.3f}" for e in steps)
                    + "\n    OCL by epoch:  " + "  ".join(
                    f"{e}:{c['qd1consis'].get(e, math.nan) - c['qd2incons'].get(e, math.nan):+.3f}" for e in steps))
    for name, line in summary.items():
        print(f"{name}: {line}")
    if args.per_seed or args.curves:
        for name in names:
            if details[name]:
                print("\n".join(details[name]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
