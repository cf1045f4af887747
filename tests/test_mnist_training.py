"""The MNIST vision engine and runner: learning, gradients, schedule, metrics, sweep file."""

from __future__ import annotations

import math

import pytest
import torch

from metaocl.config import from_dict, load_sweep
from metaocl.configs.mnist import MnistConfig
from metaocl.data.mnist_grid import MnistGridTask
from metaocl.engine.vision import VisionTrainer, build_model, lr_factor, score_batches
from metaocl.experiments import PrintReporter

torch.set_num_threads(1)

TINY = {
    "device": "cpu",
    "data": {"digits": "sklearn_digits", "digit_size": 8, "n_pairs": 40},
    "model": {"name": "convnextv2_atto", "drop_path_rate": 0.0},
    "train": {"steps": 4, "batch_size": 8, "lr": 0.002, "warmup_steps": 0, "eval_every": 2},
    "eval": {"batches": 1, "batch_size": 8},
}


@pytest.fixture(scope="module")
def task():
    return MnistGridTask(from_dict(MnistConfig, TINY).data, seed=0)


def make_trainer(task, lr=2e-3, steps=10):
    torch.manual_seed(0)
    model = build_model("convnextv2_atto", task.n_cells)
    return VisionTrainer(model, task.n_cells, "cpu", steps=steps, lr=lr, warmup_steps=0, cosine=False)


def test_output_is_three_classes_per_cell(task):
    trainer = make_trainer(task)
    b = task.sample_train(4)
    assert trainer.logits(b.images).shape == (4, 9, 3)
    assert trainer.predict(b.images).shape == (4, 9)


@pytest.mark.slow
def test_loss_decreases_on_cpu_in_a_few_steps(task):
    trainer = make_trainer(task)
    b = task.sample_train(32)
    losses = [float(trainer.train_step(b.images, b.targets)) for _ in range(6)]
    assert losses[-1] < 0.8 * losses[0], losses


def test_gradients_reach_every_parameter(task):
    trainer = make_trainer(task)
    b = task.sample_train(16)
    trainer.model.train()
    trainer.loss(b.images, b.targets).backward()
    missing = [n for n, p in trainer.model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert missing == []


def test_weight_decay_skips_norms_biases_and_grn(task):
    trainer = make_trainer(task)
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["weight_decay"] > 0 and no_decay["weight_decay"] == 0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])


def test_warmup_then_cosine_schedule():
    f = [lr_factor(s, total=100, warmup=10, min_ratio=0.01, cosine=True) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:10]))  # linear warm-up
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # then decays
    assert f[55] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(100, 100, 10, 0.01, True) == pytest.approx(0.01)
    assert lr_factor(50, 100, 10, 0.01, cosine=False) == 1.0


def test_scoring_counts_the_asked_cell_for_qa_and_all_cells_for_definitions(task):
    trainer = make_trainer(task)
    gen = task.eval_generator()
    qa = task.eval_batch("qd1consis", "all", 8, gen)
    defs = task.eval_batch("d1consis", "def", 8, gen)
    pred_qa, pred_def = trainer.predict(qa.images), trainer.predict(defs.images)
    want_qa = (pred_qa.gather(1, qa.cell.unsqueeze(1)).squeeze(1) == qa.targets.gather(1, qa.cell.unsqueeze(1)).squeeze(1)).float().mean()
    want_def = (pred_def == defs.targets).float().mean()
    got = score_batches(trainer, [("qa", qa), ("def", defs)])
    assert got["qa"] == pytest.approx(float(want_qa)) and got["def"] == pytest.approx(float(want_def))


def constant_answer_trainer(task, answer: int) -> VisionTrainer:
    """The real ConvNeXt, set to predict class ``answer`` (0 A, 1 B, 2 no answer) in every cell."""
    trainer = make_trainer(task)
    head = trainer.model.get_classifier()
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.nn.functional.one_hot(torch.full((task.n_cells,), answer), 3).flatten().float())
    return trainer


def test_evaluate_scores_models_with_one_constant_answer(task):
    from metaocl.experiments.mnist import evaluate

    a, b, none = (evaluate(task, constant_answer_trainer(task, k), batches=2, batch_size=8) for k in range(3))
    accs = [k for k in a if k.split("/")[0] in ("acc", "acc_all", "acc_def")]
    assert len(accs) == 12
    for k in accs:
        # Every QA answer and every defined cell is A or B, never "no answer": A and B split each example.
        assert a[k] + b[k] == pytest.approx(1.0), k
        # "No answer" is wrong at the asked cell of a QA example and in every cell of a definition.
        assert none[k] == 0.0, k
    assert none["gap/ocl"] == 0.0 and none["gap/meta_ocl"] == 0.0
    assert a["gap/ocl"] + b["gap/ocl"] == pytest.approx(0.0)  # A's advantage is B's disadvantage


@pytest.mark.slow
def test_runner_reports_every_metric_at_each_evaluation(monkeypatch):
    from metaocl.experiments.mnist import run

    monkeypatch.setenv("METAOCL_TRIAL_CPUS", "1")  # as a 1-CPU Ray trial (2 threads thrash on a loaded box)

    cfg = from_dict(MnistConfig, TINY)
    reporter = PrintReporter()
    final = run(cfg, reporter)
    assert [row["epoch"] for row in reporter.history] == [2.0, 4.0]
    groups = ("qd1consis", "qd2incons", "d1consis", "d2consis")
    for row in reporter.history:
        assert row["stage"] == 1.0
        assert {f"{m}/{g}" for m in ("acc", "acc_all", "acc_def") for g in groups} <= set(row)
        assert {"gap/ocl", "gap/meta_ocl"} <= set(row)
        assert row["train/loss"] > 0 and row["perf/examples_per_s"] > 0
    assert final == reporter.history[-1]


def test_sweep_file_validates_with_its_smoke_variant():
    full = load_sweep("mnist")
    assert full.kind == "mnist" and full.grid == {"data.n_pairs": [100, 300, 1000, 3000, 10000]}
    assert len(full.trials()) == 50 and full.trials()[0].config.model.name == "convnextv2_tiny"
    smoke = load_sweep("mnist", smoke=True)
    cfg = smoke.trials()[0].config
    assert cfg.data.digits == "sklearn_digits" and cfg.model.name == "convnextv2_atto" and cfg.train.steps <= 500


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_channels_last_compiled_step():
    cfg = from_dict(MnistConfig, TINY)
    t = MnistGridTask(cfg.data, seed=0, device="cuda")
    b = t.sample_train(16)
    assert b.images.is_cuda and b.targets.is_cuda
    model = build_model("convnextv2_atto", t.n_cells)
    trainer = VisionTrainer(model, t.n_cells, "cuda", steps=4, lr=1e-3, compile=True)
    losses = [float(trainer.train_step(b.images, b.targets)) for _ in range(4)]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert trainer.logits(b.images).dtype == torch.float32
