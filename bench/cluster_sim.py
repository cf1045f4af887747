"""Scheduling of a two_stage sweep on a simulated 8-GPU node: before (stage 1 behind a lock) vs stage-1 units.

    nice -n 10 python bench/cluster_sim.py                 # 4 stage-1 seeds x 5 stage-2 seeds, 8 logical GPUs
    nice -n 10 python bench/cluster_sim.py --seeds 2 --stage1-seeds 2 --gpus 4   # the small version (tests)

Ray is started with logical GPUs (``ray start --num-gpus N`` on loopback) and ``METAOCL_SIMULATE_GPUS=1``,
so each trial asks for one GPU and trains a tiny model on the CPU. Measured, side by side in one run:

- **before**: the scheduling of git main (418e771), kept behind ``METAOCL_STAGE1_UNITS=0``: every
  trial trains or waits for its stage 1 itself, under the stage-1 cache's ``flock``, holding its GPU
  while it waits;
- **units**: stage 1 as one scheduled unit per stage-1 seed (:mod:`metaocl.sweep.stage1`), its trials
  released when it completes;
- **units, 2 nodes**: the same on two logical nodes (127.0.0.2 and 127.0.0.3, half the GPUs each)
  with the trial storage in a folder both see: stage 1 must still be trained once per stage-1 seed.

Figures, from each trial's own timestamps (``METAOCL_BENCH_TIMES``: one record per finished attempt):
GPU-busy fraction = sum over trials of GPU share x (end - start - time waiting on a lock) / (GPUs x
wall), wall = first trial start to last trial end, the share being what Ray gave the attempt (1
here: ``gpu: 1``); stage-1 trainings; checkpoint writes and bytes per trial. The layout's bound on
the busy fraction is printed beside it (:func:`layout_bound`). The CPU here is shared (2 cores for
every trial at once), so absolute times mean little; the fractions and the counts are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from _cluster import stop  # noqa: E402 (bench/_cluster.py: stop a process and its session)


def sweep_file(folder: Path, stage1_seeds: int, seeds: int, epochs: list[int]) -> Path:
    path = folder / "cluster_sim.yaml"
    path.write_text(
        "name: cluster_sim\ndescription: two_stage layout on a tiny model\nkind: lm\n"
        "base:\n  device: cpu\n"
        "  data: {source: cvdb_sample, n_entities: 40, stages: two_stage, entity_attribution: false}\n"
        "  model: {name: tiny-gpt-neox}\n"
        f"  train: {{epochs: {epochs}, batch_size: 32, lr: 0.003, stage1_cache: cluster_sim_stage1}}\n"
        f"grid:\n  train.stage1_seed: {list(range(stage1_seeds))}\nseeds: {seeds}\n"
        "resources: {cpu: 1, gpu: 1}\nmax_failures: 0\n")
    return path


def _env(folder: Path, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT),
               METAOCL_SIMULATE_GPUS="1", METAOCL_DATA=str(folder / "data"), HF_HUB_OFFLINE="1",
               METAOCL_BENCH_TIMES=str(folder / "times"), METAOCL_PROGRESS_INTERVAL="60")
    for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "METAOCL_RESULTS"):
        env.pop(var, None)
    env.update(extra)
    return env


def _node(cmd: list[str], folder: Path, ip: str, env: dict[str, str]) -> subprocess.Popen:
    """``ray start --block`` in its own session, so that stopping it reaches its raylet and workers."""
    log = (folder / f"ray-{ip}.log").open("w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(env, METAOCL_BENCH_NODE=ip),
                            start_new_session=True)


def _wait_nodes(ray: list[str], port: int, n: int, env: dict[str, str], procs: list[subprocess.Popen],
                timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(proc.poll() is not None for proc in procs):
            raise SystemExit("a `ray start` of the logical cluster exited (its log: ray-*.log in the run's folder)")
        out = subprocess.run(ray + ["status", f"--address=127.0.0.2:{port}"], env=env, capture_output=True,
                             text=True)
        if out.returncode == 0 and out.stdout.count(" node_") >= n:
            return
        time.sleep(1)
    raise SystemExit(f"the logical cluster did not reach {n} node(s) in {timeout:.0f} s")



def run_mode(name: str, folder: Path, sweep: Path, gpus: int, nodes: int, units: bool, port: int) -> dict:
    """One sweep on a fresh logical cluster; returns its figures."""
    folder.mkdir(parents=True)
    env = _env(folder, {"METAOCL_STAGE1_UNITS": "1" if units else "0"})
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    per_node = gpus // nodes
    nodes_up: list[subprocess.Popen] = []
    temp = tempfile.mkdtemp(prefix="mcs-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    common = [f"--num-gpus={per_node}", f"--num-cpus={per_node}", "--block", f"--temp-dir={temp}"]
    try:
        nodes_up.append(_node(ray + ["start", "--head", "--node-ip-address=127.0.0.2", f"--port={port}",
                                     "--include-dashboard=false", *common], folder, "127.0.0.2", env))
        _wait_nodes(ray, port, 1, env, nodes_up)
        if nodes == 2:
            nodes_up.append(_node(ray + ["start", f"--address=127.0.0.2:{port}", "--node-ip-address=127.0.0.3",
                                         *common], folder, "127.0.0.3", env))
            _wait_nodes(ray, port, 2, env, nodes_up)
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "metaocl.cli", "sweep", str(sweep), "--address",
                               f"127.0.0.2:{port}", "--storage", str(folder / "results"), "--tracking-uri",
                               f"sqlite:///{folder / 'mlflow.db'}"],
                              env=env, cwd=folder, capture_output=True, text=True)
        sweep_wall = time.time() - t0
    finally:
        for node in reversed(nodes_up):  # only the processes this run started: never `ray stop`, which
            stop(node, grace=15)          # would end every Ray instance on the machine
        shutil.rmtree(temp, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: the sweep failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    return figures(name, folder / "times", gpus, sweep_wall)


def figures(name: str, times: Path, gpus: int, sweep_wall: float) -> dict:
    """The figures of one mode from the per-attempt records (real timestamps of each trial)."""
    records = [json.loads(p.read_text()) for p in sorted(times.glob("*.json"))]
    start, end = min(r["start"] for r in records), max(r["end"] for r in records)
    wall = end - start
    busy = sum(r.get("gpu", 1.0) * (r["end"] - r["start"] - r["waited_s"]) for r in records)
    held = sum(r.get("gpu", 1.0) * (r["end"] - r["start"]) for r in records)
    trials = [r for r in records if r["role"] != "stage1"]
    return {
        "mode": name, "gpus": gpus, "trials": len(trials), "units": len(records) - len(trials),
        "wall_s": wall, "sweep_wall_s": sweep_wall, "busy_fraction": busy / (gpus * wall),
        "held_fraction": held / (gpus * wall), "waited_s": sum(r["waited_s"] for r in records),
        "stage1_trainings": sum(r["stage1_trainings"] for r in records),
        "checkpoints_per_trial": sum(r["checkpoints"] for r in records) / len(records),
        "checkpoint_mb_per_trial": sum(r["checkpoint_bytes"] for r in records) / len(records) / 1e6,
        "nodes": sorted({r["node"] for r in records if r["node"]}),
        "gpu_shares": sorted({r.get("gpu", 1.0) for r in records}),
        "unit_s": _mean([r["end"] - r["start"] for r in records if r["role"] == "stage1"]),
        "trial_s": _mean([r["end"] - r["start"] for r in trials]),
    }


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def layout_bound(units: int, trials: int, gpus: int, unit_s: float, trial_s: float) -> float:
    """The best busy fraction the layout allows with one GPU per unit or trial (exact for units <=
    GPUs): the units first (``min(units, gpus)`` GPUs busy for ``unit_s``), then the trials in waves
    of ``gpus``. For 4 units and 20 trials on 8 GPUs: (4 U + 20 T) / (8 (U + 3 T)), 0.70 at U = 2 T."""
    waves_u = -(-units // gpus)
    waves_t = -(-trials // gpus)
    return (units * unit_s + trials * trial_s) / (gpus * (waves_u * unit_s + waves_t * trial_s))


def table(rows: list[dict]) -> str:
    keys = [("mode", "{}"), ("gpus", "{}"), ("units", "{}"), ("trials", "{}"), ("wall_s", "{:.0f}"),
            ("busy_fraction", "{:.2f}"), ("held_fraction", "{:.2f}"), ("waited_s", "{:.0f}"),
            ("stage1_trainings", "{}"), ("checkpoints_per_trial", "{:.2f}"), ("checkpoint_mb_per_trial", "{:.2f}"),
            ("nodes", "{}"), ("gpu_shares", "{}")]
    lines = ["| " + " | ".join(k for k, _ in keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[k]) if not isinstance(r[k], list) else ",".join(f"{x:g}" if
                                       isinstance(x, float) else str(x) for x in r[k])
                                       for k, fmt in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage1-seeds", type=int, default=4)
    p.add_argument("--seeds", type=int, default=5, help="stage-2 seeds per stage-1 seed")
    p.add_argument("--gpus", type=int, default=8, help="logical GPUs (split over the nodes of the 2-node run)")
    p.add_argument("--epochs", default="2,1", help="epochs of stage 1, stage 2")
    p.add_argument("--modes", default="before,units,units-2-nodes")
    p.add_argument("--port", type=int, default=6391)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="metaocl-cluster-sim-"))
    sweep = sweep_file(folder, args.stage1_seeds, args.seeds, [int(e) for e in args.epochs.split(",")])
    rows = []
    for mode in args.modes.split(","):
        units, nodes = mode != "before", 2 if mode.endswith("2-nodes") else 1
        rows.append(run_mode(mode, folder / mode, sweep, args.gpus, nodes, units, args.port))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    for r in rows:
        if r["units"]:
            bound = layout_bound(r["units"], r["trials"], r["gpus"], r["unit_s"], r["trial_s"])
            print(f"{r['mode']}: layout bound on the busy fraction {bound:.2f} (units {r['unit_s']:.0f} s, "
                  f"trials {r['trial_s']:.0f} s on average)")
    if len(rows) > 1 and rows[0]["mode"] == "before":
        for r in rows[1:]:
            print(f"wall time {r['mode']} / before: {r['wall_s'] / rows[0]['wall_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return {"rows": rows, "folder": str(folder)}


if __name__ == "__main__":
    main()
