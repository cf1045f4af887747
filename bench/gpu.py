"""Where a GPU run stands against the paper's compute, in ratios: tokens/s, MFU, time per seed.

The paper spent about 6 A100-hours per seed of its headline experiment (two-stage Pythia-2.8B on
CVDB, appendix F), about 3 GPU-hours per set-inclusion seed and about 2 hours per MNIST run on an
RTX 4090. This script measures our engines on the GPU at hand and projects the time per seed of
each experiment, printed beside the paper's figure and our goal on one H100:

- ``lm``: Pythia-2.8B (architecture from :data:`metaocl.engine.lm_models.PYTHIA_ARCHITECTURES`,
  random weights: nothing can be downloaded on the GPU machine) finetuned by
  :mod:`metaocl.engine.lm` for one epoch on the ``two_stage`` sweep's data (its subsets, built on
  the generated ``cvdb_sample`` source at the paper's 4000 entities: 16,000 stage-1 and 960 stage-2
  datapoints), each datapoint EOS-padded to the sweep's 48 tokens with loss on the padding
  (``train.faithful_padding``, as the sweeps run), fp32 weights + bf16 autocast as the paper's
  ``bf16=True``, no TF32 (the LM engine does not enable it); then :mod:`metaocl.engine.lm_evaluate`
  on every eval split (capped per split, extrapolated to all rows), as the LM runner calls it. Also
  timed: loading the model from a saved folder (what a trial does from the hub cache) and writing /
  reading one resumable checkpoint (model + optimizer state, ``torch.save``). The projection per
  seed is the sweep's own: 20 + 10 epochs of training and evaluation, one model load, and the
  checkpoints the sweep's cadence writes on the measured epoch times (:func:`metaocl.sweep.plan.checkpoint_writes`).
- ``set_inclusion``: :mod:`metaocl.engine.set_inclusion`, the ``set_inclusion`` sweep's own
  configuration (8000 variables, the all-names vocabulary of 17,712 tokens, Pythia-70M's shape, its
  optimizer and batch, evaluation capped at 20,000 questions per split); one stage-1 and one stage-2
  epoch plus evaluation.
- ``mnist``: ConvNeXt V2 Tiny training steps through :class:`metaocl.engine.vision.VisionTrainer`
  on random images of the task's shape (the batch generator has its own bench, bench/mnist.py),
  with TF32 on as the MNIST runner sets it.

FLOP arithmetic and peak FLOP/s come from :mod:`metaocl.sweep.plan` (one home); the LM's MFU is the
plan's FLOPs (padded tokens included) over the time, so the ``record:`` line it prints is what
:data:`metaocl.sweep.plan.MEASURED_MFU` takes for this GPU.

No Ray, no MLflow. Evaluation of a random-weight LM is the fast evaluator's worst case (greedy
output never follows the data, so every example is generated); the figure is an upper bound.

Run::

    python bench/gpu.py                         # all three on CUDA (a few minutes on an H100)
    python bench/gpu.py --only lm               # the LM part alone
    python bench/gpu.py --dry-run               # sizes, FLOPs, the physical limit; runs no model
    python bench/gpu.py --device cpu --tiny     # the whole path on CPU with tiny sizes (seconds)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

EXPERIMENTS = ("lm", "set_inclusion", "mnist")


@dataclass(frozen=True)
class PaperFigure:
    """What the paper reports per seed, and the goal we set for one H100."""

    label: str
    paper_hours: float
    paper_hardware: str
    goal_minutes: float


PAPER = {
    "lm": PaperFigure("two-stage Pythia-2.8B CVDB seed", 6.0, "A100 (appendix F)", 20.0),
    "set_inclusion": PaperFigure("set-inclusion seed (100 + 40 epochs)", 3.0, "GPU (appendix D)", 10.0),
    "mnist": PaperFigure("MNIST ConvNeXt V2 Tiny run", 2.0, "RTX 4090 (appendix E)", 15.0),
}
LM_EPOCHS = (20, 10)  # two-stage: stage 1, stage 2 (paper appendix B)
SET_INCLUSION_EPOCHS = (100, 40)
LM_SWEEP = "two_stage"  # the LM data, padding and checkpoint cadence measured are this sweep's

# ------------------------------------------------------------------------------------------------
# Arithmetic (pure, tested on CPU)
# ------------------------------------------------------------------------------------------------
from metaocl.sweep.plan import matmul_params, peak_flops, train_flops_per_token  # noqa: E402 (one home)


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilization: useful FLOP/s (real tokens only, no padding) over peak."""
    if not peak:
        return None
    return tokens_per_s * flops_per_token / peak


def project_lm(train_s_stage1: float, n_stage1: int, n_stage2: int, eval_s_per_epoch: float,
               epochs: tuple[int, int] = LM_EPOCHS, load_s: float = 0.0, checkpoint_s: float = 0.0,
               checkpoints: int = 0) -> float:
    """Seconds per two-stage seed: every epoch trains its stage's data and evaluates every split;
    plus loading the model once and writing ``checkpoints`` checkpoints of ``checkpoint_s`` each.

    ``train_s_stage1``: one measured stage-1 epoch; stage 2 trains ``n_stage2`` datapoints at the same
    datapoints/s (every datapoint is padded to the same block size)."""
    per_datapoint = train_s_stage1 / max(1, n_stage1)
    stage1 = epochs[0] * (n_stage1 * per_datapoint + eval_s_per_epoch)
    stage2 = epochs[1] * (n_stage2 * per_datapoint + eval_s_per_epoch)
    return stage1 + stage2 + load_s + checkpoints * checkpoint_s


def project_set_inclusion(train_s_stage1: float, train_s_stage2: float, eval_s: float,
                          epochs: tuple[int, int] = SET_INCLUSION_EPOCHS) -> float:
    """Seconds per set-inclusion seed: stage epochs x (one epoch + one evaluation)."""
    return epochs[0] * (train_s_stage1 + eval_s) + epochs[1] * (train_s_stage2 + eval_s)


def project_mnist(images_per_s: float, steps: int, batch_size: int, eval_images: int, eval_images_per_s: float) -> float:
    """Seconds per MNIST run: ``steps`` batches of training plus every evaluation's images."""
    return steps * batch_size / max(images_per_s, 1e-9) + eval_images / max(eval_images_per_s, 1e-9)


def mnist_eval_images(steps: int, eval_every: int, n_groups: int, eval_batches: int, batch_size: int,
                      n_kinds: int = 3) -> int:
    """Images rendered by all evaluations of a run (every ``eval_every`` steps and at the end)."""
    n_evals = steps // eval_every + (1 if steps % eval_every else 0)
    return n_evals * n_groups * n_kinds * eval_batches * batch_size


def fmt_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def projection_line(name: str, seconds: float) -> dict[str, object]:
    """The per-seed projection beside the paper's figure and our goal."""
    paper = PAPER[name]
    return {
        "experiment": paper.label,
        "projected": fmt_duration(seconds),
        "projected_s": seconds,
        "paper": f"{paper.paper_hours:g} h on {paper.paper_hardware}",
        "speedup_vs_paper": paper.paper_hours * 3600 / max(seconds, 1e-9),
        "goal_h100": f"<= {paper.goal_minutes:g} min",
        "meets_goal": seconds <= paper.goal_minutes * 60,
    }


# ------------------------------------------------------------------------------------------------
# Arguments and sizes
# ------------------------------------------------------------------------------------------------
@dataclass
class Sizes:
    lm_model: str = "pythia-2.8b"
    lm_entities: int = 4000
    lm_batch_size: int = 256
    lm_eval_cap: int = 256  # rows per eval split actually evaluated (extrapolated to all)
    lm_vocab: int = 2000  # BPE trained on the data
    lm_shrink_vocab: bool = False  # tiny: output layer sized to the tokenizer, not Pythia's 50304
    si_variables: int = 8000
    si_arch: dict | None = None  # None: Pythia-70M (the config default)
    si_batch_size: int = 512
    mnist_model: str = "convnextv2_tiny"
    mnist_digit_size: int = 28
    mnist_batch_size: int = 256
    mnist_steps: int = 30  # timed steps (after warm-up)
    warmup_steps: int = 3


TINY = Sizes(lm_model="pythia-14m", lm_entities=20, lm_batch_size=32, lm_eval_cap=1, lm_vocab=400,
             lm_shrink_vocab=True, si_variables=60,
             si_arch=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
             si_batch_size=64, mnist_model="convnextv2_atto", mnist_digit_size=4, mnist_batch_size=4,
             mnist_steps=2, warmup_steps=1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=EXPERIMENTS, action="append", help="run only these (repeatable)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: checks the whole path in seconds (CPU)")
    p.add_argument("--dry-run", action="store_true", help="print sizes, FLOPs and the physical limit; run no model")
    p.add_argument("--lm-model", default=None, help="Pythia architecture (default pythia-2.8b; tiny: pythia-14m)")
    p.add_argument("--lm-entities", type=int, default=None, help="CVDB entities (default 4000, the paper's)")
    p.add_argument("--lm-eval-cap", type=int, default=None, help="rows evaluated per eval split (extrapolated)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s (default: from the device name)")
    p.add_argument("--assumed-mfu", type=float, default=0.4, help="MFU of the dry-run's physical-limit estimate")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs; a shared CPU is faster with 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.experiments = tuple(args.only) if args.only else EXPERIMENTS
    args.sizes = _sizes(args)
    if not 0 < args.assumed_mfu <= 1:
        p.error("--assumed-mfu: must be in (0, 1]")
    if args.device.startswith("cpu") and not (args.tiny or args.dry_run):
        p.error("--device cpu: full-size models on a CPU take hours; add --tiny (or use --dry-run)")
    if args.device.startswith("cuda") and not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device here; use --device cpu --tiny or --dry-run")
    from metaocl.engine.lm_models import pythia_key

    if pythia_key(args.sizes.lm_model) is None:
        p.error(f"--lm-model: {args.sizes.lm_model!r} is not a Pythia architecture (e.g. pythia-2.8b, pythia-1b)")
    return args


def _sizes(args) -> Sizes:
    sizes = Sizes(**vars(TINY)) if args.tiny else Sizes()
    if args.lm_model:
        sizes.lm_model = args.lm_model
    if args.lm_entities:
        sizes.lm_entities = args.lm_entities
    if args.lm_eval_cap:
        sizes.lm_eval_cap = args.lm_eval_cap
    return sizes


# ------------------------------------------------------------------------------------------------
# LM: one epoch of Pythia on CVDB-sized data, then evaluation
# ------------------------------------------------------------------------------------------------
def lm_sweep_config(sizes: Sizes):
    """The ``two_stage`` sweep's trial config with its source swapped for the generated ``cvdb_sample``
    (same subsets, layout and padding) at ``sizes.lm_entities`` entities."""
    import dataclasses

    from metaocl.config import load_sweep

    config = load_sweep(LM_SWEEP, seeds=1, overrides=["train.stage1_seed=0"]).trials()[0].config
    data = dataclasses.replace(config.data, source="cvdb_sample", n_entities=sizes.lm_entities, path="")
    return dataclasses.replace(config, data=data)


def lm_data(sizes: Sizes, seed: int):
    """(dataset with every eval split at full size, eval names, tokenizer, the sweep's trial config)."""
    from metaocl.data.qa import build_lm_dataset
    from metaocl.engine.lm_models import train_builtin_tokenizer

    config = lm_sweep_config(sizes)
    dataset = build_lm_dataset(config.data, seed)
    texts = [t for name in dataset for t in dataset[name]["text"]]
    tokenizer = train_builtin_tokenizer("causal", texts, sizes.lm_vocab)
    eval_names = [n for n in dataset if not n.startswith("train_") and len(dataset[n])]
    return dataset, eval_names, tokenizer, config


def pythia_model(sizes: Sizes, vocab: int, device: str):
    """A Pythia architecture with random weights, built directly on ``device`` (fp32 master weights)."""
    import torch
    from transformers import GPTNeoXForCausalLM

    from metaocl.engine.lm_models import pythia_config

    config = pythia_config(sizes.lm_model)
    if sizes.lm_shrink_vocab:
        config.vocab_size = -(-vocab // 64) * 64
    config.use_cache = True
    with torch.device(device):
        model = GPTNeoXForCausalLM(config)
    model.config.pad_token_id = model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 0
    return model


def _timed_load(model, device: str) -> tuple[float, object]:
    """Save ``model`` to a temporary folder and time loading it back onto ``device`` as a trial loads
    its model (``from_pretrained``, fp32 weights), moved to the device."""
    import tempfile

    from transformers import GPTNeoXForCausalLM

    with tempfile.TemporaryDirectory(prefix="metaocl-bench-model-") as d:
        model.save_pretrained(d)
        _sync(device)
        t0 = time.perf_counter()
        loaded = GPTNeoXForCausalLM.from_pretrained(d).to(device)
        _sync(device)
        return time.perf_counter() - t0, loaded


def _timed_checkpoint(model, optimizer, device: str) -> tuple[float, float, int]:
    """(seconds to write, seconds to read back, bytes) of one resumable checkpoint, ``torch.save`` of
    the model and optimizer state as the trial's reporter writes it."""
    import tempfile

    import torch

    with tempfile.TemporaryDirectory(prefix="metaocl-bench-ckpt-") as d:
        path = Path(d) / "state.pt"
        _sync(device)
        t0 = time.perf_counter()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
        save_s = time.perf_counter() - t0
        size = path.stat().st_size
        t0 = time.perf_counter()
        torch.load(path, map_location="cpu", weights_only=False)
        return save_s, time.perf_counter() - t0, size


def bench_lm(args, out: dict) -> None:
    import torch

    from metaocl.engine import lm_evaluate as ev
    from metaocl.engine import lm as engine
    from metaocl.sweep.plan import checkpoint_writes

    sizes, device = args.sizes, args.device
    cuda = device.startswith("cuda")
    t0 = time.perf_counter()
    dataset, eval_names, tok, config = lm_data(sizes, args.seed)
    train_set = engine.encode(dataset["train_1"], tok, is_seq2seq=False)
    n_stage1, n_stage2 = len(dataset["train_1"]), len(dataset["train_2"])
    block = config.train.block_size
    out["lm/data_s"] = time.perf_counter() - t0
    out.update({"lm/model": sizes.lm_model, "lm/stage1_datapoints": n_stage1, "lm/stage2_datapoints": n_stage2,
                "lm/tokens_per_datapoint": block, "lm/faithful_padding": config.train.faithful_padding,
                "lm/real_tokens_per_datapoint": sum(len(x) for x in train_set.ids) / len(train_set)})

    torch.manual_seed(args.seed)
    model = pythia_model(sizes, len(tok), "cpu")
    load_s, model = _timed_load(model, device)
    n_matmul = matmul_params(model)
    cfg = model.config
    flops_tok = train_flops_per_token(n_matmul, cfg.num_hidden_layers, cfg.hidden_size, block)
    out.update({"lm/model_load_s": load_s, "lm/matmul_params": n_matmul, "lm/train_flops_per_token": flops_tok})

    cfg_t = dataclasses.replace(config.train, batch_size=sizes.lm_batch_size)
    steps = engine.steps_per_epoch(n_stage1, cfg_t.batch_size)
    optimizer, scheduler = engine.make_optimizer(model, cfg_t, steps + sizes.warmup_steps)
    ctx = engine.StepContext(
        model=model, optimizer=optimizer, scheduler=scheduler, device=device, pad_id=tok.pad_token_id,
        decoder_start_id=None, batch_size=cfg_t.batch_size, micro_batch_size=cfg_t.batch_size, auto_micro=cuda,
        max_grad_norm=cfg_t.max_grad_norm, faithful_padding=cfg_t.faithful_padding, block_size=block,
        use_autocast=cuda,
    )
    model.train()
    for i in range(sizes.warmup_steps):  # CUDA context, cuBLAS heuristics, allocator: not the epoch's cost
        engine.train_step(ctx, train_set, [(i * 8 + j) % n_stage1 for j in range(cfg_t.batch_size)])
    _sync(device)
    stats = engine.train_one_epoch(ctx, train_set, torch.Generator().manual_seed(args.seed))
    train_s = n_stage1 / stats.examples_per_s
    peak = peak_flops(_device_name(device), args.peak_tflops)
    computed_tokens_per_s = stats.examples_per_s * block  # what the GPU computes: padding included
    out.update({"lm/micro_batch_size": ctx.micro_batch_size, "lm/train_epoch_s": train_s,
                "lm/train_tokens_per_s": computed_tokens_per_s, "lm/train_examples_per_s": stats.examples_per_s,
                "lm/mfu": mfu(computed_tokens_per_s, flops_tok, peak)})
    save_s, read_s, size = _timed_checkpoint(model, optimizer, device)
    # the sweep's cadence (train.checkpoint_minutes) on this device's measured epoch times
    n_checkpoints = sum(checkpoint_writes(config, [train_s, train_s * n_stage2 / n_stage1][: len(config.epochs)]))
    out.update({"lm/checkpoint_save_s": save_s, "lm/checkpoint_load_s": read_s, "lm/checkpoint_bytes": size,
                "lm/checkpoints_per_seed": n_checkpoints})
    if cuda:
        out["lm/max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    optimizer.zero_grad(set_to_none=True)
    del optimizer, scheduler, ctx
    if cuda:
        torch.cuda.empty_cache()

    eval_total = sum(len(dataset[n]) for n in eval_names)
    encs = {name: engine.encode(dataset[name].select(range(min(len(dataset[name]), sizes.lm_eval_cap))), tok,
                                is_seq2seq=False, with_prompts=True) for name in eval_names}
    kwargs = dict(max_new_tokens=config.eval.resolved_max_new_tokens(config.data.source), device=device,
                  is_seq2seq=False, batch_size=config.eval.batch_size, use_autocast=cuda)
    t1 = time.perf_counter()
    results = ev.evaluate_splits(model, tok, encs, **kwargs)  # what the LM runner does each epoch
    _sync(device)
    dt = time.perf_counter() - t1
    n_eval = sum(len(enc) for enc in encs.values())
    eval_s_per_epoch = dt / max(1, n_eval) * eval_total
    out.update({"lm/eval_engine_examples": n_eval,
                "lm/eval_engine_generated": sum(r.n_generated for r in results.values()),
                "lm/eval_engine_examples_per_s": n_eval / max(dt, 1e-9),
                "lm/eval_engine_epoch_s_extrapolated": eval_s_per_epoch})
    out["lm/eval_examples_per_epoch"] = eval_total
    out["lm/projection"] = projection_line("lm", project_lm(train_s, n_stage1, n_stage2, eval_s_per_epoch,
                                                           load_s=load_s, checkpoint_s=save_s,
                                                           checkpoints=n_checkpoints))
    if out["lm/mfu"]:
        out["lm/record"] = f"MEASURED_MFU[{_device_name(device)!r}] = {out['lm/mfu']:.3f}"
    del model
    if cuda:
        torch.cuda.empty_cache()


def bench_set_inclusion(args, out: dict) -> None:
    import torch

    import dataclasses

    from metaocl.config import load_sweep
    from metaocl.configs.set_inclusion import GPTNeoXArch
    from metaocl.data.set_inclusion import generate, subsample
    from metaocl.engine import set_inclusion as engine

    sizes, device = args.sizes, args.device
    paper = load_sweep("set_inclusion").trials()[0].config  # what the sweep runs (vocabulary, optimizer, eval cap)
    data = generate(dataclasses.replace(paper.data, n_variables=sizes.si_variables), args.seed)
    tok = engine.build_tokenizer(data.vocab)
    torch.manual_seed(args.seed)
    arch = paper.model if sizes.si_arch is None else GPTNeoXArch(**sizes.si_arch)
    model = engine.build_model(arch, tok.get_vocab_size()).to(device)
    cfg_t, cfg_e = dataclasses.replace(paper.train, batch_size=sizes.si_batch_size), paper.eval
    eval_sets = {s: engine.EvalSet.from_questions(tok, subsample(qs, cfg_e.max_samples, args.seed))
                 for s, qs in data.test_qa.items() if qs}
    stage_data = {s: engine.encode(tok, data.stage_examples(s)).to(device) for s in (1, 2)}
    n_matmul = matmul_params(model)
    seq = float((stage_data[1] != 0).sum(1).float().mean())
    flops_tok = train_flops_per_token(n_matmul, arch.num_hidden_layers, arch.hidden_size, seq)
    peak = peak_flops(_device_name(device), args.peak_tflops)

    generator = torch.Generator().manual_seed(args.seed)
    epoch_s = {}
    for stage, batch in stage_data.items():
        opt, sched = engine.make_optimizer(model, cfg_t, cfg_t.lr, 1)
        warm = batch[: sizes.warmup_steps * cfg_t.batch_size]
        engine.train_one_epoch(model, warm, opt, sched, cfg_t, cfg_t.batch_size, generator)
        _sync(device)
        t0 = time.perf_counter()
        engine.train_one_epoch(model, batch, opt, sched, cfg_t, cfg_t.batch_size, generator)
        _sync(device)
        epoch_s[stage] = time.perf_counter() - t0
    tokens = int((stage_data[1] != 0).sum())
    t0 = time.perf_counter()
    engine.evaluate(model, eval_sets, tok, cfg_e, device)
    _sync(device)
    eval_s = time.perf_counter() - t0
    n_eval = sum(len(es.labels) for es in eval_sets.values())
    steps1 = math.ceil(len(stage_data[1]) / cfg_t.batch_size)
    out.update({
        "si/stage1_examples": len(stage_data[1]), "si/stage2_examples": len(stage_data[2]), "si/eval_examples": n_eval,
        "si/vocab": tok.get_vocab_size(),
        "si/matmul_params": n_matmul, "si/stage1_epoch_s": epoch_s[1], "si/stage2_epoch_s": epoch_s[2],
        "si/train_steps_per_s": steps1 / epoch_s[1], "si/train_examples_per_s": len(stage_data[1]) / epoch_s[1],
        "si/train_tokens_per_s": tokens / epoch_s[1], "si/mfu": mfu(tokens / epoch_s[1], flops_tok, peak),
        "si/eval_s": eval_s, "si/eval_examples_per_s": n_eval / max(eval_s, 1e-9),
        "si/projection": projection_line("set_inclusion", project_set_inclusion(epoch_s[1], epoch_s[2], eval_s)),
    })
    del model


# ------------------------------------------------------------------------------------------------
# MNIST: ConvNeXt V2 Tiny training and inference images/s on the task's image shape
# ------------------------------------------------------------------------------------------------
def bench_mnist(args, out: dict) -> None:
    import torch

    from metaocl.configs.mnist import MNIST_GROUPS, MnistConfig
    from metaocl.data.mnist_grid import GridLayout
    from metaocl.engine.vision import VisionTrainer, build_model

    sizes, device = args.sizes, args.device
    if device.startswith("cuda"):  # the MNIST runner enables TF32 (metaocl/experiments/mnist.py); the LM engine does not
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = MnistConfig()
    d = cfg.data
    layout = GridLayout(d.grid_size, sizes.mnist_digit_size, d.border, d.tag_square)
    shape = (sizes.mnist_batch_size, 1, layout.height, layout.width)
    torch.manual_seed(args.seed)
    model = build_model(sizes.mnist_model, layout.n_cells, drop_path_rate=cfg.model.drop_path_rate)
    trainer = VisionTrainer(model, layout.n_cells, device, steps=cfg.train.steps, lr=cfg.train.lr,
                            min_lr=cfg.train.min_lr, weight_decay=cfg.train.weight_decay,
                            warmup_steps=cfg.train.warmup_steps, bf16=cfg.train.bf16,
                            channels_last=cfg.train.channels_last, compile=cfg.train.compile)
    images = torch.rand(shape, device=device)
    targets = torch.randint(0, 3, (shape[0], layout.n_cells), device=device)
    for _ in range(sizes.warmup_steps):
        trainer.train_step(images, targets)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(sizes.mnist_steps):
        loss = trainer.train_step(images, targets)
    float(loss)
    _sync(device)
    train_ips = sizes.mnist_steps * shape[0] / (time.perf_counter() - t0)
    trainer.predict(images)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(sizes.mnist_steps):
        pred = trainer.predict(images)
    pred.sum().item()
    eval_ips = sizes.mnist_steps * shape[0] / (time.perf_counter() - t0)
    eval_images = mnist_eval_images(cfg.train.steps, cfg.train.eval_every, len(MNIST_GROUPS), cfg.eval.batches,
                                    cfg.eval.batch_size or cfg.train.batch_size)
    seconds = project_mnist(train_ips, cfg.train.steps, cfg.train.batch_size, eval_images, eval_ips)
    out.update({
        "mnist/model": sizes.mnist_model, "mnist/image_shape": "x".join(map(str, shape[1:])),
        "mnist/batch_size": shape[0], "mnist/params": sum(p.numel() for p in model.parameters()),
        "mnist/train_images_per_s": train_ips, "mnist/train_steps_per_s": train_ips / shape[0],
        "mnist/eval_images_per_s": eval_ips, "mnist/run_steps": cfg.train.steps,
        "mnist/run_batch_size": cfg.train.batch_size, "mnist/run_eval_images": eval_images,
        "mnist/projection": projection_line("mnist", seconds),
    })


# ------------------------------------------------------------------------------------------------
# Dry run: sizes, FLOPs and the physical limit, without running a model
# ------------------------------------------------------------------------------------------------
def dry_run(args, out: dict) -> None:
    import torch
    from transformers import GPTNeoXForCausalLM

    from metaocl.engine.lm_models import pythia_config

    sizes = args.sizes
    peak = peak_flops(_device_name(args.device), args.peak_tflops) or peak_flops("H100")
    out["dry/peak_tflops"] = peak / 1e12
    if "lm" in args.experiments:
        from metaocl.sweep import plan

        dataset, eval_names, tok, config = lm_data(sizes, args.seed)
        lengths = [len(x) + 1 for x in tok(list(dataset["train_1"]["text"]))["input_ids"]]
        with torch.device("meta"):
            model = GPTNeoXForCausalLM(pythia_config(sizes.lm_model))
        n = matmul_params(model)
        c = model.config
        block = config.train.block_size
        n1, n2 = len(dataset["train_1"]), len(dataset["train_2"])
        flops = plan.lm_train_flops(n, c.num_hidden_layers, c.hidden_size, block, [n1, n2], LM_EPOCHS)
        n_eval = sum(len(dataset[x]) for x in eval_names)
        # every epoch: a teacher-forced pass over each eval datapoint, plus at most 8 generated tokens
        eval_flops = plan.eval_flops(n, n_eval, plan.DYNAMIC_TOKENS, config.eval.resolved_max_new_tokens("cvdb"),
                                     sum(LM_EPOCHS))
        out.update({
            "dry/lm_model": sizes.lm_model, "dry/lm_matmul_params": n,
            "dry/lm_stage1_datapoints": n1, "dry/lm_stage2_datapoints": n2,
            "dry/lm_tokens_per_datapoint": block,
            "dry/lm_eval_splits": len(eval_names),
            "dry/lm_eval_examples_per_epoch": n_eval,
            "dry/lm_bpe_tokens_per_datapoint": sum(lengths) / len(lengths),
            "dry/lm_training_flops_per_seed": flops,
            "dry/lm_training_limit": fmt_duration(flops / (args.assumed_mfu * peak)),
            "dry/lm_eval_flops_per_seed_max": eval_flops,
            "dry/lm_eval_limit": fmt_duration(eval_flops / (args.assumed_mfu * peak)),
        })


# ------------------------------------------------------------------------------------------------
def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


def _print(values: dict) -> None:
    for k, v in values.items():
        if isinstance(v, dict):
            print(f"  {k}: " + "  ".join(f"{kk}={_fmt(vv)}" for kk, vv in v.items()))
        else:
            print(f"  {k}: {_fmt(v)}")
    sys.stdout.flush()


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads)
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
    out: dict = {"device": _device_name(args.device), "torch": torch.__version__, "tiny": args.tiny,
                 "peak_tflops": (peak_flops(_device_name(args.device), args.peak_tflops) or 0) / 1e12 or None}
    print("[setup]")
    _print(out)
    if args.dry_run:
        dry_run(args, out)
        print("[dry-run]")
        _print({k: v for k, v in out.items() if k.startswith("dry/")})
        return out
    runners = {"lm": bench_lm, "set_inclusion": bench_set_inclusion, "mnist": bench_mnist}
    prefixes = {"lm": "lm/", "set_inclusion": "si/", "mnist": "mnist/"}
    for name in args.experiments:
        t0 = time.perf_counter()
        runners[name](args, out)
        out[f"{prefixes[name]}bench_s"] = time.perf_counter() - t0
        print(f"[{name}]")
        _print({k: v for k, v in out.items() if k.startswith(prefixes[name]) and not k.endswith("projection")})
    print("[projection per seed]")
    for name in args.experiments:
        line = out[f"{prefixes[name]}projection"]
        print(f"  {name}: projected {line['projected']} | paper {line['paper']} | "
              f"{line['speedup_vs_paper']:.3g}x the paper | goal {line['goal_h100']} | meets goal: {line['meets_goal']}")
    if out.get("lm/record"):
        print(f"record: {out['lm/record']}  (metaocl/sweep/plan.py: the plan's GPU-hours on this GPU)")
    return out


if __name__ == "__main__":
    main()
