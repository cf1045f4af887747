"""Training loop and evaluation for grid-prediction vision models (the MNIST grid-QA experiment).

A timm image classifier with ``n_cells * 3`` outputs, read as one 3-way prediction (A, B, no answer)
per grid cell; the loss is the mean cross-entropy over all cells of all examples (for a QA example
the "no answer" cells count too: the paper's target is the whole grid).

Optimization follows the ConvNeXt V2 recipe as far as it applies to this task: AdamW with betas
(0.9, 0.999), decoupled weight decay on weights but not on norms, biases and GRN gamma/beta (every
parameter with fewer than 2 dimensions), linear warm-up from 0 to ``lr`` then cosine decay to
``min_lr``, no gradient clipping. On CUDA: bf16 autocast (fp32 master weights, fp32 loss),
channels_last activations, fused AdamW, optional ``torch.compile``. On CPU everything runs in fp32.

The loop never synchronizes with the GPU between evaluations: the running loss stays a device
tensor and is read once per evaluation, when throughput is also measured.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

N_CLASSES = 3  # A, B, no answer


def build_model(name: str, n_cells: int, in_chans: int = 1, pretrained: bool = False, drop_path_rate: float = 0.0) -> nn.Module:
    """A timm model with ``n_cells * 3`` logits, for ``in_chans``-channel images."""
    import timm

    from metaocl.config import ConfigError

    try:
        return timm.create_model(
            name, pretrained=pretrained, num_classes=n_cells * N_CLASSES, in_chans=in_chans, drop_path_rate=drop_path_rate
        )
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ConfigError(f"model.name: unknown timm model {name!r} (e.g. convnextv2_tiny, convnextv2_atto)") from None
        raise


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and conv kernels only (not norms, biases, GRN gamma/beta)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, total: int, warmup: int, min_ratio: float, cosine: bool) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based): linear warm-up over
    ``warmup`` steps (reaching 1 at step ``warmup - 1``), then cosine from 1 to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    if not cosine:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class VisionTrainer:
    """Owns model, optimizer and schedule; ``train_step`` and ``predict`` do the device-side work."""

    def __init__(
        self,
        model: nn.Module,
        n_cells: int,
        device: torch.device | str,
        *,
        steps: int,
        lr: float,
        min_lr: float = 0.0,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        cosine: bool = True,
        grad_clip: float = 0.0,
        bf16: bool = True,
        channels_last: bool = True,
        compile: bool = False,
    ):
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.n_cells = n_cells
        self.grad_clip = grad_clip
        self.memory_format = torch.channels_last if (cuda and channels_last) else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.forward = torch.compile(self.model) if compile else self.model
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if (cuda and bf16) else nullcontext
        self.optimizer = torch.optim.AdamW(param_groups(self.model, weight_decay), lr=lr, betas=betas, fused=cuda or None)
        ratio = min_lr / lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, steps, warmup_steps, ratio, cosine)
        )
        self.step = 0

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, n_cells, 3]`` logits (fp32) for ``[B, C, H, W]`` images."""
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        with self.autocast():
            out = self.forward(images)
        return out.float().view(len(images), self.n_cells, N_CLASSES)

    def loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.logits(images)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def train_step(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One optimizer step; returns the (detached, on-device) loss."""
        self.model.train()
        loss = self.loss(images, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss.detach()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, n_cells]`` predicted classes (0 A, 1 B, 2 no answer)."""
        self.model.eval()
        return self.logits(images).argmax(-1)


@torch.no_grad()
def score_batches(trainer: VisionTrainer, batches: Iterable[tuple[str, object]]) -> dict[str, float]:
    """Accuracy per key over ``(key, batch)`` pairs (a batch has ``images``, ``targets``, ``cell``).

    A QA example (``cell >= 0``) scores 1 when the prediction *at the asked cell* equals the answer
    (predicting "no answer" there is wrong); a definition (``cell == -1``) scores the fraction of its
    cells predicted right. Keys may repeat; their examples pool.
    """
    sums: dict[str, list[torch.Tensor]] = {}
    for key, batch in batches:
        pred = trainer.predict(batch.images)
        right = (pred == batch.targets).float()  # [B, C]
        at_cell = right.gather(1, batch.cell.clamp(min=0).unsqueeze(1)).squeeze(1)
        score = torch.where(batch.cell >= 0, at_cell, right.mean(1))
        acc = sums.setdefault(key, [torch.zeros((), device=score.device), 0])
        acc[0] = acc[0] + score.sum()
        acc[1] += len(score)
    return {k: float(v[0]) / v[1] for k, v in sums.items()}


def train_block(
    trainer: VisionTrainer,
    sample_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    n_steps: int,
    bar=None,
) -> dict[str, float]:
    """Train ``n_steps`` fresh batches (one block between evaluations; the trial's stages, evaluations
    and checkpoints are :mod:`metaocl.experiments.staged`'s). Returns ``train/loss`` (mean over the
    block) and ``perf/examples_per_s`` (batch generation included). The loss stays on the device
    until the end of the block: one host sync per block."""
    loss_sum = torch.zeros((), device=trainer.device)
    n_examples = 0
    t0 = time.perf_counter()
    for _ in range(n_steps):
        images, targets = sample_batch()
        loss_sum += trainer.train_step(images, targets)
        n_examples += len(images)
        if bar is not None:
            bar.update(1)
    mean_loss = float(loss_sum) / max(n_steps, 1)  # the one host sync of the block
    elapsed = time.perf_counter() - t0
    if bar is not None:
        bar.set_postfix(loss=f"{mean_loss:.4f}")
    return {"train/loss": mean_loss, "perf/examples_per_s": n_examples / max(elapsed, 1e-9)}
