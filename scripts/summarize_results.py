"""Print a Markdown table row per recorded run (scripts/results/*.json): accuracies at the end of each stage.

    python scripts/summarize_results.py scripts/results/F_*.json
"""

from __future__ import annotations

import json
import sys

SUBSETS = ("qd1consis", "qd2incons", "d1consis", "d2consis")


def row(path: str) -> str:
    r = json.loads(open(path).read())
    ends: dict[int, dict] = {}
    for h in r["history"]:
        ends[int(h["stage"])] = h
    cells = []
    for stage, h in sorted(ends.items()):
        accs = " / ".join(f"{h[f'acc/{s}']:.3f}" for s in SUBSETS)
        cells.append(f"stage {stage} (epoch {int(h['epoch'])}): {accs}; OCL {h['gap/ocl']:+.3f}, meta {h['gap/meta_ocl']:+.3f}")
    return (f"| {r['name']} | {r['seed']} | {'<br>'.join(cells)} | {r['train_examples']:,} | {r['cpu_s']:.0f} | "
            f"{r['wall_s']:.0f} | {r['loadavg_start'][0]:.1f} |")


if __name__ == "__main__":
    print("| run | seed | accuracy qd1consis / qd2incons / d1consis / d2consis at the end of each stage | train examples | CPU s | wall s | load |")
    print("|---|---|---|---|---|---|---|")
    for p in sys.argv[1:]:
        print(row(p))
