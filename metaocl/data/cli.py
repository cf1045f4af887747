"""`metaocl data download|build|show`: fetch sources, write an LM dataset, look at what the model sees.

    metaocl data download cvdb                     # also: trex, mnist (into $METAOCL_DATA)
    metaocl data build lm_two_stage --smoke        # a sweep's first trial's data config
    metaocl data build my_data.yaml --seed 3       # or a YAML data config (LMDataConfig fields)
    metaocl data show lm_two_stage --smoke -n 2    # a few rows of every split

Registered by :mod:`metaocl.cli` (``register(subparsers)``; handlers via ``set_defaults(handler=)``).
Bad input raises :class:`~metaocl.config.ConfigError` subclasses: one line, exit status 2, nothing
written.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from metaocl.config import ConfigError, from_dict, load_sweep, parse_override, read_yaml, set_dotted


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="LM data: download sources, build and show datasets")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    data.set_defaults(handler=_no_action)

    p = sub.add_parser("download", help="fetch a public source into $METAOCL_DATA (cvdb, trex, mnist)")
    p.add_argument("source", choices=["cvdb", "trex", "mnist"])
    p.add_argument("--force", action="store_true", help="download again even if present")
    p.set_defaults(handler=cmd_download)

    for name, helptext in (("build", "write the LM dataset of a sweep or data config and print a count table"),
                           ("show", "print a few rows of every split of the LM dataset")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("spec", metavar="SWEEP_OR_CONFIG", help="sweep name/path (first trial's `data`) or a YAML data config")
        p.add_argument("--smoke", action="store_true", help="the sweep's smoke variant")
        p.add_argument("--seed", type=int, help="dataset seed (default: the first trial's seed, or 0)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a field (sweep keys like data.n_entities=200; data-config keys like n_entities=200)")
        if name == "build":
            p.add_argument("--out", help="output folder (default: $METAOCL_DATA/built/NAME-seedS)")
            p.set_defaults(handler=cmd_build)
        else:
            p.add_argument("-n", type=int, default=3, help="rows per split (default 3)")
            p.add_argument("--split", action="append", help="only these splits (repeatable)")
            p.set_defaults(handler=cmd_show)


def _no_action(args: argparse.Namespace) -> int:
    raise ConfigError("metaocl data: choose an action: download, build or show (see metaocl data --help)")


def resolve_data_config(spec: str, smoke: bool = False, overrides=(), seed: int | None = None):
    """``(LMDataConfig, seed, label)`` from a sweep name/path or a YAML data config."""
    from metaocl.configs.lm_data import LMDataConfig

    path = Path(spec)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        raw = read_yaml(path)
        if "kind" not in raw:  # a data config: LMDataConfig fields, optionally under `data:`
            if smoke:
                raise ConfigError(f"{path}: --smoke needs a sweep file; this is a data config")
            body = raw["data"] if set(raw) == {"data"} else raw
            if not isinstance(body, dict):
                raise ConfigError(f"{path}: data: expected a mapping")
            body = dict(body)
            for text in overrides:
                key, value = parse_override(text)
                set_dotted(body, key, value, LMDataConfig, f"--set {key}")
            cfg = from_dict(LMDataConfig, body, f"{path}: data")
            return cfg, (0 if seed is None else seed), path.stem
    sweep = load_sweep(spec, smoke=smoke, overrides=list(overrides))
    trial = sweep.trials()[0]
    cfg = getattr(trial.config, "data", None)
    if not isinstance(cfg, LMDataConfig):
        raise ConfigError(f"{sweep.path}: sweep of kind {sweep.kind!r} has no LM data config (`metaocl data` is for kind lm)")
    label = sweep.name + ("-smoke" if smoke else "")
    if seed is None:  # the LM runner builds its data with train.stage1_seed when set, else the trial seed
        stage1_seed = getattr(getattr(trial.config, "train", None), "stage1_seed", None)
        seed = trial.seed if stage1_seed is None else stage1_seed
    return cfg, seed, label


def format_table(dd) -> str:
    from metaocl.data.qa import split_table

    from metaocl.tables import text_table

    return text_table(["split", "rows", "definitions", "entities"], split_table(dd), align="<>>>")


def cmd_download(args: argparse.Namespace) -> int:
    from metaocl.data.download import download

    where = download(args.source, force=args.force, progress=True)
    print(f"{args.source}: {where}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from metaocl.data import data_home
    from metaocl.data.qa import build_lm_dataset

    cfg, seed, label = resolve_data_config(args.spec, args.smoke, args.overrides, args.seed)
    out = Path(args.out) if args.out else data_home() / "built" / f"{label}-seed{seed}"
    dd = build_lm_dataset(cfg, seed)  # raises before anything is written
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    import datasets

    datasets.disable_progress_bars()
    dd.save_to_disk(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    print(f"{cfg.source} dataset, seed {seed}, {cfg.stages}, word order {cfg.word_order}"
          + (", in-context" if cfg.in_context else "") + (", seq2seq" if cfg.seq2seq else ""))
    print(format_table(dd))
    print(f"written to {out}  (datasets.load_from_disk)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from metaocl.data.qa import build_lm_dataset

    cfg, seed, _ = resolve_data_config(args.spec, args.smoke, args.overrides, args.seed)
    dd = build_lm_dataset(cfg, seed)
    names = args.split or list(dd)
    for name in names:
        if name not in dd:
            raise ConfigError(f"--split {name}: no such split; splits: {', '.join(dd)}")
        ds = dd[name]
        print(f"== {name} ({len(ds)} rows)")
        for row in ds.select(range(min(args.n, len(ds)))):
            marks = f"[{row['subset']}, {row['question_kind']}, entity={row['entity']!r}]"
            print(f"  {row['text']!r:<70} {marks}")
    return 0
