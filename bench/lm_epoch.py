"""One LM epoch, our engine against the reference way of doing it, in the same process.

Why: the paper's reference implementation finetuned with Hugging Face ``Trainer`` (every datapoint
padded to 48 tokens with EOS, loss on the padding, Adafactor) and measured exact match through a
``text-generation`` pipeline (greedy, at most 8 new tokens); called without ``batch_size`` a
pipeline takes one prompt at a time (``--pipeline-batch-size`` changes that). Our engine
(:mod:`metaocl.engine.lm`, :mod:`metaocl.engine.lm_evaluate`) pads dynamically and computes the same
exact match from one teacher-forced pass, generating only where greedy decoding leaves the trained
continuation (the continuations of every split in one pooled, left-padded call: ``evaluate_splits``,
as the LM runner calls it). This script measures what that buys, on the same work:

- the same data: :func:`metaocl.data.qa.build_lm_dataset` on the generated ``cvdb_sample`` source,
  two-stage layout; the epoch is one pass over ``train_1`` (stage 1) then evaluation on *every*
  eval split;
- the same model: the builtin ``tiny-gpt-neox`` architecture with random weights and its BPE
  tokenizer, saved once to a temp folder; both sides load that folder (same initial weights);
- the same optimisation settings: Adafactor, lr 5e-5, linear decay to 0 over the epoch, grad clip
  1.0, effective batch ``--batch-size`` (reference: ``--batch-size/2`` x 2 accumulation steps, as
  the paper's 128 x 2).

What is compared:

1. Time, end to end per side = tokenization + one training epoch + evaluation of every eval split
   (dataset building and the model folder are shared and timed apart). ``examples/s`` counts the
   training datapoints plus the evaluated datapoints of the epoch, over that time. The training
   and evaluation halves are also printed apart (training examples/s, eval examples/s).
2. Exact match: the two *training* runs differ on purpose (the reference has loss on padding), so
   the models differ after the epoch. EM is compared between the two *evaluators on the same model
   state*: the reference's trained model, evaluated by the pipeline (timed, part of the reference
   epoch) and by our evaluator (untimed). Both EM per split and every normalized prediction must
   agree: ``em_identical`` / ``predictions_identical``.

Run::

    python bench/lm_epoch.py                      # 100 entities, 1 thread (see bench/RESULTS.md)
    python bench/lm_epoch.py --pretrain-epochs 20 --repeats 2 --pipeline-batch-size 32

Prints ``key: value`` lines (the last block is the summary); exits 1 when EM differs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Offline: nothing here needs the hub, and a loaded machine should not wait for timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--entities", type=int, default=100, help="entities of the cvdb_sample dataset (paper: 4000)")
    p.add_argument("--max-eval-per-split", type=int, default=0, help="cap every eval split (0 = all rows)")
    p.add_argument("--batch-size", type=int, default=256, help="effective batch (paper: 256)")
    p.add_argument("--block-size", type=int, default=48, help="reference padding length (paper CVDB: 48)")
    p.add_argument("--max-new-tokens", type=int, default=8, help="greedy decoding budget (paper CVDB: 8)")
    p.add_argument("--pipeline-batch-size", type=int, default=1,
                   help="prompts per pipeline call (1 = the pipeline's default, one prompt at a time)")
    p.add_argument("--eval-batch-size", type=int, default=128, help="our evaluator's batch (config default)")
    p.add_argument("--faithful-padding", action="store_true",
                   help="run our engine with the reference's padding too (train.faithful_padding: true)")
    p.add_argument("--pretrain-epochs", type=int, default=0,
                   help="untimed: train the initial model this many epochs on train_1 first (lr --pretrain-lr), "
                        "so that EM is not 0 everywhere and greedy outputs follow the trained text more often")
    p.add_argument("--pretrain-lr", type=float, default=3e-3)
    p.add_argument("--repeats", type=int, default=1,
                   help="run both sides this many times, alternating; report each side's fastest run")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both sides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.entities < 20:
        p.error("--entities: need >= 20 so that every subset has an entity")
    if args.batch_size < 2 or args.batch_size % 2:
        p.error("--batch-size: must be an even number >= 2 (the reference runs it as 2 accumulation steps)")
    return args


# ------------------------------------------------------------------------------------------------
# Shared set-up: data and the initial model
# ------------------------------------------------------------------------------------------------
def build_dataset(args):
    from metaocl.configs.lm_data import LMDataConfig
    from metaocl.data.qa import build_lm_dataset

    cfg = LMDataConfig(source="cvdb_sample", n_entities=args.entities, stages="two_stage",
                       max_eval_per_split=args.max_eval_per_split)
    return build_lm_dataset(cfg, args.seed)


def eval_split_names(dataset) -> list[str]:
    return [name for name in dataset if not name.startswith("train_") and len(dataset[name])]


def save_initial_model(dataset, folder: Path, seed: int, pretrain_epochs: int = 0, pretrain_lr: float = 3e-3) -> None:
    """The builtin tiny GPT-NeoX (random weights) and its tokenizer, saved like a hub model;
    optionally pre-trained with our engine (untimed, AdamW, batch 32) so the bench starts from a
    model that has partly learned its training data."""
    from metaocl.configs.lm import TrainConfig
    from metaocl.engine import lm as engine
    from metaocl.engine.lm_models import build_builtin

    torch.manual_seed(seed)
    texts = [t for name in dataset for t in dataset[name]["text"]]
    loaded = build_builtin("tiny-gpt-neox", texts)
    if pretrain_epochs > 0:
        cfg = TrainConfig(batch_size=32, optimizer="adamw", lr=pretrain_lr, lr_schedule="constant")
        train_set = engine.encode(dataset["train_1"], loaded.tokenizer, is_seq2seq=False)
        opt, sched = engine.make_optimizer(loaded.model, cfg, 1)
        ctx = engine.StepContext(model=loaded.model, optimizer=opt, scheduler=sched, device="cpu",
                                 pad_id=loaded.pad_id, decoder_start_id=None, batch_size=32, micro_batch_size=32,
                                 auto_micro=False, max_grad_norm=1.0, faithful_padding=False, block_size=48,
                                 use_autocast=False)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(pretrain_epochs):
            engine.train_one_epoch(ctx, train_set, generator)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)


@dataclass
class SideResult:
    """One side's epoch: seconds per phase, counts, EM and predictions per eval split."""

    train_s: float
    eval_s: float
    n_train: int
    n_eval: int
    em: dict[str, float] = field(default_factory=dict)
    predictions: dict[str, list[str]] = field(default_factory=dict)
    model: object = None
    tokenizer: object = None

    @property
    def total_s(self) -> float:
        return self.train_s + self.eval_s

    @property
    def examples_per_s(self) -> float:
        return (self.n_train + self.n_eval) / max(self.total_s, 1e-9)


# ------------------------------------------------------------------------------------------------
# Ours: metaocl.engine.lm + metaocl.engine.lm_evaluate, wired as metaocl.experiments.lm wires them
# ------------------------------------------------------------------------------------------------
def run_ours(folder: Path, dataset, args) -> SideResult:
    from metaocl.configs.lm import TrainConfig
    from metaocl.engine import lm as engine
    from metaocl.engine.lm_models import load_pretrained

    torch.manual_seed(args.seed)
    loaded = load_pretrained(str(folder), kind="causal")
    model, tok = loaded.model.to(args.device), loaded.tokenizer
    cfg_t = TrainConfig(batch_size=args.batch_size, faithful_padding=args.faithful_padding, block_size=args.block_size)
    names = eval_split_names(dataset)

    t0 = time.perf_counter()
    train_set = engine.encode(dataset["train_1"], tok, is_seq2seq=False)
    total_steps = engine.steps_per_epoch(len(train_set), cfg_t.batch_size)
    optimizer, scheduler = engine.make_optimizer(model, cfg_t, total_steps)
    ctx = engine.StepContext(
        model=model, optimizer=optimizer, scheduler=scheduler, device=args.device, pad_id=loaded.pad_id,
        decoder_start_id=None, batch_size=cfg_t.batch_size, micro_batch_size=cfg_t.batch_size, auto_micro=False,
        max_grad_norm=cfg_t.max_grad_norm, faithful_padding=cfg_t.faithful_padding, block_size=cfg_t.block_size,
        use_autocast=False,
    )
    engine.train_one_epoch(ctx, train_set, torch.Generator().manual_seed(args.seed))
    t1 = time.perf_counter()
    result = SideResult(train_s=t1 - t0, eval_s=0.0, n_train=len(train_set), n_eval=0, model=model, tokenizer=tok)
    encs = {name: engine.encode(dataset[name], tok, is_seq2seq=False, with_prompts=True) for name in names}
    for name, (em, preds) in evaluate_all(model, tok, encs, args).items():
        result.em[name], result.predictions[name] = em, preds
        result.n_eval += len(encs[name])
    result.eval_s = time.perf_counter() - t1
    return result


def evaluate_all(model, tok, encs: dict, args) -> dict[str, tuple[float, list[str]]]:
    """Our evaluator on every split, as the LM runner calls it (one ``evaluate_splits``):
    split -> (EM, predictions)."""
    from metaocl.engine import lm_evaluate as ev

    results = ev.evaluate_splits(model, tok, encs, max_new_tokens=args.max_new_tokens, device=args.device,
                                 is_seq2seq=False, batch_size=args.eval_batch_size)
    return {name: (r.em, r.predictions) for name, r in results.items()}


def our_evaluator(model, tok, dataset, args) -> dict[str, tuple[float, list[str]]]:
    """Our evaluator on any model state (untimed): split -> (EM, predictions)."""
    from metaocl.engine import lm as engine

    encs = {name: engine.encode(dataset[name], tok, is_seq2seq=False, with_prompts=True)
            for name in eval_split_names(dataset)}
    return evaluate_all(model, tok, encs, args)


# ------------------------------------------------------------------------------------------------
# The reference way: HF Trainer on EOS-padded 48-token blocks, text-generation pipeline for EM
# ------------------------------------------------------------------------------------------------
def run_reference(folder: Path, dataset, args, workdir: Path) -> SideResult:
    from transformers import (AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments,
                              default_data_collator, pipeline)
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    from metaocl.engine.lm_evaluate import exact_match

    hf_logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = tok.eos_token  # Pythia has no pad token; the reference padded with EOS

    t0 = time.perf_counter()

    def tokenize(batch):
        enc = tok(batch["text"], padding="max_length", max_length=args.block_size)
        enc["labels"] = [list(ids) for ids in enc["input_ids"]]  # loss on the padding too
        return enc

    train_split = dataset["train_1"]
    train_ds = train_split.map(tokenize, batched=True, remove_columns=train_split.column_names)
    too_long = max(len(ids) for ids in train_ds["input_ids"])
    if too_long > args.block_size:
        raise SystemExit(f"--block-size: a datapoint has {too_long} tokens > {args.block_size}")
    targs = TrainingArguments(
        output_dir=str(workdir / "trainer"), per_device_train_batch_size=args.batch_size // 2,
        gradient_accumulation_steps=2, num_train_epochs=1, optim="adafactor", learning_rate=5e-5,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none",
        disable_tqdm=True, seed=args.seed, use_cpu=args.device == "cpu", dataloader_pin_memory=False,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, data_collator=default_data_collator)
    trainer.remove_callback(PrinterCallback)  # no metrics dict on stdout
    trainer.train()
    t1 = time.perf_counter()

    model.eval()
    generator = pipeline("text-generation", model=model, tokenizer=tok, device=args.device)
    result = SideResult(train_s=t1 - t0, eval_s=0.0, n_train=len(train_ds), n_eval=0, model=model)
    for name in eval_split_names(dataset):
        split = dataset[name]
        outputs = generator(list(split["prompt"]), max_new_tokens=args.max_new_tokens, do_sample=False,
                            return_full_text=False, batch_size=args.pipeline_batch_size, pad_token_id=tok.eos_token_id)
        preds = [out[0]["generated_text"] for out in outputs]
        result.predictions[name] = preds
        result.em[name] = sum(exact_match(p, a) for p, a in zip(preds, split["answer"])) / len(split)
        result.n_eval += len(split)
    result.eval_s = time.perf_counter() - t1
    return result


# ------------------------------------------------------------------------------------------------
# Comparison
# ------------------------------------------------------------------------------------------------
def compare_evaluators(reference: SideResult, ours_on_reference_model: dict) -> tuple[bool, bool, list[str]]:
    """(EM identical on every split, every normalized prediction identical, splits that differ)."""
    from metaocl.engine.lm_evaluate import normalize_answer

    em_same, preds_same, differing = True, True, []
    for name, (em, preds) in ours_on_reference_model.items():
        same_preds = [normalize_answer(a) for a in preds] == [normalize_answer(b) for b in reference.predictions[name]]
        if abs(em - reference.em[name]) > 1e-12:
            em_same = False
            differing.append(name)
        elif not same_preds:
            differing.append(name)
        preds_same &= same_preds
    return em_same, preds_same, differing


def uptime_load() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    figures: dict[str, object] = {"load_avg_before": uptime_load(), "threads": args.threads, "device": args.device,
                                  "entities": args.entities, "pretrain_epochs": args.pretrain_epochs,
                                  "pipeline_batch_size": args.pipeline_batch_size,
                                  "repeats": args.repeats,
                                  "our_padding": "faithful" if args.faithful_padding else "dynamic"}
    with tempfile.TemporaryDirectory(prefix="bench_lm_epoch_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        dataset = build_dataset(args)
        save_initial_model(dataset, tmp / "model", args.seed, args.pretrain_epochs, args.pretrain_lr)
        figures["setup_s"] = time.perf_counter() - t0
        figures["train_examples"] = len(dataset["train_1"])
        figures["eval_splits"] = len(eval_split_names(dataset))
        figures["eval_examples"] = sum(len(dataset[n]) for n in eval_split_names(dataset))
        _print_block("setup", figures)

        ours = ref = None
        for _ in range(max(1, args.repeats)):  # alternate, keep each side's fastest run
            run = run_ours(tmp / "model", dataset, args)
            ours = run if ours is None or run.total_s < ours.total_s else ours
            run = run_reference(tmp / "model", dataset, args, tmp)
            ref = run if ref is None or run.total_s < ref.total_s else ref
        check = our_evaluator(ref.model, ours.tokenizer, dataset, args)
    em_same, preds_same, differing = compare_evaluators(ref, check)

    for label, side in (("ours", ours), ("reference", ref)):
        _print_block(label, {
            "train_s": side.train_s, "eval_s": side.eval_s, "total_s": side.total_s,
            "train_examples_per_s": side.n_train / max(side.train_s, 1e-9),
            "eval_examples_per_s": side.n_eval / max(side.eval_s, 1e-9),
            "examples_per_s": side.examples_per_s,
            "mean_em": sum(side.em.values()) / max(1, len(side.em)),
        })
    figures.update({
        "speedup_end_to_end": ref.total_s / max(ours.total_s, 1e-9),
        "speedup_train": ref.train_s / max(ours.train_s, 1e-9),
        "speedup_eval": ref.eval_s / max(ours.eval_s, 1e-9),
        "ours_examples_per_s": ours.examples_per_s,
        "reference_examples_per_s": ref.examples_per_s,
        "em_identical": em_same,
        "predictions_identical": preds_same,
        "splits_differing": ",".join(differing) or "-",
        "reference_mean_em": sum(ref.em.values()) / max(1, len(ref.em)),
        "load_avg_after": uptime_load(),
    })
    _print_block("summary", {k: figures[k] for k in (
        "speedup_end_to_end", "speedup_train", "speedup_eval", "ours_examples_per_s", "reference_examples_per_s",
        "em_identical", "predictions_identical", "splits_differing", "reference_mean_em",
        "load_avg_before", "load_avg_after")})
    return figures


def _print_block(title: str, values: dict) -> None:
    print(f"[{title}]")
    for k, v in values.items():
        print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
    sys.stdout.flush()


if __name__ == "__main__":
    out = main()
    sys.exit(0 if out["em_identical"] else 1)
