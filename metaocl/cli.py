"""The ``metaocl`` command.

    metaocl list                                   # the sweeps, one per paper experiment
    metaocl sweep quickstart                       # the embedded default: local Ray, ./mlflow.db, CPU
    metaocl sweep batch_size --smoke --dry-run     # print the trial table, run nothing
    metaocl sweep set_inclusion --seeds 3 --set train.batch_size=256
    metaocl run quickstart --set seed=1            # one trial in this process, no Ray (seed 1)
    metaocl sweep quickstart --resume              # continue after Ctrl-C or a killed driver
    metaocl ui                                     # MLflow UI on the sweep store

User mistakes (unknown sweep, bad key, bad value, unreachable service) print one line and exit with
status 2; nothing is written before the input is known to be good.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from typing import Sequence

from metaocl.config import ConfigError, known_sweeps, load_sweep, read_yaml
from metaocl.tables import text_table

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and exit 2), like every other user mistake."""

    def error(self, message: str) -> None:  # type: ignore[override]
        where = f"{self.prog}: " if " " in self.prog else ""  # a subcommand's name; "metaocl" is said once
        raise ConfigError(f"{where}{message} (see {self.prog} --help)")


def _sweep_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
    p.add_argument("sweep", nargs="?" if optional else None, help="sweep name (see `metaocl list`) or path to a sweep YAML file")
    p.add_argument("--smoke", action="store_true", help="the sweep's reduced variant (CPU, minutes)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set train.lr=0.001 (repeatable); a grid key is "
                   "pinned to that value; --set seed=N runs seed N only")


def _fetch_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-fetch", action="store_true", help="do not download missing data or models (they are "
                   "fetched once before the first trial by default; HF_HUB_OFFLINE=1 does the same): anything "
                   "missing is an error")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="metaocl", description="Reproduce and extend meta-out-of-context learning: "
                     "every experiment of the paper is one sweep file, run on Ray Tune and tracked in MLflow.")
    parser.add_argument("--version", action="version", version=f"metaocl {__import__('metaocl').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    sub.add_parser("list", help="list the sweeps with their descriptions")

    p = sub.add_parser("sweep", help="run a sweep: grid x seeds as Ray Tune trials, tracked in MLflow")
    _sweep_args(p, optional=True)
    p.add_argument("--all", action="store_true", help="every paper sweep, one after another: the plan first, "
                   "inputs fetched once, resumable as one unit (--resume), one report at the end")
    p.add_argument("--seeds", type=int, help="number of seeds (overrides the sweep file)")
    p.add_argument("--dry-run", action="store_true", help="print the trial table and the plan (GPU-hours, "
                   "memory, checkpoints, downloads) and run nothing")
    p.add_argument("--gpu-type", metavar="[Nx]TYPE", help="plan for these GPUs, e.g. 8xH100 or H200 (default: the "
                   "GPUs found; needed for the memory of logical GPUs; also $METAOCL_GPU_TYPE)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local instance)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--storage", help="where Ray keeps trial state: a local folder (on a cluster: one every node "
                   "mounts) or an object store URI (default: $METAOCL_RESULTS, else ./metaocl-results)")
    p.add_argument("--resume", action="store_true",
                   help="continue the last run of this sweep (same --smoke/--seeds/--set/--storage): finished "
                   "trials are kept, unfinished ones resume from their last checkpoint")
    p.add_argument("--max-failures", type=int, metavar="N",
                   help="retries per failing trial (default: the sweep file's max_failures)")
    _fetch_arg(p)

    p = sub.add_parser("run", help="run one trial of a sweep in this process, without Ray",
                       description="Run one trial of a sweep in this process, without Ray: the first trial "
                       "(the first grid point, the sweep's first seed), or --trial ID, or --set seed=N for seed N. "
                       "Tracked into its own MLflow experiment metaocl/NAME-run, never into the sweep's.")
    _sweep_args(p)
    p.add_argument("--trial", help="trial id from `metaocl sweep NAME --dry-run` (default: the first)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    _fetch_arg(p)

    for module in ("metaocl.data.cli", "metaocl.report.cli", "metaocl.ui"):  # sub-commands that live beside their area
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).register(sub)  # sets `handler` with set_defaults
    return parser


LIST_WIDTH = 100  # `metaocl list` fits a terminal this wide


def cmd_list(args: argparse.Namespace) -> int:
    import textwrap

    sweeps = known_sweeps()
    if not sweeps:
        raise ConfigError("no sweep files found (set METAOCL_SWEEPS to the folder that holds them)")
    width = max(len(n) for n in sweeps)
    for name, path in sweeps.items():
        try:
            data = read_yaml(path)
            desc = " ".join(str(data.get("description", "")).split())
            kind = data.get("kind", "?")
        except ConfigError as e:
            desc, kind = f"(invalid: {e})", "?"
        print(f"{name:<{width}}  [{kind}]")
        for line in textwrap.wrap(desc, LIST_WIDTH - 4) or [""]:
            print(f"    {line}")
    return 0


def _named_path(name: str):
    """The sweep file ``metaocl sweep NAME`` reads (None when NAME is not a known sweep)."""
    return known_sweeps().get(name)


def _trial_table(sweep) -> str:
    keys: list[str] = []
    for t in sweep.trials():  # grid keys, then coupled points' keys
        keys += [k for k in t.grid_values if k not in keys]
    rows = [[t.trial_id, t.seed] + [t.grid_values.get(k, "") for k in keys] for t in sweep.trials()]
    return text_table(["trial", "seed"] + keys, rows)


def _cluster_of(sweep, address: str | None, gpu_type: str | None):
    """The GPUs of the Ray cluster at ``address``, probed as a sweep would (a GPU that CUDA cannot use
    is the same one-line error); runs no trial, writes nothing."""
    import ray

    from metaocl.sweep import preflight

    try:
        return preflight.probe_gpus(sweep, preflight.init_ray(address), gpu_type)
    finally:
        if ray.is_initialized():
            ray.shutdown()


def cmd_sweep(args: argparse.Namespace) -> int:
    from metaocl.mlflow_layout import check_reachable, describe_store, tracking_uri

    if args.all or not args.sweep:
        if args.all == bool(args.sweep):
            raise ConfigError("metaocl sweep: name one sweep, or --all for every paper sweep (see metaocl sweep --help)")
        from metaocl.sweep.paper import run_all

        uri = tracking_uri(args.tracking_uri)
        if not args.dry_run:
            check_reachable(uri)
        return run_all(args, uri)
    sweep = load_sweep(args.sweep, smoke=args.smoke, seeds=args.seeds, overrides=args.overrides)
    if args.max_failures is not None and args.max_failures < 0:
        raise ConfigError(f"--max-failures {args.max_failures}: must be at least 0")
    n = len(sweep.trials())
    res = sweep.resources
    print(f"sweep {sweep.name}{' (smoke)' if sweep.smoke else ''}: {sweep.description}")
    print(f"{n} trial{'s' if n != 1 else ''} ({sweep.kind}); each gets cpu={res.cpu:g}, gpu={res.gpu}")
    if sweep.looks:
        print(f"group-sequential: {sweep.looks[0]} seeds first; the next block up to {sweep.looks[-1]} seeds only "
              f"while a verdict is undecided ({sweep.boundary} boundary, looks at {', '.join(map(str, sweep.looks))})")
    if args.dry_run:
        from metaocl.sweep.plan import local_cluster, plan_for, render

        print(_trial_table(sweep))
        print()
        print(render(plan_for([sweep], _cluster_of(sweep, args.address, args.gpu_type)
                              if args.address or os.environ.get("RAY_ADDRESS") else local_cluster(args.gpu_type))))
        return 0
    uri = tracking_uri(args.tracking_uri)
    check_reachable(uri)
    from metaocl.sweep import run_sweep

    def run(part, resume):
        return run_sweep(part, uri, address=args.address, storage=args.storage, resume=resume,
                         tracking_explicit=bool(args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")),
                         max_failures=args.max_failures, show_plan=True,
                         gpu_type=args.gpu_type, fetch=not args.no_fetch)  # prints the plan first and the end-of-sweep summary

    if sweep.looks:  # group-sequential: one invocation per look, the next only while undecided
        outcome = _sequential_sweep(sweep, uri, args, run)
    else:
        outcome = run(sweep, args.resume)
    print()
    print(outcome.table())
    print(f"MLflow store: {describe_store(uri)}")
    print(f"experiment: {sweep.experiment_name}; figures and statistics: metaocl report {sweep.name}"
          f"{' --smoke' if sweep.smoke else ''}")
    if sweep.smoke:
        from metaocl.report.summary import smoke_note

        print(smoke_note(sweep.name if sweep.path == _named_path(sweep.name) else str(sweep.path)))
    if outcome.interrupted:
        print(f"metaocl: interrupted; {len(outcome.unfinished())} trial(s) unfinished. Resume with:\n"
              f"  {outcome.resume_command}", file=sys.stderr)
        return 130
    return 0 if outcome.ok else 1


def _sequential_sweep(sweep, uri: str, args: argparse.Namespace, run):
    """Run the looks of a group-sequential sweep: look 1's seeds, then each next block of seeds only
    while a headline effect's test is undecided (the verdicts read back from MLflow, as the summary
    and the report do). ``--resume`` continues the look whose trials the last run had."""
    from metaocl.report.effects import analyse
    from metaocl.report.runs import load_invocation
    from metaocl.report.stats import needs_next_look

    k, previous = 1, None
    if args.resume:
        from metaocl.sweep.ledger import default_storage, find_resumable, same_trials

        _, state = find_resumable(sweep.for_look(1), args.storage or default_storage())
        k = next((j for j in range(1, len(sweep.looks) + 1) if same_trials(
            {t.trial_id: t for t in sweep.for_look(j).trials()}, state)[0]), 1)
    while True:
        seeds = sweep.for_look(k).seeds
        print(f"group-sequential ({sweep.boundary} boundary, looks at {', '.join(map(str, sweep.looks))} seeds): "
              f"look {k} of {len(sweep.looks)}, seeds {seeds[0]}-{seeds[-1]}")
        outcome = run(sweep.for_look(k, previous), args.resume and previous is None)
        if not outcome.ok or k == len(sweep.looks):
            return outcome
        analysed = analyse(load_invocation(uri, None, outcome.parent_run_id, allow_empty=True))
        if not any(needs_next_look([h]) for r in analysed for h in r.headline):
            return outcome
        previous, k = outcome.parent_run_id, k + 1
        print()


def cmd_run(args: argparse.Namespace) -> int:
    from metaocl.mlflow_layout import check_reachable, describe_store, tracking_uri

    sweep = load_sweep(args.sweep, smoke=args.smoke, seeds=1 if not args.trial else None, overrides=args.overrides)
    trials = sweep.trials()
    if args.trial:
        match = [t for t in trials if t.trial_id == args.trial]
        if not match:
            raise ConfigError(f"--trial {args.trial}: no such trial; known: {', '.join(t.trial_id for t in trials)}")
        trial = match[0]
    else:
        trial = trials[0]
    uri = None if args.no_track else tracking_uri(args.tracking_uri)
    if uri:
        check_reachable(uri)
    from metaocl.experiments.local import prepare_trial, run_single
    from metaocl.report.summary import summarize_trial

    prepare_trial(trial, sweep, fetch=not args.no_fetch)  # inputs fetched and checked before anything is written
    print(f"run {sweep.name} trial {trial.trial_id} (seed {trial.seed}) in this process")
    result = run_single(trial, sweep, uri)
    print()
    print(summarize_trial(sweep.kind, trial.trial_id, trial.grid_values, trial.seed, result["history"]))
    if uri:
        print(f"MLflow store: {describe_store(uri)}")
        print(f"experiment: {sweep.run_experiment_name} (kept apart from the sweep's {sweep.experiment_name})")
    return 0


COMMANDS = {"list": cmd_list, "sweep": cmd_sweep, "run": cmd_run}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        handler = getattr(args, "handler", None) or COMMANDS[args.command]
        return handler(args)
    except ConfigError as e:
        print(f"metaocl: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("metaocl: interrupted", file=sys.stderr)
        return 130


def console() -> None:
    """The ``metaocl`` command: :func:`main`, then an exit that Ray's leftover native threads cannot
    crash (:mod:`metaocl.sweep.shutdown`)."""
    from metaocl.sweep.shutdown import exit_process

    try:
        code = main()
    except SystemExit as e:  # argparse's --help and usage errors
        code = e.code
    except BrokenPipeError:  # `metaocl list | head`: the reader has gone; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the final flush must not fail again
        code = 141  # as a shell reports SIGPIPE
    except Exception:  # a bug: the traceback Python would print, and its exit status
        sys.excepthook(*sys.exc_info())
        code = 1
    exit_process(code)


if __name__ == "__main__":
    console()
