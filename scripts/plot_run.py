"""Plot accuracy per subset over training for recorded runs (scripts/results/*.json from cpu_search.py).

    python scripts/plot_run.py docs/figures/quickstart.png scripts/results/NAME_s0.json scripts/results/NAME_s1.json

One panel per run (seed); solid lines: held-out QA accuracy per subset; dashed: definition recall
(``acc_def``); a vertical line marks the start of stage 2 when there is one.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"qd1consis": "tab:blue", "qd2incons": "tab:red", "d1consis": "tab:cyan", "d2consis": "tab:orange",
          "d3consis": "tab:green"}


def main(out: str, paths: list[str]) -> None:
    runs = [json.loads(open(p).read()) for p in paths]
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4), squeeze=False, sharey=True)
    for ax, r in zip(axes[0], runs):
        hist = r["history"]
        epochs = [h["epoch"] for h in hist]
        for s, c in COLORS.items():
            if f"acc/{s}" in hist[-1]:
                ax.plot(epochs, [h[f"acc/{s}"] for h in hist], color=c, label=f"QA {s}")
            if f"acc_def/{s}" in hist[-1]:
                ax.plot(epochs, [h[f"acc_def/{s}"] for h in hist], color=c, ls=":", alpha=0.6)
        stage2 = [h["epoch"] for h in hist if h.get("stage") == 2]
        if stage2:
            ax.axvline(min(stage2) - 0.5, color="grey", lw=0.8)
        ax.axhline(0.5, color="black", lw=0.5, ls="--")
        ax.set_title(f"{r['name']}  seed {r['seed']}", fontsize=9)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("test accuracy (dotted: definition recall)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
