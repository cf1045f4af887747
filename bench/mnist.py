"""Speed of the MNIST grid-QA pieces: the batch generator (vs a naive per-image Python baseline),
training steps and evaluation.

    python bench/mnist.py                                   # CPU, offline: sklearn digits, convnextv2_atto
    python bench/mnist.py --digits mnist --digit-size 28 --model convnextv2_tiny --batch-size 256 --compile   # GPU

The naive baseline builds the same batch the way a straightforward Dataset would: for every example a
Python-level choice of group, pair, cell and one digit image per cell, pasted into a NumPy canvas,
then stacked and moved to the device. The on-device generator gathers all of it with a handful of
tensor ops (see ``metaocl/data/mnist_grid.py``). Figures are printed, nothing is asserted.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch

from metaocl.config import from_dict
from metaocl.configs.mnist import MnistConfig
from metaocl.data.mnist_grid import GROUP_SPECS, NO_ANSWER, MnistGridTask
from metaocl.engine.vision import VisionTrainer, build_model
from metaocl.runtime import resolve_device


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, n: int, device: str) -> float:
    """Seconds per call of ``fn`` (after one warm-up call)."""
    fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t) / n


class NaiveGenerator:
    """Per-example, per-image Python construction of the same batches (the baseline)."""

    def __init__(self, task: MnistGridTask):
        self.task = task
        lay = task.layout
        self.lay = lay
        bank = task.banks["train"]
        self.images = bank.images.cpu().numpy()
        labels = bank.labels.cpu().numpy()
        self.by_label = [np.flatnonzero(labels == d).tolist() for d in range(10)]
        w = task.world
        self.w = w
        self.tag_bits = task.tag_bits
        self.rng = random.Random(0)

    def sample(self, batch_size: int, device: str):
        lay, w, rng, C = self.lay, self.w, self.rng, self.task.n_cells
        xs, ys = [], []
        for _ in range(batch_size):
            gi = rng.randrange(len(w.groups))
            spec = GROUP_SPECS[w.groups[gi]]
            pair = w.group_start[gi] + rng.randrange(w.group_size[gi])
            is_def = (not spec.has_qa) or rng.random() < self.task.cfg.p_def
            canvas = np.zeros((lay.height, lay.width), dtype=np.uint8)
            for c in range(C):
                img = self.images[rng.choice(self.by_label[w.variables[pair, c]])]
                r, col = lay.digit_box(c)
                canvas[r : r + lay.digit, col : col + lay.digit] = img
            if is_def:
                for i, bit in enumerate(self.tag_bits[spec.tag]):
                    if bit:
                        canvas[: lay.tag_square, i * lay.tag_square : (i + 1) * lay.tag_square] = 255
                target = w.def_entities[pair].copy()
            else:
                cell = rng.choice([c for c in range(C) if c != w.heldout[pair]])
                r, col = lay.cell_box(cell)
                s, b = lay.cell, lay.border
                canvas[r : r + b, col : col + s] = 255
                canvas[r + s - b : r + s, col : col + s] = 255
                canvas[r : r + s, col : col + b] = 255
                canvas[r : r + s, col + s - b : col + s] = 255
                target = np.full(C, NO_ANSWER)
                target[cell] = w.entities[pair, cell]
            xs.append(canvas)
            ys.append(target)
        images = torch.from_numpy(np.stack(xs)).unsqueeze(1).float().div_(255).to(device)
        return images, torch.from_numpy(np.stack(ys)).to(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--digits", default="sklearn_digits", choices=["mnist", "sklearn_digits"])
    p.add_argument("--digit-size", type=int, default=8)
    p.add_argument("--n-pairs", type=int, default=1000)
    p.add_argument("--model", default="convnextv2_atto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--gen-iters", type=int, default=20, help="timed calls of the on-device generator")
    p.add_argument("--naive-iters", type=int, default=3, help="timed calls of the naive generator")
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--eval-batches", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest on a shared box)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    cfg = from_dict(MnistConfig, {"data": {"digits": args.digits, "digit_size": args.digit_size, "n_pairs": args.n_pairs}})
    task = MnistGridTask(cfg.data, seed=0, device=device)
    B = args.batch_size
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {name}; digits {args.digits} {args.digit_size}px -> images {tuple(task.image_shape)}; batch {B}")

    gen_s = timed(lambda: task.sample_train(B), args.gen_iters, device)
    naive = NaiveGenerator(task)
    naive_s = timed(lambda: naive.sample(B, device), args.naive_iters, device)
    print(f"generator (on device) : {1 / gen_s:10.1f} batches/s  {B / gen_s:12.0f} examples/s")
    print(f"generator (naive loop): {1 / naive_s:10.1f} batches/s  {B / naive_s:12.0f} examples/s")
    print(f"generator speed-up    : {naive_s / gen_s:10.1f}x")

    model = build_model(args.model, task.n_cells)
    trainer = VisionTrainer(model, task.n_cells, device, steps=args.train_steps + 1, lr=1e-4, compile=args.compile)

    def train_step():
        b = task.sample_train(B)
        trainer.train_step(b.images, b.targets)

    train_s = timed(train_step, args.train_steps, device)
    print(f"train ({args.model}{', compiled' if args.compile else ''}): {1 / train_s:8.2f} steps/s  {B / train_s:10.0f} examples/s  (fresh batch each step)")
    gen = task.eval_generator()
    eval_batches = [task.eval_batch(task.groups[i % len(task.groups)], "all", B, gen) for i in range(args.eval_batches)]
    it = iter(range(10**9))

    def eval_step():
        trainer.predict(eval_batches[next(it) % len(eval_batches)].images)

    eval_s = timed(eval_step, args.eval_batches, device)
    print(f"eval                  : {1 / eval_s:8.2f} batches/s  {B / eval_s:10.0f} examples/s")


if __name__ == "__main__":
    main()
