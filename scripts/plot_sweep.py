"""Plot accuracy per subset over training for every trial of a sweep, read from its MLflow store.

    python scripts/plot_sweep.py docs/figures/quickstart.png --db mlflow.db --experiment metaocl/quickstart

Thin lines: one per seed; thick: the mean over seeds. Only reads MLflow (like ``metaocl report``).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from metaocl import mlflow_layout as layout  # noqa: E402

COLORS = {"qd1consis": "tab:blue", "qd2incons": "tab:red", "d1consis": "tab:cyan", "d2consis": "tab:orange"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--db", default="mlflow.db")
    ap.add_argument("--experiment", default="metaocl/quickstart")
    args = ap.parse_args()
    client = MlflowClient(layout.sqlite_uri(args.db))
    exp = client.get_experiment_by_name(args.experiment)
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get(layout.ROLE_TAG) == layout.TRIAL_ROLE]
    parent = max({r.data.tags[layout.PARENT_TAG] for r in runs},
                 key=lambda p: client.get_run(p).info.start_time)  # the latest sweep invocation
    runs = [r for r in runs if r.data.tags[layout.PARENT_TAG] == parent]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for subset, color in COLORS.items():
        curves = defaultdict(list)
        for r in runs:
            for m in client.get_metric_history(r.info.run_id, f"acc/{subset}"):
                curves[m.step].append(m.value)
            steps = [m.step for m in client.get_metric_history(r.info.run_id, f"acc/{subset}")]
            vals = [m.value for m in client.get_metric_history(r.info.run_id, f"acc/{subset}")]
            ax.plot(steps, vals, color=color, lw=0.6, alpha=0.35)
        steps = sorted(curves)
        ax.plot(steps, [sum(curves[s]) / len(curves[s]) for s in steps], color=color, lw=2.2,
                label=f"{subset} (mean of {len(runs)} seeds)")
    ax.axhline(0.5, color="black", lw=0.6, ls="--")
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out QA accuracy")
    ax.set_title(f"{args.experiment}: accuracy per subset over training", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
