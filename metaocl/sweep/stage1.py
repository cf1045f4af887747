"""Stage-1 units: the stages that several trials share, trained once per stage-1 seed as a scheduled unit.

In the paper's layout (two_stage: 20 stage-1 seeds x 5 stage-2 seeds) the trials with one stage-1
seed start from one stage-1 model. The driver makes that model a Ray Tune trial of its own, a
*unit* (``<grid point>_stage1``), per key of the kind's :class:`~metaocl.experiments.base.SharedStages`:

- :func:`plan` groups the trials by key (a trial whose kind or config shares nothing stays alone);
- :class:`Stage1FirstSearcher` (a Ray Tune ``Searcher``) hands Tune every unit first, then the
  trials that share nothing, then each unit's trials once that unit has completed (Tune's trial
  completion, or its model found complete in storage after a ``--resume``). Until then ``suggest``
  returns None ("ask again later"), so no trial holds a GPU while it waits;
- the unit writes its model and reports to ``<experiment>/metaocl/stage1/<key>/`` in the sweep's
  trial storage (every node sees it: a shared folder or an object store), and its trials, on any
  node, load it from there (:func:`store`).

A unit that fails for good releases its trials too: each then trains its stage 1 itself (the kind's
``run``), so a failure costs time, never results. The searcher's state is saved with Ray's
experiment state, so ``--resume`` continues it. Driver-only (no MLflow here).
"""

from __future__ import annotations

import dataclasses
import pickle
import time
from dataclasses import dataclass, field

from ray.tune.search import Searcher

from metaocl.config import Trial
from metaocl.sweep.ledger import STATE_DIR, join

UNIT_ROLE = "stage1"  # spec["role"] of a unit (its MLflow run's role: mlflow_layout.STAGE1_ROLE)
BRANCH_ROLE = "branch"  # spec["role"] of a trial that starts from a unit's model


@dataclass
class Unit:
    """One stage-1 unit: ``trial`` is what it runs (a member's config, the stage-1 seed as its seed)."""

    unit_id: str
    key: str
    trial: Trial
    members: list[str] = field(default_factory=list)


def store(exp_dir: str, key: str) -> str:
    """Where a unit's model lives in the sweep's trial storage."""
    return join(exp_dir, STATE_DIR, "stage1", key)


def plan(trials: dict[str, Trial], kind) -> tuple[dict[str, Unit], dict[str, str]]:
    """The units of a sweep and each sharing trial's unit: ``({unit id: Unit}, {trial id: unit id})``.
    Units are named after their first trial's grid point (``p03_stage1``; ``stage1`` without a grid)."""
    units: dict[str, Unit] = {}
    by_key: dict[str, Unit] = {}
    unit_of: dict[str, str] = {}
    if kind.shared is None:
        return units, unit_of
    for tid, t in trials.items():
        key = kind.shared.key(t.config)
        if key is None:
            continue
        if key not in by_key:
            point = tid.rsplit("_", 1)[0] if "_" in tid else ""
            name = f"{point}_stage1" if point else "stage1"
            while name in units or name in trials:
                name += "x"
            stage1_seed = getattr(t.config, "stage1_seed", t.seed)
            config = dataclasses.replace(t.config, seed=stage1_seed)
            grid = {k: v for k, v in t.grid_values.items()}
            by_key[key] = units[name] = Unit(name, key, Trial(trial_id=name, grid_values=grid, seed=stage1_seed,
                                                              config=config))
        by_key[key].members.append(tid)
        unit_of[tid] = by_key[key].unit_id
    return units, unit_of


def expected_reports(trials: dict[str, Trial], units: dict[str, Unit], unit_of: dict[str, str], kind) -> dict[str, int]:
    """Evaluations each scheduled trial (unit, branch or whole trial) reports, for the progress display."""
    from metaocl.experiments.staged import n_reports

    out = {u.unit_id: n_reports(kind.shared.unit_stages(u.trial.config)) for u in units.values()}
    for tid, t in trials.items():
        out[tid] = n_reports(kind.shared.branch_stages(t.config)) if tid in unit_of else kind.n_reports(t.config)
    return out


class Stage1FirstSearcher(Searcher):
    """Suggest every unit first, then the trials that share nothing, then each unit's trials as soon
    as it has completed; ``None`` while trials wait on a running unit; ``FINISHED`` when all are out.

    ``units``: unit specs (the ``param["trial"]`` dict of each); ``alone``: trial specs without a
    unit; ``waiting``: unit id -> its trials' specs; ``stores``: unit id -> its model's location (a
    complete one there releases the trials too: a unit completed under a driver killed before Ray
    saved that).
    """

    POLL_S = 5.0  # at most this often, look for complete units in storage

    def __init__(self, units: list[dict], alone: list[dict], waiting: dict[str, list[dict]], stores: dict[str, str]):
        super().__init__(metric=None, mode=None)
        self.units, self.alone, self.waiting, self.stores = list(units), list(alone), dict(waiting), dict(stores)
        self.ids: dict[str, str] = {}  # Tune's trial id -> ours
        self.order: list[str] = []  # our ids in the order they were suggested (tests, the bench)
        self._polled = 0.0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def _release(self, unit_id: str) -> None:
        self.alone.extend(self.waiting.pop(unit_id, []))

    def _poll_storage(self) -> None:
        if time.monotonic() - self._polled < self.POLL_S:
            return
        self._polled = time.monotonic()
        from metaocl.experiments.stage1_cache import complete

        for unit_id in list(self.waiting):
            if complete(self.stores[unit_id]):
                self._release(unit_id)

    def suggest(self, trial_id: str) -> dict | None:
        if self.units:
            spec = self.units.pop(0)
        else:
            if not self.alone and self.waiting:
                self._poll_storage()
            if self.alone:
                spec = self.alone.pop(0)
            elif self.waiting:
                return None  # ask again later: a unit is still training
            else:
                return Searcher.FINISHED
        self.ids[trial_id] = spec["trial_id"]
        self.order.append(spec["trial_id"])
        return {"trial": spec}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ours = self.ids.get(trial_id)
        if ours in self.waiting:  # done, or failed for good: its trials go (they train stage 1 themselves then)
            self._release(ours)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({k: v for k, v in self.__dict__.items() if k != "_polled"}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self._polled = 0.0
