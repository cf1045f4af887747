"""Run set-inclusion configurations through the real engine and record what they cost and show.

Used to search for the cheapest CPU setting in which meta-OCL shows (docs/cpu-meta-ocl.md)::

    python scripts/cpu_search.py NAME --seeds 0 1 --set data.n_variables=2000 --set train.joint=true

Each (NAME, seed) runs ``metaocl.experiments.set_inclusion.run(config, PrintReporter())`` in this
process with ONE torch thread and writes ``scripts/results/NAME_s{seed}.json``: the resolved
overrides, every reported metrics row, wall seconds, CPU seconds of this process, training examples
processed, and the load average at the start. On a shared machine wall time is meaningless; the
budget is projected from single-thread examples per CPU-second (``examples / cpu_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("METAOCL_TRIAL_CPUS", "1")

import torch  # noqa: E402
import yaml  # noqa: E402

from metaocl.config import from_dict  # noqa: E402
from metaocl.configs.set_inclusion import SetInclusionConfig  # noqa: E402
from metaocl.data.set_inclusion import generate  # noqa: E402
from metaocl.experiments import PrintReporter  # noqa: E402
from metaocl.experiments.set_inclusion import run  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def set_dotted(tree: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def base_from_sweep(name: str) -> dict:
    path = Path(__file__).resolve().parents[1] / "sweeps" / f"{name}.yaml"
    return yaml.safe_load(path.read_text())["base"]


def examples_processed(cfg: SetInclusionConfig) -> int:
    ds = generate(cfg.data, cfg.seed)
    n1 = len(ds.stage_examples(1, joint=cfg.train.joint))
    n2 = 0 if cfg.train.joint else len(ds.stage_examples(2)) * cfg.train.stage2_epochs
    return n1 * cfg.train.stage1_epochs + n2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--base", default="", help="a sweep file whose base config to start from")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    torch.set_num_threads(1)
    RESULTS.mkdir(exist_ok=True)
    tree = base_from_sweep(args.base) if args.base else {}
    tree.setdefault("device", "cpu")
    for item in args.set:
        key, value = item.split("=", 1)
        set_dotted(tree, key, yaml.safe_load(value))
    for seed in args.seeds:
        tree["seed"] = seed
        cfg = from_dict(SetInclusionConfig, json.loads(json.dumps(tree)), where=args.name)
        load = os.getloadavg()
        reporter = PrintReporter(echo=True)
        wall0, cpu0 = time.perf_counter(), time.process_time()

        def timed(metrics, _report=reporter):  # every row also carries CPU and wall seconds so far
            _report({**metrics, "cpu_s": time.process_time() - cpu0, "wall_s": time.perf_counter() - wall0})
            print(f"  cpu {time.process_time() - cpu0:.0f}s  " + "  ".join(
                f"{k}={v:.2f}" for k, v in metrics.items() if k.startswith(("acc_def/", "grad/"))), flush=True)

        timed.interactive = False
        run(cfg, timed)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        n_ex = examples_processed(cfg)
        out = {"name": args.name, "seed": seed, "config": tree, "sets": args.set, "wall_s": wall,
               "cpu_s": cpu, "train_examples": n_ex, "examples_per_cpu_s": n_ex / cpu,
               "loadavg_start": load, "history": reporter.history}
        (RESULTS / f"{args.name}_s{seed}.json").write_text(json.dumps(out, indent=1))
        print(f"DONE {args.name} seed {seed}: wall {wall:.0f}s cpu {cpu:.0f}s examples {n_ex} "
              f"({n_ex / cpu:.0f}/cpu-s) load {load[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
