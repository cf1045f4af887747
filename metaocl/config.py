"""Typed configs, sweep files and ``--set`` overrides.

Every experiment kind has one dataclass tree (``metaocl/configs/<kind>.py``) that fully describes a
trial. Sweep files (``sweeps/*.yaml``) give a base config, a grid of what varies and the number of
seeds; this module validates them against the dataclasses *before anything runs or is written*, so a
typo costs one line of error and not a half-finished sweep::

    from metaocl.config import load_sweep
    sweep = load_sweep("quickstart", smoke=True, overrides=["train.lr=1e-3"])
    for trial in sweep.trials(): print(trial.trial_id, trial.config.seed)

User mistakes raise :class:`ConfigError`, whose message is a single line naming the file, the key and,
for unknown keys, the nearest valid one. The CLI prints it and exits with status 2.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import itertools
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A mistake in user input (sweep file, config, override). One line; the CLI exits with 2."""


# --------------------------------------------------------------------------------------------
# Experiment kinds: name -> the kind object its runner module exports (metaocl.experiments.base).
# Resolved lazily, and runner modules import torch only inside ``run``, so that `metaocl list` and
# config validation never import torch.
# --------------------------------------------------------------------------------------------
KINDS: dict[str, str] = {
    "set_inclusion": "metaocl.experiments.set_inclusion:KIND",
    "lm": "metaocl.experiments.lm:KIND",
    "mnist": "metaocl.experiments.mnist:KIND",
}


def kind(name: str):
    """The :class:`~metaocl.experiments.base.ExperimentKind` called ``name``."""
    if name not in KINDS:
        raise ConfigError(f"unknown experiment kind {name!r}{_suggest(name, KINDS)}; known kinds: {', '.join(KINDS)}")
    module_name, attr = KINDS[name].split(":")
    return getattr(importlib.import_module(module_name), attr)


def config_class(kind_name: str) -> type:
    """The top-level dataclass of experiment kind ``kind_name``."""
    return kind(kind_name).config_cls


# --------------------------------------------------------------------------------------------
# Dataclass <-> dict with validation
# --------------------------------------------------------------------------------------------
def _suggest(key: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = _suggest(str(value), [str(c) for c in choices])
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(repr(c) for c in choices)}{hint}")
        return value
    if tp in (list, dict):
        tp = list[Any] if tp is list else dict[str, Any]
        origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {str(k): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported annotation {tp!r}")  # a bug in our dataclasses, not user input


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: dict | None, where: str = "config") -> Any:
    """Build dataclass ``cls`` from ``data``, validating keys and types; missing keys get defaults."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r}{_suggest(str(key), names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key {f.name!r}")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    return obj


def to_dict(obj: Any) -> dict:
    """A plain, YAML-able dict of a config dataclass."""
    return dataclasses.asdict(obj)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}} -> {"train.lr": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def field_paths(cls: type, prefix: str = "") -> list[str]:
    """Every dotted field path of dataclass ``cls`` (leaves and sections)."""
    paths = []
    for name, tp in _hints(cls).items():
        path = f"{prefix}{name}"
        paths.append(path)
        if dataclasses.is_dataclass(tp):
            paths.extend(field_paths(tp, path + "."))
    return paths


def set_dotted(d: dict, dotted: str, value: Any, cls: type, where: str) -> None:
    """Set ``d["a"]["b"] = value`` for ``dotted="a.b"``, refusing paths that ``cls`` does not have."""
    parts = dotted.split(".")
    node_cls = cls
    node = d
    for i, part in enumerate(parts):
        hints = _hints(node_cls)
        if part not in hints:
            prefix = ".".join(parts[:i])
            valid = [f"{prefix}.{n}" if prefix else n for n in hints]
            raise ConfigError(f"{where}: unknown key {dotted!r}{_suggest(dotted, valid + field_paths(cls))}")
        if i == len(parts) - 1:
            node[part] = value
            return
        if not dataclasses.is_dataclass(hints[part]):
            raise ConfigError(f"{where}: {'.'.join(parts[: i + 1])!r} is a value, not a section; cannot set {dotted!r}")
        node_cls = hints[part]
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {'.'.join(parts[: i + 1])!r} must be a mapping")


def _field_type(cls: type, dotted: str) -> Any:
    """The annotation of the field at ``dotted`` (a path :func:`set_dotted` accepted)."""
    tp: Any = cls
    for part in dotted.split("."):
        tp = _hints(tp)[part]
    return tp


def deep_merge(base: dict, over: dict) -> dict:
    """A new dict: ``over`` merged into ``base`` section by section."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-3" -> ("train.lr", 0.001)``; the value is read as YAML (so lists work)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.lr=0.001")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads "1e-3" as a string; users mean a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return key, value


# --------------------------------------------------------------------------------------------
# Sweep files
# --------------------------------------------------------------------------------------------
@dataclass
class Resources:
    """What one trial gets from Ray. ``gpu: auto``: no GPU on a cluster without GPUs, else the share
    of one GPU that the trial's estimated peak memory needs (several small trials share a GPU; a
    trial that needs more than half a GPU gets a whole one)."""

    cpu: float = 1.0
    gpu: float | Literal["auto"] = "auto"

    def validate(self) -> None:
        if self.cpu <= 0:
            raise ConfigError("resources.cpu must be > 0")
        if self.gpu != "auto" and self.gpu < 0:
            raise ConfigError("resources.gpu must be >= 0 or 'auto'")


@dataclass
class Sequential:
    """A group-sequential design over seeds (``sequential:`` in a sweep file): ``metaocl sweep`` runs
    the first ``looks[0]`` seeds, and the next block only when some headline effect's test has not
    decided at the look before (:func:`metaocl.report.stats.sequential_effects`); ``seeds`` is
    ``looks[-1]``. The verdicts then use the boundary's nominal level at each look."""

    looks: list[int]
    boundary: str = "pocock"


@dataclass
class SmokeVariant:
    """A reduced version of a sweep that runs on a CPU in a few minutes (``--smoke``)."""

    base: dict[str, Any] = field(default_factory=dict)  # merged onto the sweep's base
    grid: dict[str, list] | None = None  # replaces the grid when given
    points: list[dict[str, Any]] | None = None  # replaces the points when given
    seeds: int | None = None
    resources: Resources | None = None


@dataclass
class SweepFile:
    """The schema of ``sweeps/NAME.yaml``."""

    name: str
    description: str
    kind: str
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=dict)
    # Coupled grid points: a list of {dotted key: value} mappings whose values vary together (e.g.
    # batch size with its epochs); crossed with ``grid`` when both are given.
    points: list[dict[str, Any]] = field(default_factory=list)
    seeds: int = 1
    first_seed: int = 0
    resources: Resources = field(default_factory=Resources)
    max_failures: int = 0
    smoke: SmokeVariant | None = None
    sequential: Sequential | None = None


@dataclass
class Trial:
    """One point of a sweep: a grid point times a seed, with its fully resolved config."""

    trial_id: str
    grid_values: dict[str, Any]  # the grid (and points) values of this trial, dotted keys
    seed: int
    config: Any  # the kind's config dataclass

    def config_dict(self) -> dict:
        return to_dict(self.config)


@dataclass
class Sweep:
    """A validated sweep: everything needed to run it, nothing run yet."""

    name: str
    description: str
    kind: str
    path: Path
    base: dict[str, Any]
    grid: dict[str, list]
    seeds: list[int]
    resources: Resources
    max_failures: int
    smoke: bool
    points: list[dict[str, Any]] = field(default_factory=list)  # coupled grid points (see SweepFile)
    # How it was asked for (``--seeds``, ``--set``), so that a resume command can repeat it exactly.
    seeds_option: int | None = None
    overrides: tuple[str, ...] = ()
    # A group-sequential design (sweep file ``sequential:``; not with --seeds, --set seed or --smoke):
    # cumulative seed counts per look and the boundary; ``look`` > 0 marks the part of ``seeds``
    # one invocation runs (:meth:`for_look`), ``previous_invocation`` the parent run of the look before.
    looks: tuple[int, ...] = ()
    boundary: str = ""
    look: int = 0
    previous_invocation: str | None = None
    _trials: list[Trial] | None = field(default=None, init=False, repr=False, compare=False)

    def for_look(self, k: int, previous_invocation: str | None = None) -> "Sweep":
        """The sweep that look ``k`` (1-based) runs: the seeds it adds, tagged as that look."""
        start = self.looks[k - 2] if k > 1 else 0
        return dataclasses.replace(self, seeds=self.seeds[start:self.looks[k - 1]], look=k,
                                   previous_invocation=previous_invocation)

    def sequential_tags(self) -> tuple[tuple[str, str], ...]:
        """Parent-run tags of one look's invocation (none for an ordinary sweep): read back by the
        report (:func:`metaocl.report.runs.load_invocation`) to join the looks and test per look."""
        from metaocl import mlflow_layout as layout

        if not self.look:
            return ()
        tags = ((layout.SEQUENTIAL_TAG, f"{self.boundary}:{','.join(map(str, self.looks))}"),
                (layout.LOOK_TAG, str(self.look)))
        if self.previous_invocation:
            tags += ((layout.PREVIOUS_INVOCATION_TAG, self.previous_invocation),)
        return tags

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment this sweep tracks into (smoke runs kept apart)."""
        from metaocl.mlflow_layout import experiment_name

        return experiment_name(self.name, self.smoke)

    @property
    def run_experiment_name(self) -> str:
        """The MLflow experiment ``metaocl run`` tracks into: apart from the sweep's, so that a
        debugging run never enters a sweep's verdict."""
        from metaocl.mlflow_layout import experiment_name

        return experiment_name(self.name, self.smoke, run=True)

    def origin(self, key: str) -> str:
        """Where the value of config field ``key`` came from, as the user typed it: ``--set key=value``
        when an override set it, else the sweep file (for errors found after loading)."""
        for text in reversed(self.overrides):
            if text.split("=", 1)[0].strip() == key:
                return f"--set {text.strip()}"
        return str(self.path)

    def problem_text(self, problems: typing.Sequence[str]) -> str:
        """One line for problems found after loading (``"data.path: ... not found"``, the field first):
        the first, named by where its value came from (:meth:`origin`), and how many more."""
        key, _, what = problems[0].partition(": ")
        where = self.origin(key)
        text = f"{where}: {what}" if where.startswith("--set ") and what else f"{where}: {problems[0]}"
        return text + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")

    def trials(self) -> list[Trial]:
        """Every trial (grid point x seed) with its validated config; built once, then cached."""
        if self._trials is None:
            self._trials = self._build_trials()
        return list(self._trials)

    def _build_trials(self) -> list[Trial]:
        cls = config_class(self.kind)
        keys = list(self.grid)
        product = [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]
        # grid x points: each grid combination with each coupled point (points win on a shared key)
        combos = [{**g, **pt} for g in product for pt in (self.points or [{}])]
        varies = bool(keys or self.points)
        out = []
        for p_index, params in enumerate(combos):
            for seed in self.seeds:
                data = copy.deepcopy(self.base)
                for k, v in params.items():
                    set_dotted(data, k, v, cls, f"{self.path}: grid")
                set_dotted(data, "seed", seed, cls, f"{self.path}: seeds")
                config = from_dict(cls, data, f"{self.path}: trial {dict(params, seed=seed)}")
                tid = f"p{p_index:02d}_s{seed}" if varies else f"s{seed}"
                out.append(Trial(trial_id=tid, grid_values=params, seed=seed, config=config))
        return out

    def trial_resources(self, cuda_available: bool, auto_gpu: float | None = None) -> dict[str, float]:
        """What Ray gives each trial. ``gpu: auto`` is 0 without GPUs, else ``auto_gpu``: the share of
        one GPU the trial's estimated peak memory needs (:mod:`metaocl.sweep.plan`), 1 when unknown."""
        gpu = self.resources.gpu
        if gpu == "auto":
            gpu = (auto_gpu or 1.0) if cuda_available else 0.0
        return {"cpu": float(self.resources.cpu), "gpu": float(gpu)}


def sweeps_dir() -> Path:
    """Where named sweeps live: ``$METAOCL_SWEEPS``, else the package's ``metaocl/sweeps``.

    In a checkout ``metaocl/sweeps`` is a symlink to the top-level ``sweeps/`` (the one place to edit
    them); a wheel or ``pip install .`` holds copies of those files (package data). Resolved, so that
    paths under it compare equal however it was reached.
    """
    env = os.environ.get("METAOCL_SWEEPS")
    if env:
        return Path(env).expanduser().resolve()
    from importlib.resources import files

    return Path(str(files("metaocl") / "sweeps")).resolve()


def known_sweeps() -> dict[str, Path]:
    d = sweeps_dir()
    return {p.stem: p for p in sorted(d.glob("*.yaml"))} if d.is_dir() else {}


def resolve_sweep_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not p.is_file():
            raise ConfigError(f"{name_or_path}: no such sweep file")
        return p
    known = known_sweeps()
    if name_or_path not in known:
        raise ConfigError(
            f"unknown sweep {name_or_path!r}{_suggest(name_or_path, known)}; known sweeps: {', '.join(known) or '(none)'}"
        )
    return known[name_or_path]


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping; malformed YAML is reported as ``file:line: problem``."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{line}: malformed YAML ({problem})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _check_points(points: list[dict[str, Any]], grid: dict[str, list], cls: type, path: Path) -> list[dict[str, Any]]:
    """Validate coupled grid points (keys like grid keys, none also in grid); drop the ones that a
    ``--set`` emptied or made equal to an earlier one."""
    out: list[dict[str, Any]] = []
    for i, pt in enumerate(points):
        if not pt:
            continue
        for key in pt:
            set_dotted({}, key, None, cls, f"{path}: points[{i}]")
            if key in grid:
                raise ConfigError(f"{path}: points[{i}].{key}: also a grid key; vary it in grid or in points, not both")
        if pt not in out:
            out.append(pt)
    return out


def load_sweep(
    name_or_path: str,
    smoke: bool = False,
    seeds: int | None = None,
    overrides: typing.Sequence[str] = (),
) -> Sweep:
    """Read, validate and resolve a sweep file. Validates every trial's config before returning."""
    path = resolve_sweep_path(name_or_path)
    spec: SweepFile = from_dict(SweepFile, read_yaml(path), str(path))
    cls = config_class(spec.kind) if spec.kind in KINDS else None
    if cls is None:
        raise ConfigError(f"{path}: kind: unknown experiment kind {spec.kind!r}{_suggest(spec.kind, KINDS)}")
    base, grid, n_seeds, resources = spec.base, spec.grid, spec.seeds, spec.resources
    points = spec.points
    if smoke:
        if spec.smoke is None:
            raise ConfigError(f"{path}: this sweep has no 'smoke' variant")
        base = deep_merge(base, spec.smoke.base)
        grid = spec.smoke.grid if spec.smoke.grid is not None else grid
        points = spec.smoke.points if spec.smoke.points is not None else points
        n_seeds = spec.smoke.seeds or n_seeds
        resources = spec.smoke.resources or resources
    base = copy.deepcopy(base)
    pinned_seed = None
    for text in overrides:
        key, value = parse_override(text)
        if key == "seed":  # pins the seed: one trial per grid point, with that seed
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"--set seed={value!r}: expected an integer")
            if seeds is not None and seeds != 1:
                raise ConfigError(f"--set seed={value} pins one seed; drop --seeds {seeds} "
                                  "(or drop --set seed and use --seeds N for N seeds)")
            pinned_seed = value
            continue
        set_dotted(base, key, value, cls, f"--set {key}")
        _coerce(value, _field_type(cls, key), f"--set {text.strip()}")  # a bad value names what was typed
        grid = {k: v for k, v in grid.items() if k != key}  # an explicit --set pins a grid key
        points = [{k: v for k, v in pt.items() if k != key} for pt in points]  # ... and a points key
    for key, values in grid.items():
        set_dotted({}, key, None, cls, f"{path}: grid")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{key}: expected a non-empty list of values")
    points = _check_points(points, grid, cls, path)
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds {seeds}: must be at least 1")
        n_seeds = seeds
    if n_seeds < 1:
        raise ConfigError(f"{path}: seeds must be at least 1")
    looks: tuple[int, ...] = ()
    boundary = ""
    if spec.sequential is not None and not smoke and seeds is None and pinned_seed is None:
        from metaocl.report.stats import BOUNDARIES

        looks = tuple(spec.sequential.looks)
        boundary = spec.sequential.boundary
        if not looks or looks[0] < 2 or any(b <= a for a, b in zip(looks, looks[1:])):
            raise ConfigError(f"{path}: sequential.looks: expected increasing seed counts, the first at least 2")
        if boundary not in BOUNDARIES:
            raise ConfigError(f"{path}: sequential.boundary: {boundary!r} is not one of {', '.join(BOUNDARIES)}")
        if looks[-1] != n_seeds:
            raise ConfigError(f"{path}: seeds ({n_seeds}) must be the last look's seed count ({looks[-1]})")
    from_dict(cls, base, f"{path}: base" + (" (with smoke)" if smoke else ""))  # errors name base keys
    sweep = Sweep(
        name=spec.name,
        description=spec.description,
        kind=spec.kind,
        path=path,
        base=base,
        grid=grid,
        seeds=[pinned_seed] if pinned_seed is not None else list(range(spec.first_seed, spec.first_seed + n_seeds)),
        resources=resources,
        max_failures=spec.max_failures,
        smoke=smoke,
        points=points,
        seeds_option=seeds,
        overrides=tuple(overrides),
        looks=looks,
        boundary=boundary,
    )
    sweep.trials()  # validate every trial config now, before anything starts
    return sweep
