"""Exact match of greedy decoding, computed fast but identical to plain greedy ``generate``.

The paper's measure: decode greedily from the prompt (at most 8 new tokens for CVDB, 16 for
T-REx), stop at EOS, and compare with the answer after SQuAD normalization (lowercase, drop
punctuation and articles, squeeze whitespace).

Fast path, exact by construction: one teacher-forced forward pass over prompt + trained
continuation (the datapoint's own tokens + EOS, which also gives the eval loss). Greedy decoding
produces token t_k exactly when the argmax after prompt + t_1..t_{k-1} is t_k, so as long as the
argmaxes follow the continuation we know what ``generate`` would output without running it. At the
first position where they differ we know the greedy prefix, and only those examples continue with
real generation from there (batched without padding, so the numbers are those of ``generate``).
A well-trained model rarely needs any generation; an untrained one needs it everywhere, and costs
what ``generate`` costs. :func:`greedy_reference` is the plain ``generate`` the tests compare with.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from dataclasses import dataclass

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


@torch.no_grad()
def _continue_greedy(model, tokenizer, jobs: list[tuple], device: str,
                     is_seq2seq: bool, use_autocast: bool) -> dict[int, list[int]]:
    """Greedy-continue each job (index, encoder/causal prefix, decoder prefix, budget, produced).

    Jobs with equal prefix lengths and budget are batched together; no padding is ever needed, so
    the result is what per-example ``generate`` computes.
    """
    groups: dict[tuple, list] = defaultdict(list)
    for job in jobs:
        i, prefix, dec_prefix, budget, _ = job
        groups[(len(prefix), len(dec_prefix), budget)].append(job)
    out: dict[int, list[int]] = {}
    for (_, dec_len, budget), group in groups.items():
        gen_cfg = _greedy_config(model, budget, tokenizer)
        x = torch.tensor([g[1] for g in group], device=device)
        kwargs = dict(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gen_cfg)
        if is_seq2seq:
            kwargs["decoder_input_ids"] = torch.tensor([g[2] for g in group], device=device)
        with autocast(device, use_autocast):
            y = model.generate(**kwargs)
        start = dec_len if is_seq2seq else x.size(1)
        for g, row in zip(group, y.tolist()):
            out[g[0]] = row[start:]
    return out


@torch.no_grad()
def evaluate_split(model, tokenizer, enc: Encoded, *, max_new_tokens: int, device: str, is_seq2seq: bool,
                   batch_size: int = 128, use_autocast: bool = False) -> SplitResult:
    """Exact match and mean token loss of one eval split (see the module docstring)."""
    model.eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    start_id = getattr(model.config, "decoder_start_token_id", None)
    n = len(enc)
    greedy: list[list[int] | None] = [None] * n  # known greedy output tokens per example
    jobs = []  # (index, prefix, decoder prefix, remaining budget, tokens produced so far)
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
                    jobs.append((i, enc.prompt_ids[i], [], max_new_tokens, []))
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
                jobs.append((i, enc.ids[i], [start_id] + produced, max_new_tokens - len(produced), produced))
            else:
                jobs.append((i, enc.ids[i][:p] + produced, [], max_new_tokens - len(produced), produced))
        pos += len(idx)
    if jobs:
        continued = _continue_greedy(model, tokenizer, jobs, device, is_seq2seq, use_autocast)
        for i, _, _, _, produced in jobs:
            greedy[i] = produced + continued[i]
    predictions = [_decode(tokenizer, g) for g in greedy]
    hits = sum(exact_match(p, a) for p, a in zip(predictions, enc.answers))
    return SplitResult(em=hits / max(1, n), loss=loss_total / max(1, loss_tokens),
                       predictions=predictions, n_generated=len(jobs))


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
