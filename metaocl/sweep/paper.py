"""``metaocl sweep --all``: every paper sweep in one invocation (driver side).

    metaocl sweep --all                 # the whole paper: the plan, one fetch, every sweep, one report
    metaocl sweep --all --smoke         # the same at CPU scale
    metaocl sweep --all --resume        # after Ctrl-C or a killed driver: finished sweeps are kept

Why a flag of ``sweep`` and not a command of its own: it is the same operation on a list of sweeps,
and every option of ``metaocl sweep`` (``--smoke``, ``--seeds``, ``--set``, ``--address``,
``--tracking-uri``, ``--storage``, ``--resume``, ``--no-fetch``, ``--dry-run``) means the same here.

Order of events: the plan for the whole paper (:func:`plan_text`), the inputs of every sweep fetched
once (:func:`metaocl.fetch.fetch_for`), then each sweep of :data:`PAPER_SWEEPS` in turn through
:func:`metaocl.sweep.run_sweep`, then one report: per sweep its verdicts, with the paper's values
beside them where the configuration is the paper's (:mod:`metaocl.report.paper_values`), also
written to ``reports/paper[-smoke]/verdicts.md``.

Resumable as one unit: ``<storage>/metaocl-all[-smoke].json`` records which sweeps finished; with
``--resume`` a finished sweep is skipped, a started one resumed (``run_sweep(resume=True)``), the rest
started. A ``--set KEY=VALUE`` applies to every sweep that has KEY (an LM key does not reach the MNIST
sweep); a KEY no sweep has is an error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from metaocl.config import ConfigError, load_sweep

# The README's sweep table: every sweep that reproduces a part of the paper (quickstart is a demo).
PAPER_SWEEPS = (
    "set_inclusion", "set_inclusion_d3consis", "two_stage", "two_stage_trex", "single_stage",
    "single_stage_trex", "three_stage", "in_context", "tag_correlation", "word_order", "model_size",
    "batch_size", "t5", "t5_single", "nl_tags", "data_amount", "grad_alignment", "mnist",
)


def load_all(smoke: bool = False, seeds: int | None = None, overrides: list[str] = ()) -> list:
    """Every paper sweep, each with the ``--set`` overrides that apply to it."""
    overrides = list(overrides)
    applies = {o: [] for o in overrides}
    errors: dict[str, str] = {}
    for name in PAPER_SWEEPS:
        for o in overrides:
            try:
                load_sweep(name, smoke=smoke, seeds=seeds, overrides=[o])
                applies[o].append(name)
            except ConfigError as e:
                errors.setdefault(o, str(e))
    for o, names in applies.items():
        if not names:
            raise ConfigError(f"--set {o}: no paper sweep accepts it ({errors[o]})")
    return [load_sweep(name, smoke=smoke, seeds=seeds, overrides=[o for o in overrides if name in applies[o]])
            for name in PAPER_SWEEPS]


def plan_text(sweeps: list, gpu_type: str | None = None) -> str:
    """The plan for the whole paper, printed before anything runs: trials, GPU packing, GPU-hours,
    peak memory, checkpoint bytes and downloads of every sweep (:mod:`metaocl.sweep.plan`), on the
    GPUs named by ``gpu_type`` (``--gpu-type``) or found on this machine."""
    from metaocl.sweep.plan import local_cluster, plan_for, render

    return render(plan_for(sweeps, local_cluster(gpu_type)))


def _state_path(storage: str, smoke: bool) -> Path:
    return Path(storage) / f"metaocl-all{'-smoke' if smoke else ''}.json"


def _read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)


def run_all(args, uri: str) -> int:
    """The body of ``metaocl sweep --all`` (``args``: the parsed ``sweep`` options)."""
    from metaocl.fetch import fetch_for
    from metaocl.sweep import run_sweep
    from metaocl.sweep.ledger import default_storage, is_uri

    sweeps = load_all(args.smoke, args.seeds, args.overrides)
    print(f"the paper{' (smoke)' if args.smoke else ''}: every sweep of the README's table, one after another")
    print(plan_text(sweeps, getattr(args, "gpu_type", None)))
    if args.dry_run:
        return 0
    storage = args.storage or default_storage()
    if is_uri(storage):
        raise ConfigError(f"--all --storage {storage}: the paper's progress file needs a local folder (NFS is fine)")
    local = not (args.address or os.environ.get("RAY_ADDRESS"))
    if local:  # every input of every sweep, once, before the first trial (on a cluster: per sweep, from a node)
        fetch_for(sweeps, no_fetch=args.no_fetch)
    state_file = _state_path(storage, args.smoke)
    state = _read_state(state_file) if args.resume else {}
    state.setdefault("sweeps", {})
    _write_state(state_file, state)
    ok = True
    for sweep in sweeps:
        entry = state["sweeps"].get(sweep.name, {})
        if entry.get("status") == "done":
            print(f"\n== {sweep.name}: finished earlier (parent run {entry.get('parent_run_id')})")
            continue
        print(f"\n== {sweep.name}{' (smoke)' if sweep.smoke else ''}: {len(sweep.trials())} trials")
        resume = args.resume and entry.get("status") in ("started", "failed")
        outcome = run_sweep(sweep, uri, address=args.address, storage=storage, resume=resume,
                            tracking_explicit=bool(args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")),
                            max_failures=args.max_failures, fetch=not args.no_fetch)
        state["sweeps"][sweep.name] = {"status": "done" if outcome.ok else "failed" if not outcome.interrupted
                                       else "started", "parent_run_id": outcome.parent_run_id}
        _write_state(state_file, state)
        if outcome.interrupted:
            print(f"metaocl: interrupted in {sweep.name}. Resume the paper with:\n  metaocl sweep --all"
                  f"{' --smoke' if args.smoke else ''} --resume (same --seeds/--set/--storage)", file=sys.stderr)
            return 130
        ok = ok and outcome.ok
    print()
    print(paper_report(sweeps, uri, state, args.smoke))
    return 0 if ok else 1


def paper_report(sweeps: list, uri: str, state: dict, smoke: bool) -> str:
    """Per sweep: its verdicts (with the paper's values where the configuration is the paper's), from
    the report's own code; also written to ``reports/paper[-smoke]/verdicts.md``."""
    from metaocl.report.build import default_out_dir, make_report

    parts = [f"# The paper{' (smoke: CPU scale, not a reproduction)' if smoke else ''}: verdicts per sweep"]
    for sweep in sweeps:
        parent = state["sweeps"].get(sweep.name, {}).get("parent_run_id")
        try:
            verdicts, _ = make_report(sweep.name, uri, smoke=smoke, parent_run_id=parent)
            body = "\n".join(f"- {v}" for v in verdicts) or "- (no verdicts)"
        except ConfigError as e:
            body = f"- no report: {e}"
        parts.append(f"\n## {sweep.name}: {sweep.description.strip()}\n{body}\n(figures: {default_out_dir(sweep.name, smoke)})")
    text = "\n".join(parts)
    out = Path("reports") / f"paper{'-smoke' if smoke else ''}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "verdicts.md").write_text(text + "\n")
    return text + f"\n\nwritten to {out / 'verdicts.md'}"
