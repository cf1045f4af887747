"""The language-model finetuning loop: encode, batch, loss, one epoch of optimizer steps.

Written out by hand instead of Hugging Face ``Trainer`` because the paper's effects depend on
details we want in plain sight: how datapoints are padded and which tokens carry loss, how the
effective batch is accumulated, and a fresh optimizer and schedule per stage. Read top to bottom:

1. :func:`encode` turns a dataset split into token lists (causal: ``text`` + EOS; seq2seq:
   ``prompt`` -> ``answer``), never packing two datapoints together;
2. :func:`collate` pads a list of examples (dynamic, or the reference's EOS padding to the block
   size with loss on the padding: ``faithful_padding``);
3. :func:`loss_sum` is the summed token cross-entropy and the number of target tokens, so a step's
   loss is "mean over every target token of the effective batch" however it is split into
   micro-batches (gradient accumulation gives the full-batch update);
4. :func:`train_one_epoch` shuffles, cuts effective batches, accumulates micro-batches, clips,
   steps Adafactor and the linear schedule.

Evaluation (exact match, eval loss) lives in :mod:`metaocl.engine.lm_evaluate`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from metaocl.config import ConfigError

IGNORE = -100


# ------------------------------------------------------------------------------------------------
# Encoding
# ------------------------------------------------------------------------------------------------
@dataclass
class Encoded:
    """One split as token lists. Causal: ``ids`` = text + EOS, ``prompt_len`` = tokens of the prompt
    when ``ids`` starts with the prompt's tokens (else -1). Seq2seq: ``ids`` = encoder input (prompt),
    ``labels`` = decoder target (answer + EOS)."""

    ids: list[list[int]]
    labels: list[list[int]] | None = None
    prompt_len: list[int] = field(default_factory=list)
    prompt_ids: list[list[int]] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    is_definition: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def n_tokens(self, i: int) -> int:
        return len(self.ids[i]) + (len(self.labels[i]) if self.labels is not None else 0)


def encode(split, tokenizer, is_seq2seq: bool, with_prompts: bool = False) -> Encoded:
    """Tokenize a ``datasets.Dataset`` split with the LM-dataset columns (docs/architecture.md)."""
    cols = split.column_names
    is_def = [bool(x) for x in split["is_definition"]] if "is_definition" in cols else [False] * len(split)
    answers = list(split["answer"]) if "answer" in cols else []
    if is_seq2seq:
        prompts, answers = list(split["prompt"]), list(split["answer"])
        ids = tokenizer(prompts)["input_ids"]
        labels = tokenizer(answers)["input_ids"]
        eos = tokenizer.eos_token_id
        labels = [lab if lab and lab[-1] == eos else lab + [eos] for lab in labels]
        return Encoded(ids=ids, labels=labels, prompt_ids=ids, answers=answers, is_definition=is_def)
    eos = tokenizer.eos_token_id
    ids = [t + [eos] for t in tokenizer(list(split["text"]))["input_ids"]]
    enc = Encoded(ids=ids, answers=answers, is_definition=is_def)
    if with_prompts:
        enc.prompt_ids = tokenizer(list(split["prompt"]))["input_ids"]
        enc.prompt_len = [len(p) if full[: len(p)] == p and len(p) < len(full) else -1
                          for full, p in zip(ids, enc.prompt_ids)]
    return enc


# ------------------------------------------------------------------------------------------------
# Batching and loss
# ------------------------------------------------------------------------------------------------
@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target: torch.Tensor  # causal: next-token targets aligned with logits[:, :-1]; seq2seq: labels
    decoder_input_ids: torch.Tensor | None = None
    decoder_attention_mask: torch.Tensor | None = None

    @property
    def n_target(self) -> int:
        return int((self.target != IGNORE).sum())

    def to(self, device) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.input_ids), move(self.attention_mask), move(self.target),
                     move(self.decoder_input_ids), move(self.decoder_attention_mask))


def _pad(seqs: Sequence[Sequence[int]], value: int, length: int | None = None) -> torch.Tensor:
    length = length or max(len(s) for s in seqs)
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def collate(enc: Encoded, idx: Sequence[int], pad_id: int, decoder_start_id: int | None = None,
            faithful_padding: bool = False, block_size: int = 0, label_block_size: int = 0) -> Batch:
    """Right-pad the examples ``idx`` of ``enc`` into a :class:`Batch`.

    Causal, dynamic: loss on every real token after the first, including the terminating EOS.
    Causal, faithful: pad with EOS (= pad) to ``block_size``; the loss also covers the padding, and
    attention masks only the padding beyond the first EOS, as the reference implementation did.
    Seq2seq: encoder input = prompt, decoder input = [start] + answer, loss on answer + EOS.
    Seq2seq, faithful (``label_block_size`` > 0): labels cut to ``label_block_size`` tokens (EOS
    kept last) and padded with the pad id to it, loss on the padding too, no decoder mask: the
    reference's tokenizer(answer, padding="max_length", truncation=True, max_length=label_block_size).
    """
    seqs = [enc.ids[i] for i in idx]
    if enc.labels is not None:
        labels = [enc.labels[i] for i in idx]
        input_ids = _pad(seqs, pad_id)
        attention = _pad([[1] * len(s) for s in seqs], 0)
        if faithful_padding and label_block_size > 0:
            labels = [lab if len(lab) <= label_block_size else lab[: label_block_size - 1] + lab[-1:] for lab in labels]
            target = _pad(labels, pad_id, label_block_size)  # pad ids are targets too
            dec_in = torch.cat([torch.full((len(idx), 1), decoder_start_id, dtype=torch.long), target[:, :-1]], dim=1)
            return Batch(input_ids, attention, target, dec_in, torch.ones_like(target))
        target = _pad(labels, IGNORE)
        dec_in = _pad([[decoder_start_id] + lab[:-1] for lab in labels], pad_id)
        dec_mask = _pad([[1] * len(lab) for lab in labels], 0)
        return Batch(input_ids, attention, target, dec_in, dec_mask)
    if faithful_padding:
        too_long = max(len(s) for s in seqs)
        if too_long > block_size:
            raise ConfigError(f"train.block_size: a datapoint has {too_long} tokens (text + EOS) > block_size {block_size}; "
                              "raise block_size (the reference never truncated)")
        input_ids = _pad(seqs, pad_id, block_size)
        attention = _pad([[1] * len(s) for s in seqs], 0, block_size)
        target = input_ids[:, 1:].clone()  # loss on the EOS padding too
    else:
        input_ids = _pad(seqs, pad_id)
        attention = _pad([[1] * len(s) for s in seqs], 0)
        target = input_ids[:, 1:].masked_fill(attention[:, 1:] == 0, IGNORE)
    return Batch(input_ids, attention, target)


def forward_logits(model, batch: Batch) -> torch.Tensor:
    """Logits aligned with ``batch.target``."""
    if batch.decoder_input_ids is not None:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    decoder_input_ids=batch.decoder_input_ids, decoder_attention_mask=batch.decoder_attention_mask,
                    use_cache=False)
        return out.logits
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    return out.logits[:, :-1]


def loss_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over target tokens (fp32)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), target.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def autocast(device: str, enabled: bool):
    """bf16 autocast on CUDA (the paper's ``bf16=True``); nothing elsewhere."""
    if enabled and device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


# ------------------------------------------------------------------------------------------------
# Optimizer and schedule
# ------------------------------------------------------------------------------------------------
def make_optimizer(model, train_cfg, total_steps: int):
    """Adafactor with the HF Trainer settings of the paper, and a linear decay to 0 (no warmup)."""
    from transformers.optimization import Adafactor

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() or "bias" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": train_cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if train_cfg.optimizer == "adafactor":
        opt = Adafactor(groups, lr=train_cfg.lr, scale_parameter=False, relative_step=False, warmup_init=False)
    else:
        opt = torch.optim.AdamW(groups, lr=train_cfg.lr)
    warm = train_cfg.warmup_steps

    def factor(step: int) -> float:
        if step < warm:
            return step / max(1, warm)
        if train_cfg.lr_schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def stage_steps(n: int, batch_size: int, grad_accumulation: int, epochs: int) -> int:
    """Optimizer steps of a stage of ``epochs`` epochs over ``n`` rows, as the Hugging Face Trainer
    counts them (its ``max_steps``): ``epochs * max(1, slices_per_epoch // grad_accumulation)``, with
    ``slices_per_epoch = ceil(n / (batch_size / grad_accumulation))``. With ``grad_accumulation`` 1 it
    is ``epochs * ceil(n / batch_size)`` (the last batch of every epoch short, as the Trainer's
    dataloader). It is also the number of steps :func:`train_one_epoch` takes: the Trainer's stepping
    rule (:class:`Accumulation`) never takes fewer, and training stops at ``max_steps``."""
    slice_size = batch_size // grad_accumulation
    return epochs * max(1, math.ceil(n / slice_size) // grad_accumulation)


def authors_checkpoint_labels(n: int, batch_size: int, grad_accumulation: int, epochs: int,
                              save_each_epochs: int) -> dict[int, int]:
    """``{label: stage-1 epoch}`` of the authors' stage-2 runs (docs/fidelity.md, "Where stage 2
    starts"): stage 1 saves ``checkpoint-<global step>`` every ``save_each_epochs`` epochs
    (``src/callbacks.py``); ``src/experiment_pipeline.py`` runs stage 2 from each, iterating the names
    sorted as *strings*, and labels the i-th run ``cpt{(i + 1) x save_each_epochs}``. The global step
    at the end of epoch k is ``min(max_steps, floor(k x slices_per_epoch / grad_accumulation))``
    (:func:`stage_steps`). E.g. 16,000 rows at 128 x 2 for 20 epochs, every 5: steps 312, 625, 937,
    1240 sort as 1240, 312, 625, 937, so ``{5: 20, 10: 5, 15: 10, 20: 15}``."""
    if save_each_epochs < 1 or n < 1:
        raise ValueError(f"save_each_epochs ({save_each_epochs}) and rows ({n}) must be >= 1")
    slices = math.ceil(n / (batch_size // grad_accumulation))
    max_steps = stage_steps(n, batch_size, grad_accumulation, epochs)
    saved = {min(max_steps, k * slices // grad_accumulation): k for k in range(save_each_epochs, epochs + 1, save_each_epochs)}
    order = sorted(saved, key=lambda step: f"checkpoint-{step}")
    return {(i + 1) * save_each_epochs: saved[step] for i, step in enumerate(order)}


@dataclass
class Accumulation:
    """Gradient accumulation as the authors' Hugging Face Trainer did it (transformers 4.27-4.45,
    ``Trainer._inner_training_loop``): each epoch is cut into slices of ``batch_size /
    grad_accumulation`` rows (their ``per_device_train_batch_size``; the last slice short), slices
    are counted across epochs (``total_batched_samples``), and the optimizer steps when that count is a
    multiple of ``every`` (``gradient_accumulation_steps``), or at the last slice of an epoch that has
    no more slices than ``every``. Leftover slices at the end of an epoch keep their gradient and
    join the first step of the next epoch; training stops at ``max_steps`` (:func:`stage_steps`),
    which can leave the last epoch(s) partly or wholly untrained, as the Trainer did.

    One per stage. ``slices``/``steps`` count within the stage; ``pending`` holds the dataset indices
    of the slices whose gradient waits in ``.grad`` (to redo them after an out-of-memory halving).
    :meth:`state_dict` carries them and the waiting gradient itself, so a checkpoint between two
    slices of one accumulation resumes exactly.
    """

    every: int = 1
    max_steps: int | None = None  # None: no limit
    slices: int = 0
    steps: int = 0
    pending: list[list[int]] = field(default_factory=list)

    def done(self) -> bool:
        return self.max_steps is not None and self.steps >= self.max_steps

    def plan(self, n_slices: int):
        """One epoch of ``n_slices`` slices: yields ``(slice index, step after it?)`` while counting
        slices and steps; ends early at ``max_steps``. The Trainer's rule, and the only place of it."""
        for i in range(n_slices):
            if self.done():  # the Trainer stops at max_steps
                return
            self.slices += 1
            step = self.slices % self.every == 0 or (n_slices <= self.every and i == n_slices - 1)
            yield i, step
            self.steps += step

    def state_dict(self, model) -> dict:
        grads = None
        if self.pending:
            grads = {name: p.grad.detach().to("cpu", copy=True) for name, p in model.named_parameters()
                     if p.grad is not None}
        return {"every": self.every, "max_steps": self.max_steps, "slices": self.slices, "steps": self.steps,
                "pending": [list(x) for x in self.pending], "grads": grads}

    def load_state_dict(self, state: dict, model) -> None:
        self.every, self.max_steps = state["every"], state["max_steps"]
        self.slices, self.steps = state["slices"], state["steps"]
        self.pending = [list(x) for x in state["pending"]]
        grads = state.get("grads") or {}
        for name, p in model.named_parameters():
            p.grad = grads[name].to(p.device) if name in grads else None


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
@dataclass
class StepContext:
    """Everything a training step needs besides the data."""

    model: object
    optimizer: object
    scheduler: object
    device: str
    pad_id: int
    decoder_start_id: int | None
    batch_size: int
    micro_batch_size: int  # current; halved on CUDA OOM when auto
    auto_micro: bool
    max_grad_norm: float
    faithful_padding: bool
    block_size: int
    use_autocast: bool
    # The authors' gradient accumulation across epochs (None: one step per batch_size slice).
    accumulation: Accumulation | None = None
    label_block_size: int = 0  # seq2seq with faithful_padding: labels padded to it (see collate)


def train_step(ctx: StepContext, enc: Encoded, idx: Sequence[int]) -> tuple[float, int]:
    """One optimizer step on the effective batch ``idx``: accumulate micro-batches, clip, step.

    Returns (mean loss over the batch's target tokens, number of real input tokens). On CUDA
    out-of-memory with an automatic micro-batch, halves it and redoes the same batch.
    """
    while True:
        try:
            return _accumulate_and_step(ctx, enc, idx)
        except RuntimeError as e:
            _halve_micro_batch_after_oom(ctx, e)


def _halve_micro_batch_after_oom(ctx: StepContext, e: RuntimeError) -> None:
    """After CUDA out-of-memory with an automatic micro-batch: drop the partial gradient, free the
    cache and halve the micro-batch (the caller redoes the work); any other error is raised again."""
    if not (ctx.auto_micro and is_oom(e) and ctx.micro_batch_size > 1):
        raise e
    ctx.optimizer.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    ctx.micro_batch_size //= 2


def _accumulate_and_step(ctx: StepContext, enc: Encoded, idx: Sequence[int]) -> tuple[float, int]:
    total, n_real = _backward(ctx, enc, idx, 1)
    _optimizer_step(ctx)
    return total, n_real


@dataclass
class EpochStats:
    loss: float
    tokens_per_s: float
    examples_per_s: float
    steps: int


def train_one_epoch(ctx: StepContext, enc: Encoded, generator: torch.Generator,
                    progress: Callable | None = None, on_step: Callable[[int], None] | None = None) -> EpochStats:
    """Shuffle, then train slice by slice. Without ``ctx.accumulation``: one optimizer step per
    ``batch_size`` slice (the last one may be smaller). With it: slices of ``batch_size / every`` rows
    and the Hugging Face Trainer's stepping rule across epochs (:class:`Accumulation`)."""
    ctx.model.train()
    order = torch.randperm(len(enc), generator=generator).tolist()
    acc = ctx.accumulation
    if acc is None:
        size, acc = ctx.batch_size, Accumulation()
    else:
        size = ctx.batch_size // acc.every
    slices = [order[i : i + size] for i in range(0, len(order), size)]
    plan = acc.plan(len(slices))
    if progress is not None:
        plan = progress(plan)
    losses, tokens, steps, rows = [], 0, 0, 0
    t0 = time.perf_counter()
    for i, step_after in plan:
        loss, n_tok = _slice_backward(ctx, acc, enc, slices[i])
        acc.pending.append(slices[i])
        losses.append(loss)
        tokens += n_tok
        rows += len(slices[i])
        if step_after:
            _optimizer_step(ctx)
            acc.pending.clear()
            steps += 1
            if on_step is not None:
                on_step(steps)
    if ctx.device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = max(time.perf_counter() - t0, 1e-9)
    return EpochStats(loss=sum(losses) / max(1, len(losses)), tokens_per_s=tokens / dt,
                      examples_per_s=rows / dt, steps=steps)


def _slice_backward(ctx: StepContext, acc: Accumulation, enc: Encoded, idx: Sequence[int]) -> tuple[float, int]:
    """Add one slice's gradient: its mean token loss / ``acc.every`` (the Trainer's loss scaling),
    in micro-batches. On CUDA out-of-memory with an automatic micro-batch: halve it and redo the
    slices still waiting in ``.grad`` and this one (same weights, so the same gradient)."""
    replay: list[list[int]] = []
    while True:
        try:
            for waiting in replay:
                _backward(ctx, enc, waiting, acc.every)
            return _backward(ctx, enc, idx, acc.every)
        except RuntimeError as e:
            _halve_micro_batch_after_oom(ctx, e)
            replay = list(acc.pending)


def _backward(ctx: StepContext, enc: Encoded, idx: Sequence[int], scale_div: int) -> tuple[float, int]:
    model = ctx.model
    micro = [idx[i : i + ctx.micro_batch_size] for i in range(0, len(idx), ctx.micro_batch_size)]
    batches = [collate(enc, m, ctx.pad_id, ctx.decoder_start_id, ctx.faithful_padding, ctx.block_size,
                       ctx.label_block_size) for m in micro]
    n_target = sum(b.n_target for b in batches)
    total, n_real = 0.0, 0
    for b in batches:
        b = b.to(ctx.device)
        with autocast(ctx.device, ctx.use_autocast):
            logits = forward_logits(model, b)
        loss = loss_sum(logits, b.target) / n_target
        (loss / scale_div).backward()
        total += float(loss.detach())
        n_real += int(b.attention_mask.sum()) + (int((b.target != IGNORE).sum()) if b.decoder_input_ids is not None else 0)
    return total, n_real


def _optimizer_step(ctx: StepContext) -> None:
    if ctx.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), ctx.max_grad_norm)
    ctx.optimizer.step()
    ctx.scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)
