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

Checkpoints (``train.checkpoint_every`` evaluations apart, and at the last step): in a Ray trial,
after an evaluation's report, model, optimizer, schedule, step, the task's sampling generator and
the RNG states are saved; a retried trial resumes at the next step and reports exactly what an
uninterrupted run would (:mod:`metaocl.experiments.checkpoints`).
"""

from __future__ import annotations

from metaocl.configs.mnist import MnistConfig
from metaocl.experiments import Reporter
from metaocl.experiments.base import ExperimentKind, evaluations


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


def n_reports(config: MnistConfig) -> int:
    """Evaluations of one trial: every ``train.eval_every`` steps and at the last step."""
    return evaluations(config.train.steps, config.train.eval_every)


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
    import torch

    from metaocl.data.mnist_grid import MnistGridTask
    from metaocl.engine.vision import VisionTrainer, build_model, fit
    from metaocl.experiments import checkpoints
    from metaocl.runtime import resolve_device, seed_everything, set_threads

    set_threads()
    device = resolve_device(config.device)
    seed_everything(config.seed)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest conv kernels

    task = MnistGridTask(config.data, config.seed, device)
    m, t = config.model, config.train
    model = build_model(m.name, task.n_cells, in_chans=1, pretrained=m.pretrained, drop_path_rate=m.drop_path_rate)
    trainer = VisionTrainer(
        model,
        task.n_cells,
        device,
        steps=t.steps,
        lr=t.lr,
        min_lr=t.min_lr,
        weight_decay=t.weight_decay,
        betas=(t.beta1, t.beta2),
        warmup_steps=t.warmup_steps,
        cosine=t.cosine,
        grad_clip=t.grad_clip,
        bf16=t.bf16,
        channels_last=t.channels_last,
        compile=t.compile,
    )
    eval_batch_size = config.eval.batch_size or t.batch_size
    last: dict[str, float] = {}
    start_step = 0
    saved = checkpoints.restore(reporter)  # a retried Ray trial: continue after its last checkpoint
    if saved is not None:
        trainer.model.load_state_dict(saved["model"])
        checkpoints.load_training_state(saved, trainer.optimizer, trainer.scheduler, task.generator)
        start_step = trainer.step = saved["step"]
        last.update(saved["metrics"])

    def sample():
        batch = task.sample_train(t.batch_size)
        return batch.images, batch.targets

    def on_eval(step: int, train_stats: dict[str, float]) -> None:
        metrics = evaluate(task, trainer, config.eval.batches, eval_batch_size)
        metrics.update(train_stats)
        metrics["epoch"] = float(step)
        metrics["stage"] = 1.0
        reporter(metrics)
        last.clear()
        last.update(metrics)
        every = t.checkpoint_every
        if every and ((step // t.eval_every) % every == 0 or step == t.steps):
            checkpoints.save(reporter, trainer.model, trainer.optimizer, trainer.scheduler, task.generator,
                             step=step, metrics=dict(metrics))

    fit(trainer, sample, t.steps, t.eval_every, on_eval, progress=getattr(reporter, "interactive", False),
        start_step=start_step)
    return dict(last)


KIND = ExperimentKind(name="mnist", config_cls=MnistConfig, run=run, n_reports=n_reports, measure="acc",
                      required_inputs=required_inputs, progress_unit="step")
