"""CPU seconds of the quickstart: the configuration of issue 16 ("today's") vs sweeps/quickstart.yaml.

    python bench/quickstart_cost.py                 # one seed of each, full size (a few CPU-minutes)
    python bench/quickstart_cost.py --trials 2      # two seeds of each, alternating
    python bench/quickstart_cost.py --quick         # both at a tiny size, seconds (for tests)

Both configurations are sweeps loaded and validated by :func:`metaocl.config.load_sweep`: the new
one is ``sweeps/quickstart.yaml``; today's is the same file with :data:`TODAY` (the quickstart as
issue 16 measured it) set over it. Each trial runs in this process through the package's runner
(:func:`metaocl.experiments.local.run_single`, untracked) with one torch thread, the two configurations
alternating so that both see the same machine load. Today's side also runs today's *code*: the
set-inclusion loss as it was when issue 16 was filed (:func:`issue16_lm_loss`, the whole padded
row through the model; the engine now stops the input before the answer, the same loss on fewer
positions), so the ratio counts what the engine gained too; ``--today-code current`` runs both
sides on the current engine (the configuration change alone). The cost is the process's CPU time
(``time.process_time``) per trial - on a shared machine wall time measures the neighbours - and
per sweep (per trial x the sweep's seeds). Prints ``key: value`` lines, ending with
``ratio_cpu_per_sweep`` (new / today; issue 16 asks for <= 0.45).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time

os.environ["METAOCL_TRIAL_CPUS"] = "1"  # the runner's set_threads(): one thread, as a quickstart trial

from metaocl.config import ConfigError, load_sweep  # noqa: E402

# The quickstart as issue 16 measured it (commit a73716e): 6 seeds, 24 epochs of 2000 variables
# (0.4/0.4/0.1/0.1) with 20 training questions each, AdamW lr 2e-3 constant, evaluation every 4 epochs.
TODAY_SEEDS = 6
TODAY = [
    "data.n_variables=2000", "data.max_number=19", "data.list_length=4", "data.qd1consis=0.4",
    "data.qd2incons=0.4", "data.d1consis=0.1", "data.d2consis=0.1", "data.train_questions=20",
    "data.test_questions=12", "model.hidden_size=64", "model.num_hidden_layers=2",
    "model.num_attention_heads=4", "model.intermediate_size=256", "model.tie_embeddings=true",
    "train.joint=true", "train.stage1_epochs=24", "train.batch_size=128", "train.optimizer=adamw",
    "train.lr=0.002", "train.weight_decay=0.1", "train.schedule=constant", "train.warmup_steps=0",
    "train.loss_on=answer", "eval.every=4",
]
QUICK = ["data.n_variables=60", "train.stage1_epochs=1", "eval.every=1"]  # seconds, for tests


def issue16_lm_loss(model, batch, answer_only: bool = False):
    """The set-inclusion loss of commit a73716e (issue 16's baseline): every token of the padded rows
    goes through the model, the answer and ``<eos>`` included, though only the position before the
    answer carries the loss. Same value as :func:`metaocl.engine.set_inclusion.lm_loss` (tested)."""
    import torch
    import torch.nn.functional as F

    from metaocl.engine import set_inclusion as engine

    if not answer_only:
        return engine.lm_loss(model, batch, answer_only=False)
    lengths = (batch != 0).sum(1)
    rows = torch.arange(len(batch), device=batch.device)
    hidden = model.get_decoder()(input_ids=batch).last_hidden_state[rows, lengths - 3]
    return F.cross_entropy(model.get_output_embeddings()(hidden), batch[rows, lengths - 2])


@contextlib.contextmanager
def engine_loss(which: str):
    """Run the set-inclusion engine with issue 16's loss (``issue16``) or the current one."""
    from metaocl.engine import set_inclusion as engine

    current = engine.lm_loss
    engine.lm_loss = issue16_lm_loss if which == "issue16" else current
    try:
        yield
    finally:
        engine.lm_loss = current


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", default="quickstart", help="the new configuration (sweep name or YAML path)")
    ap.add_argument("--trials", type=int, default=1, help="trials (seeds 0, 1, ...) per configuration")
    ap.add_argument("--quick", action="store_true", help="both configurations at a tiny size (seconds)")
    ap.add_argument("--today-code", choices=("issue16", "current"), default="issue16",
                    help="today's side on issue 16's loss (default) or on the current engine")
    args = ap.parse_args(argv)
    if args.trials < 1:
        ap.error("--trials must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    extra = QUICK if args.quick else []
    try:
        new = load_sweep(args.sweep, overrides=extra)
        today = load_sweep(args.sweep, overrides=TODAY + extra)
    except ConfigError as e:
        print(f"quickstart_cost: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    from metaocl.experiments.local import run_single

    sides = {"today": (today, TODAY_SEEDS), "new": (new, len(new.seeds))}
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    final: dict[str, list[dict]] = {k: [] for k in sides}
    load = os.getloadavg()[0]
    for i in range(args.trials):
        for side, (sweep, _) in sides.items():
            trial = sweep.trials()[0]
            trial.config.seed = trial.seed = i
            with engine_loss(args.today_code if side == "today" else "current"):
                t0 = time.process_time()
                result = run_single(trial, sweep, None, echo=False)
                cpu[side].append(time.process_time() - t0)
            final[side].append(result["final"])
    out: dict = {}
    print(f"cpu: {cpu_model()} ({os.cpu_count()} cores); load average at start {load:.2f}")
    print(f"quick: {args.quick}; trials per configuration: {args.trials}; today's code: {args.today_code}")
    for side, (sweep, n_seeds) in sides.items():
        per_trial = sum(cpu[side]) / len(cpu[side])
        out[f"{side}_cpu_s_per_trial"] = per_trial
        out[f"{side}_seeds"] = n_seeds
        out[f"{side}_cpu_s_per_sweep"] = per_trial * n_seeds
        f = final[side][-1]
        out[f"{side}_meta_gap_last_trial"] = f.get("acc/d1consis", 0.0) - f.get("acc/d2consis", 0.0)
    out["ratio_cpu_per_trial"] = out["new_cpu_s_per_trial"] / out["today_cpu_s_per_trial"]
    out["ratio_cpu_per_sweep"] = out["new_cpu_s_per_sweep"] / out["today_cpu_s_per_sweep"]
    for key, value in out.items():
        print(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}")
    return out


if __name__ == "__main__":
    main()
