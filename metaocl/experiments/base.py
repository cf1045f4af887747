"""What an experiment kind is: the one object that owns everything specific to a kind.

Each runner module (``metaocl/experiments/<kind>.py``) exports ``KIND = ExperimentKind(...)``;
``metaocl.config.KINDS`` maps the kind's name to ``"metaocl.experiments.<kind>:KIND"`` and resolves
it lazily. Every consumer reads the kind through this object instead of re-deriving it:

- the config system: ``config_cls`` (the dataclass tree of one trial);
- the sweep driver and ``metaocl run``: ``run(config, reporter)``, ``n_reports(config)`` (progress),
  ``required_inputs(config)`` (pre-checks before anything starts), ``progress_unit``;
- the runners, the end-of-sweep summary and ``metaocl report``: ``measure`` (the headline measure,
  ``acc`` or ``em``) and ``effect_pairs`` (OCL, meta-OCL and, for language models, the entity-
  attribution pairs), from which :func:`metaocl.metrics.gaps` computes the ``gap/*`` metrics.

A new kind touches only its own module. Runner modules must import without torch (heavy imports
inside ``run``): validating a config resolves the kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

OCL = "OCL"
META_OCL = "meta-OCL"


@dataclass(frozen=True)
class EffectPair:
    """One measured effect: split ``a`` minus split ``b`` of the headline measure, logged as ``metric``.

    ``effect`` is ``"OCL"`` or ``"meta-OCL"`` (which also says at which stage end its verdict is read:
    OCL where the X1 training ends, meta-OCL after the last stage); ``template`` is the entity-
    attribution template (``None`` for in-distribution questions).
    """

    effect: str
    a: str
    b: str
    metric: str
    template: str | None = None

    @property
    def name(self) -> str:
        """Display name: ``OCL``, ``meta-OCL``, ``OCL (entity attribution, name)``."""
        return self.effect if self.template is None else f"{self.effect} (entity attribution, {self.template})"


# In-distribution pairs, shared by every kind (paper section 2: qd1consis vs qd2incons is OCL,
# d1consis vs d2consis is meta-OCL).
IN_DISTRIBUTION_PAIRS: tuple[EffectPair, ...] = (
    EffectPair(OCL, "qd1consis", "qd2incons", "gap/ocl"),
    EffectPair(META_OCL, "d1consis", "d2consis", "gap/meta_ocl"),
)


def entity_pairs(templates: Sequence[str]) -> tuple[EffectPair, ...]:
    """Entity-attribution pairs per template T (paper Fig. 2b): OCL compares the consistent entity
    with the entity the inconsistent definition named (``ent_T_qd2incons_defent``)."""
    out: list[EffectPair] = []
    for t in templates:
        out.append(EffectPair(OCL, f"ent_{t}_qd1consis", f"ent_{t}_qd2incons_defent", f"gap/ocl_ent_{t}", t))
        out.append(EffectPair(META_OCL, f"ent_{t}_d1consis", f"ent_{t}_d2consis", f"gap/meta_ocl_ent_{t}", t))
    return tuple(out)


def _no_inputs(config: Any) -> list[str]:
    return []


@dataclass(frozen=True)
class SharedStages:
    """How trials of a kind share their first stages (a sweep schedules them as one stage-1 unit per
    ``key``, :mod:`metaocl.sweep.stage1`):

    - ``key(config)``: what identifies the shared stages' model (None: this trial shares nothing);
    - ``run_unit(config, reporter, store)``: train and report the shared stages once, write the model
      to ``store`` (a folder or URI in the sweep's trial storage);
    - ``run_branch(config, reporter, store)``: a trial that starts from the model at ``store``;
    - ``unit_stages(config)`` / ``branch_stages(config)``: the stages each trains (their reports count).
    """

    key: Callable[[Any], str | None]
    run_unit: Callable[[Any, Any, str], Mapping[str, float]]
    run_branch: Callable[[Any, Any, str], Mapping[str, float]]
    unit_stages: Callable[[Any], list]
    branch_stages: Callable[[Any], list]


@dataclass(frozen=True)
class ExperimentKind:
    """Everything specific to one experiment kind (see the module docstring).

    - ``n_reports(config)``: how many evaluations (``reporter(...)`` calls) one trial makes;
    - ``required_inputs(config)``: problems with what a trial needs from outside (data files, model
      names), each one line ``field: what is wrong (how to fix it)``; empty when all is there;
    - ``progress_unit``: what a report's ``epoch`` counts (``epoch`` or ``step``), for progress lines;
    - ``stages(config)``: the trial's stages (:mod:`metaocl.experiments.staged`), from which
      ``n_reports`` and the checkpoint projections follow.
    """

    name: str
    config_cls: type
    run: Callable[[Any, Any], Mapping[str, float]]
    n_reports: Callable[[Any], int]
    measure: str
    effect_pairs: tuple[EffectPair, ...] = IN_DISTRIBUTION_PAIRS
    entity_templates: tuple[str, ...] = ()
    required_inputs: Callable[[Any], list[str]] = _no_inputs
    progress_unit: str = "epoch"
    stages: Callable[[Any], list] | None = None  # the trial's metaocl.experiments.staged.Stage list
    shared: SharedStages | None = None  # stage-1 units (kinds whose trials branch from shared stages)

    def gaps(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """The ``gap/*`` metrics of one report (:func:`metaocl.metrics.gaps` with this kind's pairs)."""
        from metaocl.metrics import gaps

        return gaps(metrics, self.effect_pairs, self.measure)

    def headline(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """The headline measure per split of one report (``{"qd1consis": 0.9, ...}``), for progress lines."""
        prefix = self.measure + "/"
        return {k[len(prefix):]: float(v) for k, v in metrics.items() if k.startswith(prefix)}


def evaluations(n_units: int, every: int) -> int:
    """Evaluations in a stage of ``n_units`` epochs (or steps) evaluated every ``every`` and at its end."""
    if n_units <= 0:
        return 0
    every = max(1, every)
    return n_units // every + (0 if n_units % every == 0 else 1)
