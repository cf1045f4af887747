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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metaocl.configs.set_inclusion import SetInclusionConfig
from metaocl.experiments import Reporter, staged
from metaocl.experiments.base import ExperimentKind
from metaocl.experiments.staged import Stage

if TYPE_CHECKING:
    import torch


def stages(config: SetInclusionConfig) -> list[Stage]:
    """Stage 1 (X1; everything with ``train.joint``), then stage 2 (X2 definitions) unless joint or
    0 epochs. No per-stage reseeding: the trial seeds once and one data-order generator runs on."""
    t = config.train
    out = [Stage(1, t.stage1_epochs, config.eval.every)]
    if not t.joint and t.stage2_epochs > 0:
        out.append(Stage(2, t.stage2_epochs, config.eval.every))
    return out


def n_reports(config: SetInclusionConfig) -> int:
    """Evaluations of one trial: every ``eval.every`` epochs and at the end of each stage."""
    return staged.n_reports(stages(config))


def run(config: SetInclusionConfig, reporter: Reporter) -> dict[str, float]:
    from metaocl.runtime import resolve_device, seed_everything, set_threads
    from metaocl.experiments import checkpoints

    seed_everything(config.seed)
    set_threads()
    trial = SetInclusionTrial(config, reporter, resolve_device(config.device))
    policy = staged.CheckpointPolicy(config.train.checkpoint_minutes)
    return staged.run(trial, stages(config), reporter, policy, saved=checkpoints.restore(reporter))


class SetInclusionTrial(staged.StagedTrial):
    """The set-inclusion kind's part of a staged trial (:mod:`metaocl.experiments.staged` runs the stages)."""

    def __init__(self, config: SetInclusionConfig, reporter: Reporter, device: str):
        import torch

        from metaocl.data.set_inclusion import generate
        from metaocl.engine import set_inclusion as engine
        from metaocl.engine.grad_alignment import GradAlignmentMonitor

        self.config, self.reporter, self.device = config, reporter, device
        self.dataset = generate(config.data, config.seed)
        self.tok = engine.build_tokenizer(self.dataset.vocab)
        self.model = engine.build_model(config.model, self.tok.get_vocab_size()).to(device)
        self.eval_sets = {s: engine.EvalSet.from_questions(self.tok, qs) for s, qs in self.dataset.test_qa.items() if qs}
        self.defs = {s: engine.encode(self.tok, d, add_eos=False).to(device)
                     for s, d in self.dataset.definitions.items() if d}
        self.generator = torch.Generator().manual_seed(config.seed)
        self.monitor = GradAlignmentMonitor(every_steps=config.train.grad_alignment_every)
        self.probes = _grad_probes(self.dataset, self.tok, config.seed, device) if self.monitor.enabled else {}
        self.step_global = 0
        self.bar = None

    def _loss(self, m, batch):  # exactly the training loss
        from metaocl.engine import set_inclusion as engine

        return engine.lm_loss(m, batch[:, : int((batch != 0).sum(1).max())],
                              answer_only=self.config.train.loss_on == "answer")

    def start_stage(self, stage: Stage) -> None:
        from metaocl.engine import set_inclusion as engine

        t = self.config.train
        self.data = engine.encode(self.tok, self.dataset.stage_examples(stage.number, joint=t.joint)).to(self.device)
        self.batch_size = t.batch_size if stage.number == 1 else (t.stage2_batch_size or t.batch_size)
        lr = t.lr if stage.number == 1 else (t.stage2_lr if t.stage2_lr is not None else t.lr)
        steps_per_epoch = -(-len(self.data) // self.batch_size)
        self.optimizer, self.scheduler = engine.make_optimizer(self.model, t, lr, steps_per_epoch * stage.units)
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



KIND = ExperimentKind(name="set_inclusion", config_cls=SetInclusionConfig, run=run, n_reports=n_reports, stages=stages, measure="acc")
