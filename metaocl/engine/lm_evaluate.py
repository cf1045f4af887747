"""Exact match of greedy decoding, computed fast but identical to plain greedy ``generate``.

The paper's measure: decode greedily from the prompt (at most 8 new tokens for CVDB, 16 for
T-REx), stop at EOS, and compare with the answer after SQuAD normalization (lowercase, drop
punctuation and articles, squeeze whitespace).

Fast path, exact by construction: one teacher-forced forward pass over prompt + trained
continuation (the datapoint's own tokens + EOS, which also gives the eval loss). Greedy decoding
produces token t_k exactly when the argmax after prompt + t_1..t_{k-1} is t_k, so as long as the
argmaxes follow the continuation we know what ``generate`` would output without running it. At the
first position where they differ we know the greedy prefix, and only those examples continue with
real generation from there. A well-trained model rarely needs any generation; an untrained one
needs it everywhere, and costs what ``generate`` costs. :func:`greedy_reference` is the plain
``generate`` the tests compare with.

The continuations are what costs time on real data: a few rows per split, of many different
lengths. :func:`evaluate_splits` therefore runs the teacher-forced pass split by split (each split
keeps its own loss and EM) and then continues the greedy decoding of *every* split of the epoch in
one pooled call, which for causal models batches rows of different lengths by left padding (see
:func:`_continue_greedy` for why that is exact). One ``generate`` call per chunk of up to
``batch_size`` rows, instead of one per (split, prefix length, budget) group.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from metaocl.engine.lm import Encoded, autocast, collate, forward_logits, is_oom, loss_sum

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalization: lowercase, remove punctuation, articles and extra whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


@dataclass
class SplitResult:
    em: float
    loss: float
    predictions: list[str]
    n_generated: int  # examples that needed real generation (diagnostic)


def _cut_at_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def _decode(tokenizer, tokens: list[int]) -> str:
    return tokenizer.decode(_cut_at_eos(tokens, tokenizer.eos_token_id), skip_special_tokens=True)


def _greedy_config(model, max_new_tokens: int, tokenizer):
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=getattr(model.config, "decoder_start_token_id", None),
    )


@torch.no_grad()
def greedy_reference(model, tokenizer, enc: Encoded, max_new_tokens: int, device: str,
                     is_seq2seq: bool, use_autocast: bool = False) -> list[str]:
    """Plain ``model.generate`` one example at a time (no padding): the definition of the measure."""
    model.eval()
    gen_cfg = _greedy_config(model, max_new_tokens, tokenizer)
    out = []
    for prompt in enc.prompt_ids:
        x = torch.tensor([prompt], device=device)
        with autocast(device, use_autocast):
            y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gen_cfg)
        new = y[0, 1:] if is_seq2seq else y[0, x.size(1):]
        out.append(_decode(tokenizer, new.tolist()))
    return out


class GreedyJob(NamedTuple):
    """One example whose greedy decoding leaves the trained continuation and must be generated on."""

    key: Hashable  # the example's index in its split (pooled: (split, index))
    prefix: list[int]  # causal: prompt + tokens produced so far; seq2seq: encoder input
    decoder_prefix: list[int]  # seq2seq: decoder start + tokens produced so far; causal: []
    budget: int  # new tokens still allowed
    produced: list[int]  # greedy tokens known from the teacher-forced pass


@torch.no_grad()
def _continue_greedy(model, tokenizer, jobs: list[GreedyJob], device: str, is_seq2seq: bool,
                     use_autocast: bool, chunk_size: int = 128) -> dict[Hashable, list[int]]:
    """Greedy-continue every job by up to its budget: job key -> the new tokens.

    Causal models: jobs sorted by prefix length, cut into chunks of ``chunk_size``; each chunk is
    one left-padded ``generate`` with the chunk's largest budget, and each row is cut back to its
    own budget. This is exact for greedy decoding, row by row:

    - padded keys are masked, so they get attention weight exactly 0 and a row attends only to its
      own tokens, as when it is decoded alone;
    - ``generate`` derives position ids from the attention mask (cumulative sum), so a row's first
      real token has position 0 whatever its padding (the rotary positions of the unpadded row);
    - decoding past a row's budget and cutting gives the same first tokens (each greedy token
      depends only on the tokens before it), and tokens after EOS are cut by the caller anyway.

    What remains is floating-point reassociation of batched kernels, which any batching has (the
    tests compare with one-at-a-time ``generate``). Seq2seq models: jobs grouped by exact (encoder
    length, decoder-prefix length, budget), so no padding at all, chunked the same way.
    """
    out: dict[Hashable, list[int]] = {}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id  # masked anyway
    if is_seq2seq:
        groups: dict[tuple, list[GreedyJob]] = defaultdict(list)
        for job in jobs:
            groups[(len(job.prefix), len(job.decoder_prefix), job.budget)].append(job)
        chunks = [group[i : i + chunk_size] for group in groups.values() for i in range(0, len(group), chunk_size)]
    else:
        ordered = sorted(jobs, key=lambda job: len(job.prefix))
        chunks = [ordered[i : i + chunk_size] for i in range(0, len(ordered), chunk_size)]
    for chunk in chunks:
        width = max(len(job.prefix) for job in chunk)
        x = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, job in enumerate(chunk):  # left padding (seq2seq chunks have one length: none)
            x[row, width - len(job.prefix):] = torch.tensor(job.prefix)
            mask[row, width - len(job.prefix):] = 1
        kwargs = dict(input_ids=x.to(device), attention_mask=mask.to(device),
                      generation_config=_greedy_config(model, max(job.budget for job in chunk), tokenizer))
        if is_seq2seq:
            kwargs["decoder_input_ids"] = torch.tensor([job.decoder_prefix for job in chunk], device=device)
        with autocast(device, use_autocast):
            y = model.generate(**kwargs)
        start = len(chunk[0].decoder_prefix) if is_seq2seq else width
        for job, row in zip(chunk, y[:, start:].tolist()):
            out[job.key] = row[: job.budget]
    return out


@dataclass
class _TeacherForced:
    """One split after its teacher-forced pass: the greedy outputs known so far and what is left."""

    greedy: list[list[int] | None]  # greedy output tokens per example, None where a job continues it
    jobs: list[GreedyJob]
    loss_total: float
    loss_tokens: int


@torch.no_grad()
def _teacher_forced(model, tokenizer, enc: Encoded, *, max_new_tokens: int, device: str, is_seq2seq: bool,
                    batch_size: int, use_autocast: bool) -> _TeacherForced:
    """One forward pass over prompt + trained continuation per example: the eval loss, and the
    greedy output wherever the argmaxes follow the continuation up to EOS or the budget."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    start_id = getattr(model.config, "decoder_start_token_id", None)
    n = len(enc)
    greedy: list[list[int] | None] = [None] * n
    jobs: list[GreedyJob] = []
    loss_total, loss_tokens = 0.0, 0
    order = sorted(range(n), key=lambda i: enc.n_tokens(i))  # similar lengths together: less padding
    bs = batch_size
    pos = 0
    while pos < n:
        idx = order[pos : pos + bs]
        try:
            batch = collate(enc, idx, pad, start_id).to(device)
            with autocast(device, use_autocast):
                logits = forward_logits(model, batch)
        except RuntimeError as e:
            if not is_oom(e) or bs == 1:
                raise
            torch.cuda.empty_cache()
            bs //= 2
            continue
        loss_total += float(loss_sum(logits, batch.target))
        loss_tokens += batch.n_target
        argmax = logits.argmax(-1).tolist()
        for row, i in enumerate(idx):
            if is_seq2seq:
                cont, first = enc.labels[i], 0  # decoder position k predicts label k
            else:
                p = enc.prompt_len[i]
                if p < 0:  # the prompt's tokens are not a prefix of the datapoint's: generate
                    jobs.append(GreedyJob(i, enc.prompt_ids[i], [], max_new_tokens, []))
                    continue
                cont, first = enc.ids[i][p:], p - 1  # logits position p-1+k predicts ids[p+k]
            pred = argmax[row][first : first + len(cont)]
            limit = min(len(cont), max_new_tokens)
            k = next((j for j in range(limit) if pred[j] != cont[j]), None)
            if k is None:
                greedy[i] = cont[:limit]
                continue
            produced = cont[:k] + [pred[k]]
            if pred[k] == eos or len(produced) >= max_new_tokens:
                greedy[i] = produced
            elif is_seq2seq:
                jobs.append(GreedyJob(i, enc.ids[i], [start_id] + produced, max_new_tokens - len(produced), produced))
            else:
                jobs.append(GreedyJob(i, enc.ids[i][:p] + produced, [], max_new_tokens - len(produced), produced))
        pos += len(idx)
    return _TeacherForced(greedy, jobs, loss_total, loss_tokens)


@torch.no_grad()
def evaluate_splits(model, tokenizer, encs: dict[str, Encoded], *, max_new_tokens: int, device: str,
                    is_seq2seq: bool, batch_size: int = 128, use_autocast: bool = False) -> dict[str, SplitResult]:
    """Exact match and mean token loss of every eval split (see the module docstring).

    Each split gets its own teacher-forced pass (its loss and known greedy outputs); the greedy
    continuations of all splits then run pooled, in chunks of ``batch_size``. Every row is decoded
    as if alone (:func:`_continue_greedy`), so a split's result does not depend on the others.
    """
    model.eval()
    passes = {name: _teacher_forced(model, tokenizer, enc, max_new_tokens=max_new_tokens, device=device,
                                    is_seq2seq=is_seq2seq, batch_size=batch_size, use_autocast=use_autocast)
              for name, enc in encs.items()}
    pooled = [job._replace(key=(name, job.key)) for name, tf in passes.items() for job in tf.jobs]
    continued = _continue_greedy(model, tokenizer, pooled, device, is_seq2seq, use_autocast, chunk_size=batch_size)
    results = {}
    for name, enc in encs.items():
        tf = passes[name]
        for job in tf.jobs:
            tf.greedy[job.key] = job.produced + continued[(name, job.key)]
        predictions = [_decode(tokenizer, g) for g in tf.greedy]
        hits = sum(exact_match(p, a) for p, a in zip(predictions, enc.answers))
        results[name] = SplitResult(em=hits / max(1, len(enc)), loss=tf.loss_total / max(1, tf.loss_tokens),
                                    predictions=predictions, n_generated=len(tf.jobs))
    return results


def evaluate_split(model, tokenizer, enc: Encoded, *, max_new_tokens: int, device: str, is_seq2seq: bool,
                   batch_size: int = 128, use_autocast: bool = False) -> SplitResult:
    """Exact match and mean token loss of one eval split: :func:`evaluate_splits` on that split."""
    return evaluate_splits(model, tokenizer, {"split": enc}, max_new_tokens=max_new_tokens, device=device,
                           is_seq2seq=is_seq2seq, batch_size=batch_size, use_autocast=use_autocast)["split"]


def evaluate_split_generate(model, tokenizer, enc: Encoded, *, max_new_tokens: int, device: str, is_seq2seq: bool,
                            batch_size: int = 128, use_autocast: bool = False) -> SplitResult:
    """The slow definition (``eval.method: generate``): per-example ``generate`` plus the eval loss."""
    predictions = greedy_reference(model, tokenizer, enc, max_new_tokens, device, is_seq2seq, use_autocast)
    loss_total, loss_tokens = 0.0, 0
    start_id = getattr(model.config, "decoder_start_token_id", None)
    with torch.no_grad():
        for pos in range(0, len(enc), batch_size):
            batch = collate(enc, list(range(pos, min(len(enc), pos + batch_size))), tokenizer.pad_token_id, start_id).to(device)
            with autocast(device, use_autocast):
                loss_total += float(loss_sum(forward_logits(model, batch), batch.target))
            loss_tokens += batch.n_target
    hits = sum(exact_match(p, a) for p, a in zip(predictions, enc.answers))
    return SplitResult(em=hits / max(1, len(enc)), loss=loss_total / max(1, loss_tokens),
                       predictions=predictions, n_generated=len(enc))
