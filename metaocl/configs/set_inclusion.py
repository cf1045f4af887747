"""Config of the set-inclusion experiment (paper section 3.1, appendix D).

Defaults are the authors' (``configs/num_choice_exps/pythia70m_tokpervar_bs512_n8_i1.yaml`` of
krasheninnikov/internalization): 8000 variables, qd1consis/qd2incons/d1consis/d2consis =
0.4/0.4/0.1/0.1, 24 questions per variable (12 training, 12 test), Pythia-70M architecture from
random weights, batch 512, 100 + 40 epochs, and the Hugging Face Trainer's ``optim: adafactor``:
Adafactor without relative step or parameter scaling at the Trainer's lr 5e-5, linear decay to 0
per stage, no warm-up, grad-norm clip 1.0. Sweep files override what they vary. Two defaults are
not the authors' so that the CPU quickstart keeps its results: ``data.vocabulary`` (``used``; theirs
``all_names``) and ``eval.max_samples`` (all; theirs 20000); the paper sweeps set theirs. Seeds: a
sweep's ``train.stage1_seed`` grid x trial seeds gives their stage-1 x stage-2 seed layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from metaocl.config import ConfigError
from metaocl.experiments.staged import CHECKPOINT_MINUTES


@dataclass
class SetInclusionData:
    n_variables: int = 8000
    max_number: int = 98  # variables stand for integers 0..max_number
    list_length: int = 8  # numbers per question
    var_length: int = 3  # letters per variable name
    train_questions: int = 12  # per variable with QA in training (half true)
    test_questions: int = 12  # per variable, every subset (half true)
    # fractions of variables per subset; d3consis (tag never seen in stage 1) is optional
    qd1consis: float = 0.4
    qd2incons: float = 0.4
    d1consis: float = 0.1
    d2consis: float = 0.1
    d3consis: float = 0.0
    # The tokenizer's vocabulary. used: the words the data uses (specials, keywords, numbers, the
    # variables). all_names: also every other name of var_length letters (26**3 = 17,576 for 3),
    # the 26 single letters and the numbers up to 99, after those: the authors' tokenizer
    # (src/lm_training_utils.py create_tokenizer, separate_token_per_var): their 17,711 tokens at 3
    # letters, and our <eos>.
    vocabulary: Literal["used", "all_names"] = "used"

    def validate(self) -> None:
        fracs = [self.qd1consis, self.qd2incons, self.d1consis, self.d2consis, self.d3consis]
        if any(f < 0 for f in fracs):
            raise ConfigError("subset fractions must be >= 0")
        if sum(fracs) > 1.0 + 1e-9:
            raise ConfigError(f"subset fractions sum to {sum(fracs):.3f} > 1")
        if self.train_questions % 2 or self.test_questions % 2:
            raise ConfigError("train_questions and test_questions must be even (half true, half false)")
        if not 1 <= self.list_length <= self.max_number:
            raise ConfigError("list_length must be between 1 and max_number")
        if 26**self.var_length < 2 * self.n_variables:
            raise ConfigError(f"var_length {self.var_length} is too short for {self.n_variables} unique variables")


@dataclass
class GPTNeoXArch:
    """GPT-NeoX architecture built from config with random weights (Pythia-70M by default)."""

    hidden_size: int = 512
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    rotary_pct: float = 0.25
    max_position_embeddings: int = 64
    # share the input embedding and the output (unembedding) matrix; Pythia does not (the default)
    tie_embeddings: bool = False

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError("hidden_size must be divisible by num_attention_heads")


@dataclass
class SetInclusionTrain:
    stage1_epochs: int = 100
    stage2_epochs: int = 40
    batch_size: int = 512
    stage2_batch_size: int | None = None  # default: batch_size
    optimizer: Literal["adafactor", "adamw"] = "adafactor"
    # 5e-5 with adafactor = HF Trainer's Adafactor (relative_step=False, scale_parameter=False), the
    # authors'. null with adafactor = Adafactor's own relative-step mode (parameter scaling, its own
    # step-size schedule; ``schedule`` is then unused): an option, not the authors'.
    lr: float | None = 5e-5
    stage2_lr: float | None = None  # default: lr
    weight_decay: float = 0.0
    # per stage, as a fresh Trainer run. wsd = warm-up, stable, decay: constant after the warm-up,
    # then linear to 0 over the last ``decay_fraction`` of the stage's steps (a settled model at
    # the stage's end without slowing the first phase; the quickstart's, docs/cpu-meta-ocl.md)
    schedule: Literal["constant", "linear", "cosine", "wsd"] = "linear"
    warmup_steps: int = 0
    decay_fraction: float = 0.25  # wsd only
    grad_clip: float = 1.0
    # which tokens carry the loss: every token (plain causal LM, the paper) or only the answer token
    loss_on: Literal["all", "answer"] = "all"
    # single-stage (joint) training: stage-1 and stage-2 data together for stage1_epochs
    joint: bool = False
    grad_alignment_every: int = 0  # >0: log gradient alignment (tag defs vs QA) every K steps
    # minutes of training between resumable checkpoints (and at the stage boundary); 0 = every epoch,
    # null = none. Only Ray trials keep them.
    checkpoint_minutes: float | None = CHECKPOINT_MINUTES
    # Training forward passes under bf16 autocast on CUDA (fp32 weights), the authors' bf16: True;
    # nothing on CPU.
    bf16: bool = True
    # Seed of the dataset (variables, numbers, questions, the X1/X2 split), the initial weights and
    # stage 1; the trial seed then re-splits X2 into d1/d2/d3consis and orders stage 2's data (the
    # authors' seed / seed_stage2). Trials with one stage1_seed share stage 1: a sweep trains it once
    # as a stage-1 unit. null = the trial seed drives everything and X2 is not re-split (quickstart).
    stage1_seed: int | None = None
    # Two-stage only: the stage-1 epoch whose model stage 2 starts from (null = the end of stage 1).
    # Stage 1 is still trained and evaluated to its end (its curve), stage 2's epochs follow epoch N.
    stage2_from_epoch: int | None = None

    def validate(self) -> None:
        if self.stage1_epochs < 1 or self.stage2_epochs < 0:
            raise ConfigError("stage1_epochs must be >= 1 and stage2_epochs >= 0")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        if self.optimizer == "adamw" and self.lr is None:
            raise ConfigError("optimizer adamw needs an explicit lr")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if self.checkpoint_minutes is not None and self.checkpoint_minutes < 0:
            raise ConfigError("checkpoint_minutes must be >= 0 (0 = every epoch, null = off)")
        if self.stage1_seed is not None and self.stage1_seed < 0:
            raise ConfigError(f"stage1_seed must be >= 0 (null = the trial seed), got {self.stage1_seed}")
        n = self.stage2_from_epoch
        if n is not None and (self.joint or self.stage2_epochs == 0 or not 1 <= n <= self.stage1_epochs):
            raise ConfigError(f"stage2_from_epoch: {n} must be a stage-1 epoch (1..{self.stage1_epochs}) of a "
                              "two-stage run (joint false, stage2_epochs > 0); null = the end of stage 1")

    @property
    def two_stage(self) -> bool:
        return not self.joint and self.stage2_epochs > 0


@dataclass
class SetInclusionEval:
    # argmax: the model's answer is the most likely next token after '=' over the whole vocabulary
    # (wrong unless it is the right one of true/false); true_false: compare only those two logits.
    scoring: Literal["argmax", "true_false"] = "argmax"
    batch_size: int = 2048
    every: int = 1  # evaluate every N epochs (and always at the end of a stage)
    # At most this many test questions per subset, a sample drawn once per stage with the stage's
    # training seed (order kept), as the authors' max_eval_samples (load_data_from_config.py
    # enforce_max_data_size); null = every test question.
    max_samples: int | None = None

    def validate(self) -> None:
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max_samples must be >= 1 (null = every test question), got {self.max_samples}")


@dataclass
class SetInclusionConfig:
    seed: int = 0
    device: str = "auto"
    data: SetInclusionData = field(default_factory=SetInclusionData)
    model: GPTNeoXArch = field(default_factory=GPTNeoXArch)
    train: SetInclusionTrain = field(default_factory=SetInclusionTrain)
    eval: SetInclusionEval = field(default_factory=SetInclusionEval)

    @property
    def stage1_seed(self) -> int:
        """The seed of the data and stage 1 (``train.stage1_seed``, else the trial seed)."""
        return self.seed if self.train.stage1_seed is None else self.train.stage1_seed
