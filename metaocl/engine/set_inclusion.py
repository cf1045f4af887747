"""Training and evaluation for the set-inclusion task: a GPT-NeoX trained from scratch.

The whole loop fits on one screen on purpose::

    tokenizer = build_tokenizer(dataset.vocab)           # one token per word
    model = build_model(cfg.model, tokenizer.get_vocab_size())
    for stage in (1, 2):
        opt, sched = make_optimizer(model, cfg.train, stage, steps)   # fresh per stage
        for epoch: train_one_epoch(...); evaluate(...)

Every example has a fixed shape (definitions: 4 words, questions: list_length + 4), so batches are
padded to the longest example with ``<pad>`` and the loss is masked; attention is causal, so right
padding never changes what the model computes for real tokens. The model's answer is read at the
position of ``=``: by default the most likely next token over the whole vocabulary (the answer a
greedy decoder would write), optionally only ``true`` vs ``false``.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

from metaocl.configs.set_inclusion import GPTNeoXArch, SetInclusionEval, SetInclusionTrain
from metaocl.data.set_inclusion import Question


def build_tokenizer(vocab: list[str]) -> Tokenizer:
    """A word-level tokenizer: every word of ``vocab`` (every variable, number, keyword) is one token."""
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return tok


def encode(tok: Tokenizer, examples: list[list[str]], add_eos: bool = True) -> torch.Tensor:
    """Right-padded token ids [n, max_len] (pad id 0), one row per example, ``<eos>`` appended."""
    eos = [tok.token_to_id("<eos>")] if add_eos else []
    rows = [e.ids + eos for e in tok.encode_batch([" ".join(words) for words in examples])]
    width = max((len(r) for r in rows), default=1)
    out = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def build_model(arch: GPTNeoXArch, vocab_size: int) -> torch.nn.Module:
    """GPT-NeoX (the Pythia architecture) with random weights, sized by ``arch``."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        intermediate_size=arch.intermediate_size,
        rotary_pct=arch.rotary_pct,
        max_position_embeddings=arch.max_position_embeddings,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
        use_cache=False,
        tie_word_embeddings=arch.tie_embeddings,
    )
    return GPTNeoXForCausalLM(config)


def make_optimizer(model: torch.nn.Module, cfg: SetInclusionTrain, lr: float | None, total_steps: int):
    """A fresh optimizer and LR schedule (a new stage starts both anew, as separate runs did)."""
    if cfg.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        if lr is None:  # Adafactor's own defaults: relative step size, parameter scaling
            opt = Adafactor(model.parameters(), lr=None, relative_step=True, scale_parameter=True,
                            warmup_init=False, weight_decay=cfg.weight_decay)
            return opt, None
        opt = Adafactor(model.parameters(), lr=lr, relative_step=False, scale_parameter=False,
                        warmup_init=False, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        if cfg.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if cfg.schedule == "wsd":  # stable, then linear to 0 over the last decay_fraction of all steps
            decay_steps = max(1, round(cfg.decay_fraction * total_steps))
            return min(1.0, max(0.0, (total_steps - step) / decay_steps))
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def lm_loss(model: torch.nn.Module, batch: torch.Tensor, answer_only: bool = False) -> torch.Tensor:
    """Next-token cross-entropy on real tokens (pad id 0 masked); ``answer_only``: last real token only.

    The "answer" is the token before ``<eos>``: the truth value of a question, the number of a
    definition.
    """
    if answer_only:
        # Only one position per row carries the loss, so only there is the (vocabulary-wide, i.e.
        # every-variable-wide) output layer applied: the same loss at about half the compute. And
        # attention is causal, so the answer and <eos> themselves (the last two real tokens of every
        # row) never influence the position that predicts the answer: the input stops two tokens
        # before the longest row ends, which computes the same loss on ~20% fewer positions.
        lengths = (batch != 0).sum(1)  # real tokens incl. <eos>
        rows = torch.arange(len(batch), device=batch.device)
        inputs = batch[:, : int(lengths.max()) - 2]
        hidden = model.get_decoder()(input_ids=inputs).last_hidden_state[rows, lengths - 3]
        return F.cross_entropy(model.get_output_embeddings()(hidden), batch[rows, lengths - 2])
    logits = model(input_ids=batch).logits[:, :-1]
    targets = batch[:, 1:].clone()
    targets[targets == 0] = -100
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


def train_one_epoch(
    model: torch.nn.Module,
    data: torch.Tensor,
    opt: torch.optim.Optimizer,
    sched,
    cfg: SetInclusionTrain,
    batch_size: int,
    generator: torch.Generator,
    on_step: Callable[[int], None] | None = None,
    progress: Iterable | None = None,
) -> float:
    """One pass over ``data`` in a fresh random order; returns the mean training loss."""
    model.train()
    order = torch.randperm(len(data), generator=generator)
    total, n_batches = 0.0, 0
    batches = range(0, len(data), batch_size)
    for start in progress(batches) if progress else batches:
        batch = data[order[start : start + batch_size]]
        batch = batch[:, : int((batch != 0).sum(1).max())]  # trim shared padding
        use_bf16 = getattr(cfg, "bf16", False) and batch.is_cuda
        with torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext():
            loss = lm_loss(model, batch, answer_only=cfg.loss_on == "answer")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        total += loss.item()
        n_batches += 1
        if on_step is not None:
            on_step(n_batches)
    return total / max(1, n_batches)


@dataclass
class EvalSet:
    """Test questions of one subset, tokenized once: prompts end at ``=``; labels are True/False."""

    prompts: torch.Tensor  # [n, prompt_len]
    labels: torch.Tensor  # [n] bool

    @classmethod
    def from_questions(cls, tok: Tokenizer, questions: list[Question]) -> "EvalSet":
        return cls(encode(tok, [q.prompt for q in questions], add_eos=False),
                   torch.tensor([q.label for q in questions], dtype=torch.bool))


@torch.no_grad()
def score(model: torch.nn.Module, es: EvalSet, tok: Tokenizer, scoring: str, batch_size: int,
          device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per test question of ``es``: answered right (bool) and the answer token's loss (float), on the CPU.

    ``scoring`` as ``eval.scoring``: ``argmax`` over the whole vocabulary at ``=``, or ``true_false``
    (only the two answer logits compete). The one place test answers are scored: :func:`evaluate`
    averages it per subset, ``scripts/gap_noise.py`` per variable."""
    model.eval()
    true_id, false_id = tok.token_to_id("true"), tok.token_to_id("false")
    correct, losses = [torch.zeros(0, dtype=torch.bool)], [torch.zeros(0)]
    for start in range(0, len(es.labels), batch_size):
        prompts = es.prompts[start : start + batch_size].to(device)
        labels = es.labels[start : start + batch_size].to(device)
        logits = model(input_ids=prompts, logits_to_keep=1).logits[:, -1].float()
        target = torch.where(labels, true_id, false_id)
        if scoring == "argmax":
            pred = logits.argmax(-1)
        else:
            pred = torch.where(logits[:, true_id] >= logits[:, false_id], true_id, false_id)
        correct.append((pred == target).cpu())
        losses.append(F.cross_entropy(logits, target, reduction="none").cpu())
    return torch.cat(correct), torch.cat(losses)


def evaluate(model: torch.nn.Module, sets: dict[str, EvalSet], tok: Tokenizer, cfg: SetInclusionEval,
             device: str) -> dict[str, float]:
    """Accuracy and answer-token loss per subset (``acc/{subset}``, ``loss/{subset}``)."""
    out: dict[str, float] = {}
    for name, es in sets.items():
        correct, losses = score(model, es, tok, cfg.scoring, cfg.batch_size, device)
        n = max(1, len(es.labels))
        out[f"acc/{name}"] = correct.sum().item() / n
        out[f"loss/{name}"] = losses.double().sum().item() / n
    return out


@torch.no_grad()
def definition_recall(model: torch.nn.Module, definitions: dict[str, torch.Tensor], batch_size: int) -> dict[str, float]:
    """``acc_def/{subset}``: how often the model completes ``tag var %`` with the number it was told.

    Separates "the definition was memorized" from "the definition was used to answer questions".
    """
    model.eval()
    out = {}
    for name, defs in definitions.items():
        hits = 0
        for start in range(0, len(defs), batch_size):
            batch = defs[start : start + batch_size]
            logits = model(input_ids=batch[:, :3], logits_to_keep=1).logits[:, -1]
            hits += (logits.argmax(-1) == batch[:, 3]).sum().item()
        out[f"acc_def/{name}"] = hits / max(1, len(defs))
    return out


class Throughput:
    """Examples per second of the last epoch."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def rate(self, n_examples: int) -> float:
        dt = time.perf_counter() - self.t0
        self.t0 = time.perf_counter()
        return n_examples / dt if dt > 0 else 0.0
