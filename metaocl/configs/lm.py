"""The config of one language-model finetuning trial (experiment kind ``lm``).

Defaults reproduce the paper's headline run (appendix B): Pythia-2.8B (the ``-deduped`` checkpoint,
as every config of the authors) finetuned two-stage on CVDB,
20 + 10 epochs, Adafactor with the Hugging Face Trainer defaults the authors kept (lr 5e-5,
``scale_parameter=False``, ``relative_step=False``, linear decay to 0, no warmup, weight decay 0,
grad-norm clip 1.0), effective batch 256, exact match of greedy decoding (8 new tokens for CVDB, 16
for T-REx) on every eval split after every epoch.

No heavy imports here: configs are validated before anything is built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from metaocl.config import ConfigError
from metaocl.configs.lm_data import LMDataConfig
from metaocl.experiments.staged import CHECKPOINT_MINUTES

# Epochs per stage when train.epochs is [] (paper appendix B; the three-stage split is ours).
PAPER_EPOCHS = {"single": [20], "two_stage": [20, 10], "three_stage": [20, 20, 10]}

# Tokens per datapoint with train.faithful_padding unless set (the reference's CVDB block size).
DEFAULT_BLOCK_SIZE = 48

# Named CPU-smoke models built in code (see metaocl.engine.lm_models.BUILTIN_MODELS).
BUILTIN_MODEL_NAMES = ("tiny-gpt-neox", "tiny-t5")


@dataclass
class ModelConfig:
    """Which model to finetune.

    ``name``: a Hugging Face hub name (``EleutherAI/pythia-2.8b-deduped``, ``t5-3b``), a local folder saved
    with ``save_pretrained``, or a named CPU-smoke model (``tiny-gpt-neox``, ``tiny-t5``: tiny
    architectures with random weights and a tokenizer trained on the dataset's text).
    """

    name: str = "EleutherAI/pythia-2.8b-deduped"  # the authors used the deduplicated Pythia checkpoints
    # auto: read from the model's config (encoder-decoder -> seq2seq).
    kind: Literal["auto", "causal", "seq2seq"] = "auto"
    # Same architecture, random weights (Pythia architectures are embedded: no hub needed for them).
    from_scratch: bool = False
    # Tokenizer name or folder when it differs from ``name`` (e.g. a from-scratch Pythia offline).
    tokenizer: str | None = None
    # auto: fp32 weights + bf16 autocast on CUDA (Trainer's bf16=True), fp32 on CPU.
    # float32: no autocast. bfloat16: bf16 weights (memory saver for 6.9B/12B; not the paper's).
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    gradient_checkpointing: bool = False


@dataclass
class TrainConfig:
    """Optimisation, per stage. A fresh optimizer and LR schedule per stage, as separate Trainer runs."""

    # Epochs per stage, in stage order, one entry per stage of data.stages; [] = the paper's:
    # single [20], two_stage [20, 10], three_stage [20, 20, 10] (see PAPER_EPOCHS).
    epochs: list[int] = field(default_factory=list)
    # Effective batch (datapoints per optimizer step); 0 = full batch (one step per epoch).
    batch_size: int = 256
    # The authors' gradient_accumulation_steps: each epoch is cut into slices of batch_size /
    # grad_accumulation rows (their per_device_train_batch_size) and the optimizer steps after every
    # grad_accumulation slices counted across epochs, as their Hugging Face Trainer (4.27-4.45) did:
    # an epoch's leftover slices join the next epoch's first step, and a stage stops after
    # epochs * max(1, slices_per_epoch // grad_accumulation) steps. 1 = a step per batch_size slice.
    grad_accumulation: int = 1
    # Datapoints per forward/backward; 0 = auto: the whole batch, halved on CUDA out-of-memory
    # (found at the first step, then kept) and made up by gradient accumulation.
    micro_batch_size: int = 0
    optimizer: Literal["adafactor", "adamw"] = "adafactor"
    lr: float = 5e-5
    lr_schedule: Literal["linear", "constant"] = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # false: dynamic padding, loss on real tokens + the terminating EOS (fast).
    # true: every datapoint padded to block_size with EOS and loss on the padding too (the reference).
    faithful_padding: bool = False
    # Tokens per datapoint with faithful_padding (paper: 48 CVDB, 64 T-REx, 72 in-context); another
    # value without faithful_padding is an error (it would do nothing).
    block_size: int = DEFAULT_BLOCK_SIZE
    # Seq2seq (T5) with faithful_padding: labels cut and padded with the pad id to this many tokens,
    # loss on the padding (the reference's label_block_size); 0 = the authors' 8 (CVDB) / 16 (T-REx).
    label_block_size: int = 0
    # Seed of the dataset and of stage 1; null = the trial seed. Several trials with the same
    # stage1_seed and different seeds are stage-2 seeds branching from one stage-1 run.
    stage1_seed: int | None = None
    # Folder where the end-of-stage-1 model is saved under a key of everything that determines it,
    # and reused by trials with the same key. Relative paths are under the data cache
    # ($METAOCL_DATA); on a cluster it must be shared storage (NFS) or every node trains its own.
    stage1_cache: str | None = None
    # Two-stage only: the stage-1 epoch whose model stage 2 starts from (null = the end of stage 1).
    # Stage 1 is still trained and evaluated to its end (its curve), stage 2's epochs follow epoch N.
    # "cptN": the stage-1 epoch of the authors' stage-2 run labelled cptN, worked out in the trial from
    # its stage-1 training rows and authors_save_each_epochs (their checkpoint names sorted as strings;
    # docs/fidelity.md "Where stage 2 starts"): for data whose row count is only known once built (T-REx).
    stage2_from_epoch: int | str | None = None
    # The authors' save_each_epochs (stage-1 checkpoints every N epochs), which labels their cptN runs;
    # used only by stage2_from_epoch: cptN.
    authors_save_each_epochs: int = 0
    # Every N optimizer steps, log the cosine between mean gradients on definitions and on QA
    # (grad/cos_def1_qa, grad/cos_def2_qa); 0 = off.
    grad_alignment_every: int = 0
    # authors: their statistic (per d1consis / d2consis variable, the cosine between its definition's
    # gradient and each of its own questions' gradient, one datapoint each, averaged over the pairs);
    # mean_gradient: the cosine of mean gradients of up to 64 definitions vs 64 training QA pairs.
    grad_alignment_statistic: Literal["authors", "mean_gradient"] = "authors"
    # authors statistic: probe at most this many variables per tag (first by variable); 0 = all (theirs).
    grad_alignment_variables: int = 0
    # Minutes of training between resumable checkpoints (model, optimizer, schedule, data order, RNG
    # states, position) inside a stage; every stage boundary is checkpointed too (weights and the next
    # stage's fresh start), the end of the trial is not. 0 = after every epoch; null = no checkpoints.
    # Only Ray trials keep them (``metaocl run`` ignores them). 30: a retry loses at most 30 minutes
    # (15 on average) while a checkpoint (Pythia-2.8B: ~11 GB) costs well under a minute to write;
    # see docs/gpu-clusters.md ("Checkpoints") and metaocl.experiments.staged.checkpoint_bytes.
    checkpoint_minutes: float | None = CHECKPOINT_MINUTES

    def validate(self) -> None:
        if any(e < 0 for e in self.epochs):
            raise ConfigError(f"epochs: expected epochs >= 0 per stage, got {self.epochs}")
        if self.batch_size < 0:
            raise ConfigError(f"batch_size: must be >= 1, or 0 for full batch; got {self.batch_size}")
        if self.grad_accumulation < 1:
            raise ConfigError(f"grad_accumulation: must be >= 1, got {self.grad_accumulation}")
        if self.grad_accumulation > 1 and (self.batch_size == 0 or self.batch_size % self.grad_accumulation):
            raise ConfigError(f"grad_accumulation: {self.grad_accumulation} must divide batch_size "
                              f"{self.batch_size} (the slice is batch_size / grad_accumulation rows)")
        if self.micro_batch_size < 0:
            raise ConfigError(f"micro_batch_size: must be >= 0 (0 = auto), got {self.micro_batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ConfigError("warmup_steps, weight_decay and max_grad_norm must be >= 0")
        if self.block_size < 2:
            raise ConfigError(f"block_size: must be >= 2, got {self.block_size}")
        if self.block_size != DEFAULT_BLOCK_SIZE and not self.faithful_padding:
            raise ConfigError(f"block_size: {self.block_size} has no effect without faithful_padding: true "
                              "(dynamic padding); set train.faithful_padding: true or drop block_size")
        if self.grad_alignment_variables < 0:
            raise ConfigError(f"grad_alignment_variables: must be >= 0 (0 = all), got {self.grad_alignment_variables}")
        if self.grad_alignment_every < 0:
            raise ConfigError(f"grad_alignment_every: must be >= 0, got {self.grad_alignment_every}")
        if self.checkpoint_minutes is not None and self.checkpoint_minutes < 0:
            raise ConfigError(f"checkpoint_minutes: must be >= 0 (0 = every epoch, null = off), "
                              f"got {self.checkpoint_minutes}")


@dataclass
class EvalConfig:
    """Exact match of greedy decoding on every eval split, after every epoch."""

    # Greedy decoding budget; 0 = the paper's: 8 for CVDB, 16 for T-REx.
    max_new_tokens: int = 0
    # Datapoints per evaluation forward pass (halved on CUDA out-of-memory).
    batch_size: int = 128
    # fast: one teacher-forced pass, generation only where greedy leaves the trained continuation
    # (identical results); generate: plain batched greedy `generate` (slow; for checking).
    method: Literal["fast", "generate"] = "fast"
    # Evaluate every N epochs (the last epoch of every stage is always evaluated).
    every: int = 1

    def validate(self) -> None:
        if self.max_new_tokens < 0 or self.batch_size < 1 or self.every < 1:
            raise ConfigError("max_new_tokens must be >= 0, batch_size >= 1 and every >= 1")

    def resolved_max_new_tokens(self, source: str) -> int:
        return self.max_new_tokens or (16 if source.startswith("trex") else 8)


@dataclass
class LMConfig:
    """One LM trial: data x model x optimisation x evaluation, and a seed."""

    seed: int = 0
    device: str = "auto"
    data: LMDataConfig = field(default_factory=LMDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def epochs(self) -> list[int]:
        """Epochs per stage, with [] resolved to the paper's for data.stages."""
        return list(self.train.epochs) or list(PAPER_EPOCHS[self.data.stages])

    @property
    def stage1_seed(self) -> int:
        return self.seed if self.train.stage1_seed is None else self.train.stage1_seed

    def _check_authors_label(self, label: str) -> int:
        """N of ``train.stage2_from_epoch: cptN``, checked against the stages and the authors' cadence."""
        save = self.train.authors_save_each_epochs
        m = re.fullmatch(r"cpt([0-9]+)", label)
        where = f"train.stage2_from_epoch: {label!r}"
        if m is None:
            raise ConfigError(f"{where} must be a stage-1 epoch, null (the end of stage 1) or cptN (the authors' "
                              f"run labelled cptN)")
        if self.data.n_stages != 2:
            raise ConfigError(f"{where} needs a two-stage run (data.stages={self.data.stages!r})")
        if save < 1:
            raise ConfigError(f"{where} needs train.authors_save_each_epochs (the authors' save_each_epochs, "
                              f"e.g. 5), got {save}")
        n = int(m.group(1))
        if n < save or n % save or n > self.epochs[0]:
            raise ConfigError(f"{where}: the authors' labels are cpt{save}, cpt{2 * save}, ... up to the "
                              f"{self.epochs[0]} stage-1 epochs")
        return n

    def stage2_start(self, stage1_rows: int | None = None) -> int | None:
        """The stage-1 epoch stage 2 starts from (None: the end of stage 1). ``cptN`` is resolved
        from the stage-1 training rows (:func:`metaocl.engine.lm.authors_checkpoint_labels`); without
        them (planning, before the data is built) it is None."""
        n = self.train.stage2_from_epoch
        if not isinstance(n, str):
            return n
        if stage1_rows is None:
            return None
        from metaocl.engine.lm import authors_checkpoint_labels

        t = self.train
        labels = authors_checkpoint_labels(stage1_rows, t.batch_size or stage1_rows, t.grad_accumulation,
                                           self.epochs[0], t.authors_save_each_epochs)
        epoch = labels[self._check_authors_label(n)]
        return None if epoch == self.epochs[0] else epoch

    def validate(self) -> None:
        if self.train.epochs and len(self.train.epochs) != self.data.n_stages:
            raise ConfigError(
                f"train.epochs: data.stages={self.data.stages!r} has {self.data.n_stages} stage(s) but "
                f"train.epochs lists {len(self.train.epochs)}: {self.train.epochs}"
            )
        n = self.train.stage2_from_epoch
        if isinstance(n, str):
            self._check_authors_label(n)
        elif n is not None and (self.data.n_stages != 2 or not 1 <= n <= self.epochs[0]):
            raise ConfigError(f"train.stage2_from_epoch: {n} must be a stage-1 epoch (1..{self.epochs[0]}) "
                              f"of a two-stage run (data.stages={self.data.stages!r}); null = the end of stage 1")
        if self.model.name == "tiny-t5" or self.model.kind == "seq2seq":
            if not self.data.seq2seq:
                raise ConfigError("data.seq2seq: must be true for a seq2seq model (input = prompt, target = answer)")
        if self.model.name == "tiny-gpt-neox" or self.model.kind == "causal":
            if self.data.seq2seq:
                raise ConfigError("data.seq2seq: must be false for a causal model")
        if self.model.name in BUILTIN_MODEL_NAMES and self.model.from_scratch:
            raise ConfigError(f"model.from_scratch: builtin {self.model.name!r} is always built from scratch; drop it")
        if self.train.label_block_size < 0:
            raise ConfigError(f"train.label_block_size: must be >= 0 (0 = 8 CVDB, 16 T-REx), got {self.train.label_block_size}")

    def resolved_label_block_size(self) -> int:
        """Label tokens of a seq2seq datapoint with faithful_padding (the authors' label_block_size)."""
        return self.train.label_block_size or (16 if self.data.source.startswith("trex") else 8)
