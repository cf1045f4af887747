"""Runner of the MNIST grid-QA experiment (paper section 3.2, appendix E; sweep ``sweeps/mnist.yaml``).

One stage, one-epoch regime: ``train.steps`` fresh batches from :class:`MnistGridTask`, a timm
ConvNeXt V2 trained by :mod:`metaocl.engine.vision`, an evaluation every ``train.eval_every`` steps
and at the last step. Each evaluation reports (all from the MNIST *test* split, the same examples
every time):

- ``acc/{group}``: QA accuracy on cells never asked in training QA -- the headline. For qd1consis and
  qd2incons that is each variable's held-out cell, so only the definitions can tell the answer (OCL:
  qd1consis > qd2incons). d1consis and d2consis never have training QA at all, so *every* cell of
  theirs is held out: they are tested with QA on uniformly random cells of each of their variables,
  whose answers only their (consistent) definitions give (meta-OCL: d1consis > d2consis). A QA answer
  is right when the prediction at the highlighted cell is the entity's label there.
- ``acc_all/{group}``: QA accuracy on uniformly random cells (for qd*, mostly cells trained on).
- ``acc_def/{group}``: definitions, fraction of cells predicted as the definition shows them (for
  qd2incons that is the inconsistent entity).
- ``gap/ocl`` = acc/qd1consis - acc/qd2incons, ``gap/meta_ocl`` = acc/d1consis - acc/d2consis.
- ``train/loss`` (mean over the steps since the previous evaluation), ``perf/examples_per_s``
  (training examples per second over those steps, batch generation included, evaluation excluded).
- ``epoch`` = the training step of the evaluation (there are no epochs in a one-epoch regime; the
  step keeps MLflow's x axis comparable across batch sizes and eval intervals), ``stage`` = 1.

Checkpoints (``train.checkpoint_minutes`` apart, after an evaluation's report; not at the last
step, where the trial ends): in a Ray trial, model, optimizer, schedule, step, the task's sampling
generator and the RNG states are saved; a retried trial resumes at the next step and reports exactly
what an uninterrupted run would (:mod:`metaocl.experiments.staged`).
"""

from __future__ import annotations

from metaocl.configs.mnist import MnistConfig
from metaocl.experiments import Reporter, staged
from metaocl.experiments.base import ExperimentKind
from metaocl.experiments.staged import Stage


def evaluate(task, trainer, batches: int, batch_size: int) -> dict[str, float]:
    """The ``acc``, ``acc_all``, ``acc_def`` metrics and the gaps (see the module docstring)."""
    gen = task.eval_generator()
    prefix = {"heldout": "acc", "all": "acc_all", "def": "acc_def"}

    def stream():
        for group in task.groups:
            for kind in ("heldout", "all", "def"):
                for i in range(batches):
                    yield f"{prefix[kind]}/{group}", task.eval_batch(group, kind, batch_size, gen, offset=i * batch_size)

    from metaocl.engine.vision import score_batches

    metrics = score_batches(trainer, stream())
    metrics.update(KIND.gaps(metrics))
    return metrics


def stages(config: MnistConfig) -> list[Stage]:
    """One stage whose units are blocks of ``train.eval_every`` steps (the last one shorter), each
    evaluated."""
    t = config.train
    return [Stage(1, -(-t.steps // t.eval_every), eval_every=1)]


def n_reports(config: MnistConfig) -> int:
    """Evaluations of one trial: every ``train.eval_every`` steps and at the last step."""
    return staged.n_reports(stages(config))


def required_inputs(config: MnistConfig) -> list[str]:
    """The timm model name, and the MNIST files when ``data.digits: mnist`` (scikit-learn's digits are bundled)."""
    import timm

    out = []
    if not timm.is_model(config.model.name):
        out.append(f"model.name: unknown timm model {config.model.name!r} (e.g. convnextv2_tiny, convnextv2_atto)")
    if config.data.digits == "mnist":
        from metaocl.data import data_home

        raw = data_home() / "MNIST" / "raw"
        if not all((raw / f).is_file() for f in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")):
            out.append(f"data.digits: MNIST not found under {raw.parent.parent} "
                       "(run `metaocl data download mnist` or set data.digits: sklearn_digits)")
    return out


def run(config: MnistConfig, reporter: Reporter) -> dict[str, float]:
    """Train and evaluate one trial; report after every evaluation; return the last metrics."""
    from metaocl.experiments import checkpoints
    from metaocl.runtime import resolve_device, seed_everything, set_threads

    set_threads()
    device = resolve_device(config.device)
    seed_everything(config.seed)
    trial = MnistTrial(config, reporter, device)
    policy = staged.CheckpointPolicy(config.train.checkpoint_minutes)
    try:
        return staged.run(trial, stages(config), reporter, policy, saved=checkpoints.restore(reporter))
    finally:
        if trial.bar is not None:
            trial.bar.close()


class MnistTrial(staged.StagedTrial):
    """The MNIST kind's part of a staged trial: a unit is a block of ``eval_every`` training steps."""

    def __init__(self, config: MnistConfig, reporter: Reporter, device: str):
        import torch

        from metaocl.data.mnist_grid import MnistGridTask
        from metaocl.engine.vision import VisionTrainer, build_model

        if device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest conv kernels
        self.config = config
        self.task = MnistGridTask(config.data, config.seed, device)
        m, t = config.model, config.train
        model = build_model(m.name, self.task.n_cells, in_chans=1, pretrained=m.pretrained,
                            drop_path_rate=m.drop_path_rate)
        self.trainer = VisionTrainer(
            model, self.task.n_cells, device, steps=t.steps, lr=t.lr, min_lr=t.min_lr, weight_decay=t.weight_decay,
            betas=(t.beta1, t.beta2), warmup_steps=t.warmup_steps, cosine=t.cosine, grad_clip=t.grad_clip,
            bf16=t.bf16, channels_last=t.channels_last, compile=t.compile)
        self.model = self.trainer.model
        self.generator = self.task.generator
        self.bar = None
        if getattr(reporter, "interactive", False):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=t.steps, desc="train", unit="step")

    def start_stage(self, stage: Stage) -> None:
        # the one stage: the trainer's optimizer and schedule (over all steps) are the stage's
        self.optimizer, self.scheduler = self.trainer.optimizer, self.trainer.scheduler

    def x(self, stage: Stage, unit: int, units_before: int) -> float:
        return float(min(unit * self.config.train.eval_every, self.config.train.steps))  # the step

    def train_unit(self, stage: Stage, unit: int) -> dict[str, float]:
        from metaocl.engine.vision import train_block

        t = self.config.train
        n = min(unit * t.eval_every, t.steps) - (unit - 1) * t.eval_every
        if self.bar is not None and self.bar.n < (unit - 1) * t.eval_every:  # resumed
            self.bar.update((unit - 1) * t.eval_every - self.bar.n)

        def sample():
            batch = self.task.sample_train(t.batch_size)
            return batch.images, batch.targets

        return train_block(self.trainer, sample, n, self.bar)

    def evaluate(self, stage: Stage) -> dict[str, float]:
        return evaluate(self.task, self.trainer, self.config.eval.batches,
                        self.config.eval.batch_size or self.config.train.batch_size)

    def state(self) -> dict:
        return {"step": self.trainer.step}

    def load_state(self, saved: dict) -> None:
        self.trainer.step = saved["step"]


KIND = ExperimentKind(name="mnist", config_cls=MnistConfig, run=run, n_reports=n_reports, stages=stages, measure="acc",
                      required_inputs=required_inputs, progress_unit="step")
