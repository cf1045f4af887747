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
from metaocl.experiments import Reporter
from metaocl.experiments.base import ExperimentKind, evaluations

if TYPE_CHECKING:
    import torch


def n_reports(config: SetInclusionConfig) -> int:
    """Evaluations of one trial: every ``eval.every`` epochs and at the end of each stage."""
    t = config.train
    stages = [t.stage1_epochs] + ([] if t.joint else [t.stage2_epochs])
    return sum(evaluations(n, config.eval.every) for n in stages)


def run(config: SetInclusionConfig, reporter: Reporter) -> dict[str, float]:
    import torch

    from metaocl.data.set_inclusion import generate
    from metaocl.engine import set_inclusion as engine
    from metaocl.engine.grad_alignment import GradAlignmentMonitor
    from metaocl.experiments import checkpoints
    from metaocl.runtime import resolve_device, seed_everything, set_threads

    seed_everything(config.seed)
    set_threads()
    device = resolve_device(config.device)
    cfg_t = config.train

    dataset = generate(config.data, config.seed)
    tok = engine.build_tokenizer(dataset.vocab)
    model = engine.build_model(config.model, tok.get_vocab_size()).to(device)
    eval_sets = {s: engine.EvalSet.from_questions(tok, qs) for s, qs in dataset.test_qa.items() if qs}
    defs = {s: engine.encode(tok, d, add_eos=False).to(device) for s, d in dataset.definitions.items() if d}

    def loss_fn(m: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:  # exactly the training loss
        return engine.lm_loss(m, batch[:, : int((batch != 0).sum(1).max())], answer_only=cfg_t.loss_on == "answer")

    stages = [(1, config.train.stage1_epochs)]
    if not cfg_t.joint and cfg_t.stage2_epochs > 0:
        stages.append((2, cfg_t.stage2_epochs))

    generator = torch.Generator().manual_seed(config.seed)
    monitor = GradAlignmentMonitor(every_steps=cfg_t.grad_alignment_every)
    probes = _grad_probes(dataset, tok, config.seed, device) if monitor.enabled else {}
    step_global = 0
    epoch_global = 0
    metrics: dict[str, float] = {}
    # A retried or resumed Ray trial continues after its last finished epoch (see metaocl.experiments.checkpoints).
    saved = checkpoints.restore(reporter)
    if saved is not None:
        model.load_state_dict(saved["model"])
        step_global, epoch_global, metrics = saved["step_global"], saved["epoch_global"], saved["metrics"]
    for stage, n_epochs in stages:
        if saved is not None and saved["stage"] > stage:
            continue
        data = engine.encode(tok, dataset.stage_examples(stage, joint=cfg_t.joint)).to(device)
        batch_size = cfg_t.batch_size if stage == 1 else (cfg_t.stage2_batch_size or cfg_t.batch_size)
        lr = cfg_t.lr if stage == 1 else (cfg_t.stage2_lr if cfg_t.stage2_lr is not None else cfg_t.lr)
        steps_per_epoch = -(-len(data) // batch_size)
        opt, sched = engine.make_optimizer(model, cfg_t, lr, steps_per_epoch * n_epochs)
        first_epoch = 1
        if saved is not None:  # the stage the checkpoint was written in: same optimizer, RNG, position
            checkpoints.load_training_state(saved, opt, sched, generator)
            checkpoints.set_alignment_pending(monitor, saved)
            first_epoch, saved = saved["epoch"] + 1, None
        bar = _progress(reporter, n_epochs, stage)
        probe = probes.get(stage, {})

        def on_step(_: int) -> None:
            nonlocal step_global
            step_global += 1
            if probe and monitor.due(step_global):
                monitor.measure(model, loss_fn, probe["def1"], probe["def2"], probe["qa"], step=step_global)

        def checkpoint(epoch: int) -> None:
            checkpoints.save(reporter, model, opt, sched, generator, stage=stage, epoch=epoch,
                             step_global=step_global, epoch_global=epoch_global, metrics=metrics,
                             alignment_pending=checkpoints.alignment_pending(monitor))

        for epoch in range(first_epoch, n_epochs + 1):
            clock = engine.Throughput()
            train_loss = engine.train_one_epoch(model, data, opt, sched, cfg_t, batch_size, generator,
                                                on_step=on_step)
            rate = clock.rate(len(data))
            epoch_global += 1
            if epoch % config.eval.every and epoch != n_epochs:
                checkpoint(epoch)
                continue
            metrics = engine.evaluate(model, eval_sets, tok, config.eval, device)
            metrics.update(engine.definition_recall(model, defs, config.eval.batch_size))
            metrics.update(KIND.gaps(metrics))
            metrics.update(monitor.epoch_metrics())
            metrics.update({"train/loss": train_loss, "perf/examples_per_s": rate,
                            "epoch": epoch_global, "stage": stage})
            reporter(metrics)
            checkpoint(epoch)
            if bar is not None:
                bar.update(epoch - bar.n)
                bar.set_postfix({k.split("/")[1]: f"{v:.2f}" for k, v in metrics.items()
                                 if k.startswith("acc/")})
        if bar is not None:
            bar.close()
    return metrics


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



KIND = ExperimentKind(name="set_inclusion", config_cls=SetInclusionConfig, run=run, n_reports=n_reports, measure="acc")
