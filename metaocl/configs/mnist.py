"""Config of the MNIST grid-QA experiment (paper section 3.2, appendix E).

What the paper fixes, and we follow:
- a 3x3 grid of digit images per variable, a 3x3 grid of A/B labels per entity (``data.grid_size``);
- digits drawn afresh every time, MNIST train split for training, test split for evaluation;
- define tags drawn as a row of black/white squares of 2 pixels (``data.tag_square``), highlight a
  1-pixel border (``data.border``);
- groups qd1consis, qd2incons, d1consis, d2consis, each *sampled* with equal probability
  (``data.group_sampling: uniform``); one cell per variable never asked in training QA;
- one-epoch training: a fresh batch every step; ConvNeXt V2 Tiny (28M parameters, random init),
  AdamW with linear warm-up and the "other optimization hyperparameters matching the original
  [ConvNeXt V2] paper": betas (0.9, 0.999), weight decay 0.05 (not on norms and biases), cosine
  decay to ``min_lr`` 1e-6, drop path 0.1 for Tiny.

What the paper's extraction lost (numbers of E.2 and the sizes of Figure 20), so these defaults are
*our* reconstruction and every sweep may override them: ``train.steps`` 50000, ``batch_size`` 256,
``lr`` 4e-4 (the recipe's 8e-4 per 1024 examples, square-root scaled), ``warmup_steps`` 2000,
``data.p_def`` 0.25, ``data.n_pairs`` 1000 (the sweep varies it). The ConvNeXt recipe's ImageNet
augmentations (mixup, cutmix, random crops, label smoothing) are *not* used: they would destroy the
grid, the tag row and the highlight that carry the task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from metaocl.config import ConfigError
from metaocl.experiments.staged import CHECKPOINT_MINUTES

#: The four entity groups of the paper's MNIST experiment, in reporting order.
MNIST_GROUPS = ("qd1consis", "qd2incons", "d1consis", "d2consis")


@dataclass
class MnistData:
    # Where digit images come from. `mnist`: torchvision MNIST in the data cache (`metaocl data
    # download mnist`); `sklearn_digits`: scikit-learn's bundled 8x8 digits (offline; CPU runs, tests).
    # A named source: a missing MNIST is an error, never silently replaced.
    digits: Literal["mnist", "sklearn_digits"] = "mnist"
    digit_size: int = 28  # side of one digit image in pixels (MNIST is 28; others are resized)
    grid_size: int = 3  # the grid is grid_size x grid_size cells
    n_pairs: int = 1000  # number of variable-entity pairs over all groups (Figure 20's x axis)
    # fractions of the pairs per group (sum to 1; split by largest remainder)
    qd1consis: float = 0.25
    qd2incons: float = 0.25
    d1consis: float = 0.25
    d2consis: float = 0.25
    # which group an example is about: `uniform` over groups (paper E.1 step 1, "each with equal
    # probability") or `proportional` to the number of pairs in the group
    group_sampling: Literal["uniform", "proportional"] = "uniform"
    # an example of a group with QA *and* definitions is a definition with this probability;
    # groups with definitions only (d1consis, d2consis) always give definitions
    p_def: float = 0.25
    hold_out_cell: bool = True  # one random cell per variable is never asked in training QA
    tag_square: int = 2  # side in pixels of one black/white square of the define-tag row
    border: int = 1  # width in pixels of the highlight border (and of the blank ring around digits)

    def validate(self) -> None:
        fracs = [getattr(self, g) for g in MNIST_GROUPS]
        if any(f < 0 for f in fracs):
            raise ConfigError("group fractions (qd1consis, qd2incons, d1consis, d2consis) must be >= 0")
        if abs(sum(fracs) - 1.0) > 1e-6:
            raise ConfigError(f"group fractions sum to {sum(fracs):.4f}, expected 1")
        if not 0.0 <= self.p_def <= 1.0:
            raise ConfigError(f"p_def must be in [0, 1], got {self.p_def}")
        if self.p_def == 1.0 and (self.qd1consis > 0 or self.qd2incons > 0):
            raise ConfigError("p_def 1 leaves the qd* groups without QA examples; use p_def < 1")
        if self.grid_size < 2:
            raise ConfigError("grid_size must be >= 2 (one cell per variable is held out)")
        if self.digit_size < 4:
            raise ConfigError("digit_size must be >= 4 pixels")
        if self.tag_square < 1 or self.border < 1:
            raise ConfigError("tag_square and border must be >= 1 pixel")
        if (self.grid_size * (self.digit_size + 2 * self.border)) // self.tag_square < 2:
            raise ConfigError("tag_square too large: the tag row needs at least 2 squares")
        if self.n_pairs < 1:
            raise ConfigError("n_pairs must be >= 1")
        if self.n_pairs > 10 ** (self.grid_size**2) // 2:
            raise ConfigError(f"n_pairs {self.n_pairs} is too many distinct {self.grid_size}x{self.grid_size} digit grids")
        counts = group_sizes(self)
        for g, f in zip(MNIST_GROUPS, fracs):
            if f > 0 and counts[g] < 1:
                raise ConfigError(f"n_pairs {self.n_pairs} gives group {g} no pairs; raise n_pairs or set {g}: 0")
        if self.qd2incons > 0 and counts["qd2incons"] < 2:
            raise ConfigError("qd2incons needs >= 2 pairs (its definitions show another pair's entity)")


def group_sizes(data: MnistData) -> dict[str, int]:
    """Pairs per group: ``n_pairs * fraction`` rounded by largest remainder (they sum to n_pairs)."""
    fracs = [getattr(data, g) for g in MNIST_GROUPS]
    total = sum(fracs) or 1.0
    exact = [data.n_pairs * f / total for f in fracs]
    counts = [int(e) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: data.n_pairs - sum(counts)]:
        counts[i] += 1
    return dict(zip(MNIST_GROUPS, counts))


@dataclass
class MnistModel:
    name: str = "convnextv2_tiny"  # any timm model name; convnextv2_atto/femto/pico for CPU runs
    pretrained: bool = False  # the paper trains from scratch (and weights are unreachable offline)
    drop_path_rate: float = 0.1  # stochastic depth; the ConvNeXt V2 recipe's value for Tiny

    def validate(self) -> None:
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError("drop_path_rate must be in [0, 1)")


@dataclass
class MnistTrain:
    steps: int = 50_000
    batch_size: int = 256
    lr: float = 4e-4  # peak learning rate, reached after warmup_steps
    min_lr: float = 1e-6  # end of the cosine decay (the ConvNeXt V2 recipe)
    weight_decay: float = 0.05  # AdamW, not applied to norms, biases and GRN parameters
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 2000  # linear warm-up from 0
    cosine: bool = True  # cosine decay after warm-up; false = constant lr after warm-up
    grad_clip: float = 0.0  # max global grad norm; 0 = off (the ConvNeXt recipe does not clip)
    eval_every: int = 1000  # steps between evaluations (and one at the last step)
    # Minutes of training between resumable checkpoints (model, optimizer, schedule, step, the task's
    # sampling generator, RNG states; a few hundred MB for ConvNeXt V2 Tiny), taken after an
    # evaluation's report; 0 = at every evaluation, null = none. Only Ray trials keep them.
    checkpoint_minutes: float | None = CHECKPOINT_MINUTES
    compile: bool = False  # torch.compile the model (CUDA; worth it for long runs)
    channels_last: bool = True  # channels_last memory format on CUDA
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("steps and batch_size must be >= 1")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError("need lr > 0 and 0 <= min_lr <= lr")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError("warmup_steps must be between 0 and steps")
        if self.eval_every < 1:
            raise ConfigError("eval_every must be >= 1")
        if self.checkpoint_minutes is not None and self.checkpoint_minutes < 0:
            raise ConfigError("checkpoint_minutes must be >= 0 (0 = every evaluation, null = off)")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("weight_decay and grad_clip must be >= 0")


@dataclass
class MnistEval:
    # Each evaluation renders, per group, `batches` batches of held-out-cell QA, of all-cell QA and of
    # definitions, from the test split, with a fixed seed (the same examples at every evaluation).
    batches: int = 4
    batch_size: int | None = None  # default: train.batch_size

    def validate(self) -> None:
        if self.batches < 1 or (self.batch_size is not None and self.batch_size < 1):
            raise ConfigError("eval.batches and eval.batch_size must be >= 1")


@dataclass
class MnistConfig:
    seed: int = 0
    device: str = "auto"
    data: MnistData = field(default_factory=MnistData)
    model: MnistModel = field(default_factory=MnistModel)
    train: MnistTrain = field(default_factory=MnistTrain)
    eval: MnistEval = field(default_factory=MnistEval)
