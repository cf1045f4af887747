"""``metaocl report NAME``: figures, effect statistics and verdicts of one sweep invocation, from MLflow only.

    metaocl report batch_size                     # reports/batch_size/{summary.md, *.png, *.pdf}
    metaocl report ./mine.yaml                    # a sweep file, as `metaocl sweep ./mine.yaml` ran it
    metaocl report quickstart --smoke --out /tmp/r
    metaocl report batch_size --parent 3f2c...    # an earlier invocation (its parent run id)
    metaocl report set_inclusion --tracking-uri http://mlflow:5000

A report reads exactly one invocation: the finished trial runs of one sweep parent run (the newest
unless ``--parent`` names another); runs of ``metaocl run`` and of other invocations are never mixed
in, and RUNNING/FAILED/KILLED runs are left out and named. Registered by ``metaocl/cli.py`` through
:func:`register`. Unknown sweeps, parents and sweeps without runs are one-line ``ConfigError``s (exit 2).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="figures, effect statistics (95%% t CIs, paired tests) and verdicts of one sweep invocation, "
        "read from MLflow",
    )
    p.add_argument("sweep", metavar="NAME", help="sweep name or path to its sweep YAML file, as given to "
                   "`metaocl sweep` (its MLflow experiment is metaocl/NAME, NAME being the file's name: field)")
    p.add_argument("--smoke", action="store_true", help="report on the smoke variant (experiment metaocl/NAME-smoke)")
    p.add_argument("--parent", metavar="RUN_ID",
                   help="the sweep invocation to report: its MLflow parent run id (default: the newest)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: reports/NAME or reports/NAME-smoke)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--no-log", action="store_true", help="do not log the report as artifacts of the sweep's parent run")
    p.set_defaults(handler=cmd_report)


def sweep_name(text: str) -> str:
    """The sweep ``text`` names, in the forms ``metaocl sweep`` takes: a name, or a path to a sweep
    file (``./mine.yaml``), whose ``name:`` field names its MLflow experiment."""
    import os
    from pathlib import Path

    from metaocl.config import read_yaml, resolve_sweep_path

    if Path(text).suffix not in (".yaml", ".yml") and os.sep not in text:
        return text
    data = read_yaml(resolve_sweep_path(text))
    return str(data.get("name") or Path(text).stem)


def cmd_report(args: argparse.Namespace) -> int:
    from metaocl.report.build import default_out_dir, make_report
    from metaocl.mlflow_layout import check_reachable, tracking_uri

    uri = tracking_uri(args.tracking_uri)
    check_reachable(uri)
    name = sweep_name(args.sweep)
    out = args.out or default_out_dir(name, args.smoke)
    verdicts, runs = make_report(name, uri, out, smoke=args.smoke, log_to_mlflow=not args.no_log,
                                 parent_run_id=args.parent)
    print(f"{runs.experiment_name}: {runs.invocation_text()}, {runs.n_trials} finished trial runs")
    if runs.left_out:
        print(runs.left_out_text())
    for line in verdicts:
        print(line)
    if not verdicts:
        print("no OCL / meta-OCL subsets were logged; no verdict (see the figures)")
    print(f"report: {out}/summary.md")
    return 0
