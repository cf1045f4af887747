"""One set-inclusion trial: generate the data, train in two stages, evaluate every subset each epoch.

Run one trial in the foreground (no Ray)::

    metaocl run quickstart --set train.stage1_epochs=5

Stage 1 trains on X1 (qd1consis and qd2incons: definitions + training questions), stage 2 on X2
(d1consis / d2consis / d3consis definitions only), each with a fresh optimizer. With
``train.joint: true`` everything is trained together in one stage (paper's single-stage variant).
Reported per evaluation: ``acc/{subset}``, ``loss/{subset}``, ``acc_def/{subset}``, ``train/loss``,
``gap/ocl`` (qd1consis - qd2incons), ``gap/meta_ocl`` (d1consis - d2consis),
``perf/examples_per_s``, ``epoch``, ``stage``; with ``train.grad_alignment_every`` > 0 also
``grad/cos_def1_qa`` and ``grad/cos_def2_qa`` (epoch means, see :mod:`metaocl.engine.grad_alignment`).

Seeds. Without ``train.stage1_seed`` the trial seed drives everything (data, weights, one data-order
generator across both stages), as the quickstart always has. With it, the authors' layout
(``src/experiment_pipeline.py`` ``TwoStageFineTuning``, ``data_generation/numeric_experiment.py``):
the stage-1 seed draws the dataset (variables, numbers, questions, the X1/X2 split), the initial
weights and stage 1's data order; the trial seed is the stage-2 seed: it re-splits X2 into
d1/d2/d3consis (:func:`metaocl.data.set_inclusion.generate`'s ``x2_seed``) and orders stage 2's data.
Stage 1 trains on X1 only and sees the X2 split of stage-2 seed 0, as their stage 1
(``seed_stage2=0``), so it is the same for every stage-2 seed: a sweep trains it once per stage-1
seed as a stage-1 unit (:mod:`metaocl.sweep.stage1`; :func:`run_stage1` / :func:`run_branch`), and
stage 2 starts from the unit's model at ``train.stage2_from_epoch`` (null: the end of stage 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metaocl.config import to_dict
from metaocl.configs.set_inclusion import SetInclusionConfig
from metaocl.experiments import Reporter, staged
from metaocl.experiments.base import ExperimentKind, SharedStages
from metaocl.experiments.staged import Stage

if TYPE_CHECKING:
    import torch


def stages(config: SetInclusionConfig, branch: bool = True) -> list[Stage]:
    """Stage 1 (X1; everything with ``train.joint``), then stage 2 (X2 definitions) unless joint or
    0 epochs. Without ``train.stage1_seed`` no per-stage reseeding: the trial seeds once and one
    data-order generator runs on. With it, stage 1 is seeded from the stage-1 seed and stage 2 from
    the trial seed, each independently of the other (so a branch from a stage-1 unit's model goes on
    exactly as an uninterrupted trial). ``branch``: what a trial's own reports follow, stage 1 cut at
    ``train.stage2_from_epoch``; ``False``: stage 1 whole (what a stage-1 unit trains)."""
    t = config.train
    layout = t.stage1_seed is not None
    cut = t.stage2_from_epoch if t.two_stage and branch else None
    out = [Stage(1, t.stage1_epochs if cut is None else cut, config.eval.every,
                 seed=config.stage1_seed * 1009 + 1 if layout else None)]
    if t.two_stage:
        out.append(Stage(2, t.stage2_epochs, config.eval.every, seed=config.seed * 1009 + 2 if layout else None))
    return out


def n_reports(config: SetInclusionConfig) -> int:
    """Evaluations of one trial: every ``eval.every`` epochs and at the end of each stage."""
    return staged.n_reports(stages(config))


def datasets(config: SetInclusionConfig, *numbers: int) -> dict:
    """The dataset each stage in ``numbers`` (default: all) sees. Without ``train.stage1_seed``: one
    dataset of the trial seed. With it: the stage-1 seed's data, X2 split by stage-2 seed 0 in stage 1
    (two-stage; X1 only is trained there) and by the trial seed in stage 2 (or in a joint stage 1)."""
    from metaocl.data.set_inclusion import generate

    numbers = numbers or tuple(s.number for s in stages(config))
    if config.train.stage1_seed is None:
        one = generate(config.data, config.seed)
        return {n: one for n in numbers}
    by_x2: dict[int, object] = {}
    for n in numbers:
        x2_seed = 0 if (n == 1 and config.train.two_stage) else config.seed
        if x2_seed not in by_x2:
            by_x2[x2_seed] = generate(config.data, config.stage1_seed, x2_seed=x2_seed)
    return {n: by_x2[0 if (n == 1 and config.train.two_stage) else config.seed] for n in numbers}


def run(config: SetInclusionConfig, reporter: Reporter) -> dict[str, float]:
    from metaocl.runtime import resolve_device, seed_everything, set_threads
    from metaocl.experiments import checkpoints

    seed_everything(config.stage1_seed)
    set_threads()
    trial = SetInclusionTrial(config, reporter, resolve_device(config.device), datasets(config))
    policy = staged.CheckpointPolicy(config.train.checkpoint_minutes)
    return staged.run(trial, stages(config), reporter, policy, saved=checkpoints.restore(reporter))


def run_stage1(config: SetInclusionConfig, reporter: Reporter, store: str) -> dict[str, float]:
    """A stage-1 unit of a sweep: stage 1 once for every trial of this stage-1 seed, each evaluation
    reported once; the model (at ``train.stage2_from_epoch``, else at the end of stage 1) and the
    reports up to it go to ``store`` in the sweep's trial storage, where the branching trials find it."""
    from metaocl.experiments import checkpoints, stage1_cache
    from metaocl.runtime import resolve_device, seed_everything, set_threads

    seed_everything(config.stage1_seed)
    set_threads()
    stage1_cache.STATS["stage1_trainings"] += 1
    cut = config.train.stage2_from_epoch
    trial = SetInclusionTrial(config, reporter, resolve_device(config.device), datasets(config, 1),
                              publish=(store, cut) if cut is not None else None)
    history: list[dict] = []
    final = staged.run(trial, stages(config, branch=False), reporter,
                       staged.CheckpointPolicy(config.train.checkpoint_minutes),
                       saved=checkpoints.restore(reporter), history=history, last=1)
    if cut is None:
        stage1_cache.publish_state(store, trial.model.state_dict())
    stage1_cache.publish_complete(store, [r for r in history if cut is None or r["epoch"] <= cut])
    return final


def run_branch(config: SetInclusionConfig, reporter: Reporter, store: str) -> dict[str, float]:
    """A trial that branches from the stage-1 unit at ``store``: only stage 2 is trained and reported;
    its ``epoch`` continues after the unit's. Without a complete unit at ``store`` (it failed for good)
    the trial trains both stages itself (:func:`run`)."""
    from metaocl.experiments import checkpoints, stage1_cache
    from metaocl.runtime import resolve_device, set_threads

    if not stage1_cache.complete(store):
        return run(config, reporter)
    set_threads()
    history = stage1_cache.fetch_history(store)
    trial = SetInclusionTrial(config, reporter, resolve_device(config.device), datasets(config, 2),
                              weights=stage1_cache.fetch_state(store))
    return staged.run(trial, stages(config), reporter, staged.CheckpointPolicy(config.train.checkpoint_minutes),
                      saved=checkpoints.restore(reporter), history=history, first=2)


STAGE2_ONLY = ("stage2_epochs", "stage2_batch_size", "stage2_lr", "checkpoint_minutes", "stage1_seed")


def _unit_key(config: SetInclusionConfig) -> str | None:
    """Trials with ``train.stage1_seed`` set and two stages share stage 1 (a sweep's stage-1 units):
    a hash of everything that determines the stage-1 model and its reports."""
    import hashlib
    import json

    t = config.train
    if t.stage1_seed is None or not t.two_stage:
        return None
    what = {"kind": "set_inclusion", "data": to_dict(config.data), "model": to_dict(config.model),
            "eval": to_dict(config.eval), "stage1_seed": t.stage1_seed,
            "train": {k: v for k, v in to_dict(t).items() if k not in STAGE2_ONLY}}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _unit_stages(config: SetInclusionConfig) -> list[Stage]:
    return [s for s in stages(config, branch=False) if s.number == 1]


def _branch_stages(config: SetInclusionConfig) -> list[Stage]:
    return [s for s in stages(config) if s.number > 1]


class SetInclusionTrial(staged.StagedTrial):
    """The set-inclusion kind's part of a staged trial (:mod:`metaocl.experiments.staged` runs the stages)."""

    def __init__(self, config: SetInclusionConfig, reporter: Reporter, device: str, data: dict, *,
                 weights: dict | None = None, publish: tuple[str, int] | None = None):
        """``data``: stage number -> the dataset it sees (:func:`datasets`; the first is built here);
        ``weights``: a stage-1 unit's model to start from; ``publish``: ``(store, epoch)``: write the
        model as it is at the end of stage-1 epoch ``epoch`` to ``store`` (a unit with a cut)."""
        import torch

        from metaocl.engine import set_inclusion as engine
        from metaocl.engine.grad_alignment import GradAlignmentMonitor

        self.config, self.reporter, self.device, self.data_of, self.publish = config, reporter, device, data, publish
        first = min(data)
        self.tok = engine.build_tokenizer(data[first].vocab)  # the same vocabulary for every X2 split
        self.model = engine.build_model(config.model, self.tok.get_vocab_size())
        if weights is not None:
            self.model.load_state_dict(weights)
        self.model = self.model.to(device)
        layout = config.train.stage1_seed is not None
        self._use_dataset(data[first], self._eval_seed(first))
        self.generator = torch.Generator().manual_seed(config.stage1_seed if layout else config.seed)
        self.monitor = GradAlignmentMonitor(every_steps=config.train.grad_alignment_every)
        self.probes = {}  # per stage, from the dataset that stage sees
        if self.monitor.enabled:
            for n, ds in data.items():
                self.probes.update({k: v for k, v in _grad_probes(ds, self.tok, config.seed, device).items() if k == n})
        # optimizer steps of a stage 1 trained elsewhere (a branch), so the diagnostic's cadence goes on
        n1 = len(data[first].stage_examples(1, joint=config.train.joint))
        self.step_global = 0 if first == 1 else -(-n1 // config.train.batch_size) * stages(config)[0].units
        self.bar = None

    def _eval_seed(self, stage: int) -> int:
        """The seed of a stage's evaluation sample: its training seed (the authors' Trainer seed)."""
        return self.config.stage1_seed if stage == 1 else self.config.seed

    def _use_dataset(self, dataset, seed: int) -> None:
        """``dataset``'s evaluation sets (each at most ``eval.max_samples`` questions, drawn by ``seed``)."""
        from metaocl.data.set_inclusion import subsample
        from metaocl.engine import set_inclusion as engine

        self.dataset, self.eval_seed = dataset, seed
        k = self.config.eval.max_samples
        self.eval_sets = {s: engine.EvalSet.from_questions(self.tok, subsample(qs, k, seed))
                          for s, qs in dataset.test_qa.items() if qs}
        self.defs = {s: engine.encode(self.tok, d, add_eos=False).to(self.device)
                     for s, d in dataset.definitions.items() if d}

    def _loss(self, m, batch):  # exactly the training loss
        from metaocl.engine import set_inclusion as engine

        return engine.lm_loss(m, batch[:, : int((batch != 0).sum(1).max())],
                              answer_only=self.config.train.loss_on == "answer")

    def start_stage(self, stage: Stage) -> None:
        from metaocl.engine import set_inclusion as engine

        t = self.config.train
        dataset, seed = self.data_of.get(stage.number, self.dataset), self._eval_seed(stage.number)
        if dataset is not self.dataset or seed != self.eval_seed:  # stage 2: the trial seed's X2 split and sample
            self._use_dataset(dataset, seed)
        self.data = engine.encode(self.tok, self.dataset.stage_examples(stage.number, joint=t.joint)).to(self.device)
        self.batch_size = t.batch_size if stage.number == 1 else (t.stage2_batch_size or t.batch_size)
        lr = t.lr if stage.number == 1 else (t.stage2_lr if t.stage2_lr is not None else t.lr)
        steps_per_epoch = -(-len(self.data) // self.batch_size)
        # stage 1's schedule spans all its epochs, also where stage 2 starts from an earlier epoch
        epochs = t.stage1_epochs if stage.number == 1 else stage.units
        self.optimizer, self.scheduler = engine.make_optimizer(self.model, t, lr, steps_per_epoch * epochs)
        if stage.seed is not None:  # the authors' layout: each stage's data order from its own seed
            import torch

            self.generator = torch.Generator().manual_seed(stage.seed)
        self.probe = self.probes.get(stage.number, {})
        self.bar = _progress(self.reporter, stage.units, stage.number)

    def _on_step(self, _: int) -> None:
        self.step_global += 1
        p = self.probe
        if p and self.monitor.due(self.step_global):
            self.monitor.measure(self.model, self._loss, p["def1"], p["def2"], p["qa"], step=self.step_global)

    def train_unit(self, stage: Stage, unit: int) -> dict[str, float]:
        from metaocl.engine import set_inclusion as engine

        clock = engine.Throughput()
        loss = engine.train_one_epoch(self.model, self.data, self.optimizer, self.scheduler, self.config.train,
                                      self.batch_size, self.generator, on_step=self._on_step)
        return {"train/loss": loss, "perf/examples_per_s": clock.rate(len(self.data))}

    def evaluate(self, stage: Stage) -> dict[str, float]:
        from metaocl.engine import set_inclusion as engine

        metrics = engine.evaluate(self.model, self.eval_sets, self.tok, self.config.eval, self.device)
        metrics.update(engine.definition_recall(self.model, self.defs, self.config.eval.batch_size))
        metrics.update(KIND.gaps(metrics))
        metrics.update(self.monitor.epoch_metrics())
        return metrics

    def state(self) -> dict:
        from metaocl.experiments import checkpoints

        return {"step_global": self.step_global, "alignment_pending": checkpoints.alignment_pending(self.monitor)}

    def load_state(self, saved: dict) -> None:
        from metaocl.experiments import checkpoints

        self.step_global = saved["step_global"]
        checkpoints.set_alignment_pending(self.monitor, saved)

    def unit_done(self, stage: Stage, unit: int, metrics) -> None:
        if self.publish is not None and (stage.number, unit) == (1, self.publish[1]):
            from metaocl.experiments import stage1_cache

            stage1_cache.publish_state(self.publish[0], self.model.state_dict())  # the model stage 2 starts from
        if self.bar is None:
            return
        self.bar.update(unit - self.bar.n)
        if metrics is not None:
            self.bar.set_postfix({k.split("/")[1]: f"{v:.2f}" for k, v in metrics.items() if k.startswith("acc/")})
        if unit == stage.units:
            self.bar.close()


def _grad_probes(dataset, tok, seed: int, device: str, size: int = 256) -> dict[int, dict[str, torch.Tensor]]:
    """Fixed probe batches for the gradient-alignment diagnostic, drawn once with a generator of their own.

    Per stage: tag-1 and tag-2 definitions of that stage's training data (stage 1: qd1consis /
    qd2incons; stage 2: d1consis / d2consis) and training QA pairs of stage 1 (the answers the
    definitions should help with; stage 2 trains on none, so its probe reuses stage 1's).
    """
    import torch

    from metaocl.engine import set_inclusion as engine

    gen = torch.Generator().manual_seed(seed + 7919)

    def sample(rows: list[list[str]]) -> torch.Tensor | None:
        if not rows:
            return None
        pick = torch.randperm(len(rows), generator=gen)[:size].tolist()
        return engine.encode(tok, [rows[i] for i in pick]).to(device)

    qa = sample([q.words for s in ("qd1consis", "qd2incons") for q in dataset.train_qa.get(s, [])])
    out = {}
    for stage, (tag1, tag2) in ((1, ("qd1consis", "qd2incons")), (2, ("d1consis", "d2consis"))):
        def1, def2 = sample(dataset.definitions.get(tag1, [])), sample(dataset.definitions.get(tag2, []))
        if qa is not None and def1 is not None:
            out[stage] = {"def1": def1, "def2": def2, "qa": qa}
    return out


def _progress(reporter: Reporter, total: int, stage: int):
    if not getattr(reporter, "interactive", False):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"stage {stage}", unit="epoch", leave=True)



SHARED = SharedStages(key=_unit_key, run_unit=run_stage1, run_branch=run_branch, unit_stages=_unit_stages,
                      branch_stages=_branch_stages)

KIND = ExperimentKind(name="set_inclusion", config_cls=SetInclusionConfig, run=run, n_reports=n_reports, stages=stages,
                      shared=SHARED, measure="acc")
