"""One set-inclusion epoch: steps/s and examples/s of our training loop and evaluation, beside HF Trainer.

Why: the paper's set-inclusion runs took about 3 GPU-hours per seed; the task's examples are tiny
(4-13 tokens), so per-step overhead, not arithmetic, decides the time. This script times
:mod:`metaocl.engine.set_inclusion` on the generated data (:func:`metaocl.data.set_inclusion.generate`)
and, as the baseline in the same process, an HF ``Trainer`` epoch on the same examples with the same
model, the same initial weights and the same optimizer (Adafactor with its relative-step defaults,
the paper's "defaults"; Trainer gets it through ``optimizers=`` with ``AdafactorSchedule``).
Both pad to the longest example and mask padding out of the loss.

Compared: training (one stage-1 epoch, then one stage-2 epoch) steps/s and examples/s of each, and
their ratio. Evaluation (accuracy on every subset's test questions, one forward pass per batch of
prompts) is ours only: the reference has no separate set-inclusion evaluator to compare with, so its
examples/s is printed alone.

Run::

    python bench/set_inclusion.py                    # 200 variables, a small GPT-NeoX, 1 thread
    python bench/set_inclusion.py --pythia-70m --variables 400
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SMALL_ARCH = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512)  # quickstart's


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variables", type=int, default=200, help="variables (paper: 8000)")
    p.add_argument("--batch-size", type=int, default=128, help="paper: 512")
    p.add_argument("--pythia-70m", action="store_true", help="the paper's architecture instead of the quickstart's small one")
    p.add_argument("--no-baseline", action="store_true", help="skip the HF Trainer epoch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.variables < 20:
        p.error("--variables: need >= 20 so that every subset has a variable")
    if args.batch_size < 1:
        p.error("--batch-size: must be >= 1")
    return args


def _setup(args):
    from metaocl.configs.set_inclusion import GPTNeoXArch, SetInclusionData, SetInclusionTrain
    from metaocl.data.set_inclusion import generate
    from metaocl.engine import set_inclusion as engine

    data = generate(SetInclusionData(n_variables=args.variables), args.seed)
    tok = engine.build_tokenizer(data.vocab)
    arch = GPTNeoXArch() if args.pythia_70m else GPTNeoXArch(**SMALL_ARCH)
    torch.manual_seed(args.seed)
    initial = engine.build_model(arch, tok.get_vocab_size())
    stages = {s: engine.encode(tok, data.stage_examples(s)) for s in (1, 2)}
    cfg_t = SetInclusionTrain(batch_size=args.batch_size)
    return data, tok, initial, stages, cfg_t


def run_ours(args, initial, stages, cfg_t) -> dict[int, float]:
    """Seconds of one epoch per stage with our loop (fresh optimizer per stage, as the runner)."""
    import copy

    from metaocl.engine import set_inclusion as engine

    model = copy.deepcopy(initial).to(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    seconds = {}
    for stage, data in stages.items():
        data = data.to(args.device)
        t0 = time.perf_counter()
        opt, sched = engine.make_optimizer(model, cfg_t, cfg_t.lr, -(-len(data) // cfg_t.batch_size))
        engine.train_one_epoch(model, data, opt, sched, cfg_t, cfg_t.batch_size, generator)
        seconds[stage] = time.perf_counter() - t0
    return seconds, model


def run_trainer(args, initial, stages, cfg_t, workdir: Path) -> dict[int, float]:
    """Seconds of one epoch per stage with HF Trainer on the same examples, model and optimizer."""
    import copy

    import datasets
    from transformers import Trainer, TrainingArguments
    from transformers.optimization import AdafactorSchedule
    from transformers.trainer_callback import PrinterCallback

    from metaocl.engine import set_inclusion as engine

    model = copy.deepcopy(initial)
    seconds = {}
    for stage, data in stages.items():
        t0 = time.perf_counter()
        labels = data.masked_fill(data == 0, -100)
        ds = datasets.Dataset.from_dict({"input_ids": data.tolist(), "attention_mask": (data != 0).long().tolist(),
                                         "labels": labels.tolist()})
        opt, sched = engine.make_optimizer(model, cfg_t, cfg_t.lr, -(-len(data) // cfg_t.batch_size))
        targs = TrainingArguments(
            output_dir=str(workdir / f"stage{stage}"), per_device_train_batch_size=cfg_t.batch_size, num_train_epochs=1,
            max_grad_norm=cfg_t.grad_clip, save_strategy="no", logging_strategy="no", report_to="none",
            disable_tqdm=True, seed=args.seed, use_cpu=args.device == "cpu", dataloader_pin_memory=False,
        )
        trainer = Trainer(model=model, args=targs, train_dataset=ds,
                          optimizers=(opt, sched if sched is not None else AdafactorSchedule(opt)))
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        seconds[stage] = time.perf_counter() - t0
    return seconds


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
    from metaocl.configs.set_inclusion import SetInclusionEval
    from metaocl.engine import set_inclusion as engine

    load_before = _load_avg()
    data, tok, initial, stages, cfg_t = _setup(args)
    n = {s: len(stages[s]) for s in stages}
    steps = {s: -(-n[s] // cfg_t.batch_size) for s in stages}
    ours_s, model = run_ours(args, initial, stages, cfg_t)
    eval_sets = {s: engine.EvalSet.from_questions(tok, qs) for s, qs in data.test_qa.items() if qs}
    n_eval = sum(len(es.labels) for es in eval_sets.values())
    t0 = time.perf_counter()
    engine.evaluate(model, eval_sets, tok, SetInclusionEval(), args.device)
    eval_s = time.perf_counter() - t0

    out = {"variables": args.variables, "arch": "pythia-70m" if args.pythia_70m else "small", "batch_size": cfg_t.batch_size,
           "threads": args.threads, "stage1_examples": n[1], "stage2_examples": n[2], "eval_examples": n_eval}
    for s in stages:
        out[f"ours_stage{s}_steps_per_s"] = steps[s] / ours_s[s]
        out[f"ours_stage{s}_examples_per_s"] = n[s] / ours_s[s]
    out["ours_eval_examples_per_s"] = n_eval / max(eval_s, 1e-9)
    if not args.no_baseline:
        with tempfile.TemporaryDirectory(prefix="bench_si_") as tmp:
            ref_s = run_trainer(args, initial, stages, cfg_t, Path(tmp))
        for s in stages:
            out[f"trainer_stage{s}_steps_per_s"] = steps[s] / ref_s[s]
            out[f"trainer_stage{s}_examples_per_s"] = n[s] / ref_s[s]
        out["speedup_train"] = sum(ref_s.values()) / sum(ours_s.values())
    out["load_avg_before"], out["load_avg_after"] = load_before, _load_avg()
    print("[set_inclusion]")
    for k, v in out.items():
        print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
    return out


def _load_avg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


if __name__ == "__main__":
    main()
