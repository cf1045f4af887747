"""Run candidate set-inclusion configurations through the package's own runner and record their cost.

Used to search for the cheapest CPU setting in which meta-OCL shows (docs/cpu-meta-ocl.md)::

    python scripts/cpu_search.py R1 --seeds 0 1 --set train.stage1_epochs=12 --set train.lr=0.004
    python scripts/search_table.py                      # every candidate, read back from MLflow

A candidate is a sweep file: the base sweep (``--base``, default ``quickstart``) with the ``--set``
overrides applied and validated by :func:`metaocl.config.load_sweep` (a bad key or value is one
line and exit status 2, nothing run), written as ``WORKDIR/sweeps/NAME.yaml`` with ``first_seed``
set so its trial ids are ``s{seed}``. Each seed is one ``metaocl run WORKDIR/sweeps/NAME.yaml
--trial s{seed}`` subprocess (the real runner, no Ray) tracked into the MLflow store
``WORKDIR/mlflow.db`` (experiment ``metaocl/NAME-run``, where ``metaocl run`` logs), with one torch thread
(``METAOCL_TRIAL_CPUS=1``) under ``nice``, ``--jobs`` of them at a time. When one ends, this script
adds its cost to the same MLflow run: ``cost/cpu_s`` (the child's own user + system CPU seconds,
from ``os.wait4``: training, evaluation, data generation, start-up), ``cost/wall_s``,
``cost/train_examples`` (training examples processed) and the tag ``cost.loadavg`` (1-minute load
average at its start). On a shared machine wall time is meaningless; CPU seconds are the cost.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from metaocl import mlflow_layout as layout
from metaocl.config import ConfigError, load_sweep, read_yaml, resolve_sweep_path

DEFAULT_WORKDIR = Path(os.environ.get("METAOCL_SEARCH_DIR", "search-runs"))


def write_candidate(name: str, base: str, seeds: list[int], overrides: list[str], workdir: Path) -> Path:
    """Validate ``base`` + ``overrides`` with the package's loader and write it as ``workdir/sweeps/NAME.yaml``."""
    src = resolve_sweep_path(base)
    sweep = load_sweep(str(src), overrides=overrides)  # ConfigError names a bad key or value
    data = read_yaml(src)
    data.pop("smoke", None)
    data.pop("grid", None)
    data.pop("points", None)
    out = workdir / "sweeps" / f"{name}.yaml"
    lo, hi = min(seeds), max(seeds)
    if out.exists():  # another invocation of the same candidate (more seeds): keep its seeds valid too
        old = read_yaml(out)
        if old.get("base") != sweep.base:
            raise ConfigError(f"{out}: candidate {name} exists with another configuration; choose a new name")
        lo, hi = min(lo, old["first_seed"]), max(hi, old["first_seed"] + old["seeds"] - 1)
    data.update(name=name, description=f"cpu search candidate {name}: {base} with {' '.join(overrides) or 'no change'}",
                base=sweep.base, first_seed=lo, seeds=hi - lo + 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    load_sweep(str(out))  # the written file itself validates
    return out


def train_examples(sweep_path: Path, seed: int) -> int:
    """Training examples one trial processes: its stage-1 (and stage-2) examples times the epochs."""
    from metaocl.data.set_inclusion import generate

    trial = next(t for t in load_sweep(str(sweep_path)).trials() if t.seed == seed)
    cfg = trial.config
    ds = generate(cfg.data, cfg.seed)
    n1 = len(ds.stage_examples(1, joint=cfg.train.joint)) * cfg.train.stage1_epochs
    n2 = 0 if cfg.train.joint else len(ds.stage_examples(2)) * cfg.train.stage2_epochs
    return n1 + n2


def record_cost(uri: str, name: str, seed: int, cpu_s: float, wall_s: float, examples: int, load: float) -> str:
    """Log the cost of the newest finished run of trial ``s{seed}`` of ``metaocl/NAME``; its run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    # `metaocl run` tracks into metaocl/NAME-run (older versions: metaocl/NAME, as a sweep)
    exp = client.get_experiment_by_name(layout.experiment_name(name, run=True)) or client.get_experiment_by_name(layout.experiment_name(name))
    runs = client.search_runs([exp.experiment_id], f"tags.`{layout.TRIAL_ID_TAG}` = 's{seed}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise RuntimeError(f"no finished MLflow run of {name} seed {seed} in {uri}")
    run_id = runs[0].info.run_id
    for key, value in (("cost/cpu_s", cpu_s), ("cost/wall_s", wall_s), ("cost/train_examples", examples)):
        client.log_metric(run_id, key, float(value))
    client.set_tag(run_id, "cost.loadavg", f"{load:.2f}")
    return run_id


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name", help="candidate name (its MLflow experiment: metaocl/NAME-run)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--base", default="quickstart", help="sweep (name or YAML path) whose base config to start from")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--jobs", type=int, default=2, help="trainings at once (one thread each)")
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="sweeps/ and mlflow.db go here")
    args = ap.parse_args(argv)
    try:
        path = write_candidate(args.name, args.base, args.seeds, args.overrides, args.workdir)
    except ConfigError as e:
        print(f"cpu_search: error: {e}", file=sys.stderr)
        return 2
    uri = layout.sqlite_uri((args.workdir / layout.DEFAULT_STORE).resolve())
    env = dict(os.environ, METAOCL_TRIAL_CPUS="1", PYTHONUNBUFFERED="1")
    pending, running, failed = list(args.seeds), {}, []
    first = True
    while pending or running:
        while pending and len(running) < max(1, args.jobs):
            seed = pending.pop(0)
            log = open(args.workdir / f"{args.name}_s{seed}.log", "w")
            cmd = ["nice", "-n", str(args.nice), sys.executable, "-m", "metaocl.cli", "run", str(path),
                   "--trial", f"s{seed}", "--tracking-uri", uri]
            load = os.getloadavg()[0]
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            running[proc.pid] = (seed, proc, log, time.perf_counter(), load)
            print(f"{args.name} seed {seed}: started (pid {proc.pid}, load {load:.1f})", flush=True)
            if first:  # let the first run create the MLflow tables before a second one opens the store
                time.sleep(15)
                first = False
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        seed, proc, log, t0, load = running.pop(pid)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.close()
        wall, cpu = time.perf_counter() - t0, usage.ru_utime + usage.ru_stime
        if proc.returncode != 0:
            failed.append(seed)
            print(f"{args.name} seed {seed}: FAILED (exit {proc.returncode}); see {log.name}", flush=True)
            continue
        n_ex = train_examples(path, seed)
        record_cost(uri, args.name, seed, cpu, wall, n_ex, load)
        print(f"{args.name} seed {seed}: cpu {cpu:.0f}s wall {wall:.0f}s examples {n_ex} "
              f"({n_ex / cpu:.0f}/cpu-s) load {load:.1f}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
