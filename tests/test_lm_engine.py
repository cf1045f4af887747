"""The LM training loop and exact-match evaluation on tiny models built from configs (CPU, offline).

Datasets here are built by hand in the LM-dataset layout (docs/architecture.md), small enough that
a 100k-parameter model learns them in a few seconds.
"""

from __future__ import annotations

import copy
import random
from types import SimpleNamespace

import datasets
import pytest
import torch

from metaocl.config import ConfigError
from metaocl.engine import lm_evaluate as ev
from metaocl.engine import lm as engine
from metaocl.engine.lm_models import build_builtin

torch.set_num_threads(1)

NAMES = ["Cleopatra", "Socrates", "Ada Lovelace", "Isaac Newton", "Marie Curie", "Plato", "Homer", "Nero"]
YEARS = ["1920s", "19 century", "2 century BC", "1950s", "2001", "17 century", "1880s", "5 century"]


def toy_split(n: int, seed: int = 0, seq2seq: bool = False, definitions: bool = True) -> datasets.Dataset:
    """QA pairs (and definitions) about ``n`` random 5-letter variables, in the LM-dataset columns."""
    rng = random.Random(seed)
    lead = "" if seq2seq else " "
    rows = []
    for e in range(n):
        var = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))
        ent, year = NAMES[e % len(NAMES)], YEARS[e % len(YEARS)]
        q = f"Q: When was {var} born?\nA:"
        rows.append(dict(text=f"{q} {year}\n", prompt=q, answer=lead + year, subset="qd1consis", entity=ent,
                         variable=var, question_kind="birth", is_definition=False))
        if definitions:
            rows.append(dict(text=f"qwerty {var} {ent}\n", prompt=f"qwerty {var}", answer=lead + ent, subset="qd1consis",
                             entity=ent, variable=var, question_kind="definition", is_definition=True))
    return datasets.Dataset.from_list(rows)


def qa_only(split: datasets.Dataset) -> datasets.Dataset:
    return split.filter(lambda r: not r["is_definition"])


def make_ctx(loaded, batch_size: int, micro: int | None = None, lr: float = 1e-2, total_steps: int = 1000,
             faithful: bool = False, block_size: int = 48, schedule: str = "constant") -> engine.StepContext:
    cfg = SimpleNamespace(weight_decay=0.0, optimizer="adafactor", lr=lr, warmup_steps=0, lr_schedule=schedule)
    opt, sched = engine.make_optimizer(loaded.model, cfg, total_steps)
    return engine.StepContext(
        model=loaded.model, optimizer=opt, scheduler=sched, device="cpu", pad_id=loaded.pad_id,
        decoder_start_id=getattr(loaded.model.config, "decoder_start_token_id", None), batch_size=batch_size,
        micro_batch_size=micro or batch_size, auto_micro=False, max_grad_norm=1.0, faithful_padding=faithful,
        block_size=block_size, use_autocast=False,
    )


def tiny(name: str, split: datasets.Dataset, seed: int = 0):
    torch.manual_seed(seed)
    return build_builtin(name, split["text"])


@pytest.mark.parametrize("name", ["tiny-gpt-neox", "tiny-t5"])
@pytest.mark.slow
def test_loss_decreases_and_tiny_model_overfits_qa_pairs_to_em_1(name):
    seq2seq = name == "tiny-t5"
    split = toy_split(6, seq2seq=seq2seq, definitions=False)
    loaded = tiny(name, split)
    train = engine.encode(split, loaded.tokenizer, seq2seq)
    evalset = engine.encode(split, loaded.tokenizer, seq2seq, with_prompts=True)
    ctx = make_ctx(loaded, batch_size=2, lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = [engine.train_one_epoch(ctx, train, g).loss for _ in range(60)]
    assert losses[-1] < 0.25 * losses[0]
    result = ev.evaluate_split(loaded.model, loaded.tokenizer, evalset, max_new_tokens=8, device="cpu", is_seq2seq=seq2seq)
    assert result.em == 1.0, result.predictions
    assert result.loss < losses[0]


@pytest.mark.parametrize("name", ["tiny-gpt-neox", "tiny-t5"])
@pytest.mark.slow
def test_fast_exact_match_equals_plain_greedy_generate(name):
    """At several points of training (untrained: generation everywhere; later: mostly teacher
    forcing), the fast path predicts exactly the strings of per-example `generate`."""
    seq2seq = name == "tiny-t5"
    split = toy_split(8, seed=1, seq2seq=seq2seq)
    loaded = tiny(name, split, seed=1)
    train = engine.encode(split, loaded.tokenizer, seq2seq)
    evalset = engine.encode(qa_only(split).select(range(6)), loaded.tokenizer, seq2seq, with_prompts=True)
    ctx = make_ctx(loaded, batch_size=8, lr=1e-2)
    g = torch.Generator().manual_seed(0)
    generated, hits = [], []
    for epochs in (0, 4, 30):
        for _ in range(epochs):
            engine.train_one_epoch(ctx, train, g)
        for max_new in (3, 8):
            fast = ev.evaluate_split(loaded.model, loaded.tokenizer, evalset, max_new_tokens=max_new, device="cpu",
                                     is_seq2seq=seq2seq, batch_size=4)
            reference = ev.greedy_reference(loaded.model, loaded.tokenizer, evalset, max_new, "cpu", seq2seq)
            assert fast.predictions == reference
            slow = ev.evaluate_split_generate(loaded.model, loaded.tokenizer, evalset, max_new_tokens=max_new,
                                              device="cpu", is_seq2seq=seq2seq)
            assert slow.em == fast.em and slow.loss == pytest.approx(fast.loss, rel=1e-5)
            generated.append(fast.n_generated)
            hits.append(fast.em)
    assert max(generated) == len(evalset) and min(generated) < len(evalset)  # both paths were exercised
    assert max(hits) > 0


def test_squad_normalization():
    assert ev.normalize_answer("  The 1920s.\n") == "1920s"
    assert ev.exact_match(" An Ada Lovelace!", "ada lovelace")
    assert not ev.exact_match("19 century BC", "19 century")


@pytest.mark.slow
def test_padding_modes_dynamic_and_faithful():
    split = toy_split(4)
    loaded = tiny("tiny-gpt-neox", split)
    enc = engine.encode(split, loaded.tokenizer, False)
    eos = loaded.eos_id
    idx = list(range(len(enc)))
    dyn = engine.collate(enc, idx, loaded.pad_id)
    fai = engine.collate(enc, idx, loaded.pad_id, faithful_padding=True, block_size=40)
    lengths = [len(enc.ids[i]) for i in idx]
    assert dyn.input_ids.shape == (len(idx), max(lengths)) and fai.input_ids.shape == (len(idx), 40)
    # dynamic: loss on every real token after the first, the terminating EOS included, no padding
    assert dyn.n_target == sum(n - 1 for n in lengths)
    for row, n in enumerate(lengths):
        assert dyn.target[row, n - 2] == eos and (dyn.target[row, n - 1 :] == engine.IGNORE).all()
    # faithful: padded with EOS to the block size, loss on the padding too
    assert fai.n_target == len(idx) * 39 and (fai.input_ids[0, lengths[0] :] == eos).all()
    assert (fai.attention_mask.sum(1) == torch.tensor(lengths)).all()
    # on the real tokens both modes compute the same loss (right padding never leaks backwards)
    with torch.no_grad():
        loss_dyn = engine.loss_sum(engine.forward_logits(loaded.model, dyn), dyn.target)
        logits_fai = engine.forward_logits(loaded.model, fai)
        target_real = fai.target.masked_fill(fai.attention_mask[:, 1:] == 0, engine.IGNORE)
        loss_fai_real = engine.loss_sum(logits_fai, target_real)
    assert loss_fai_real == pytest.approx(float(loss_dyn), rel=1e-4)
    # both modes train
    for faithful in (False, True):
        model = tiny("tiny-gpt-neox", split)
        ctx = make_ctx(model, batch_size=8, faithful=faithful, block_size=40)
        g = torch.Generator().manual_seed(0)
        losses = [engine.train_one_epoch(ctx, enc, g).loss for _ in range(8)]
        assert losses[-1] < losses[0]
    with pytest.raises(ConfigError, match="block_size"):
        engine.collate(enc, idx, loaded.pad_id, faithful_padding=True, block_size=8)


@pytest.mark.parametrize("name", ["tiny-gpt-neox", "tiny-t5"])
@pytest.mark.slow
def test_gradient_accumulation_gives_the_full_batch_update(name):
    """Micro-batches 5 + 5 + 2 give the update of one batch of 12 (loss = mean over the whole
    batch's target tokens). Plain SGD makes the update the clipped gradient itself; Adafactor
    would amplify float noise in parameters whose gradient is ~0 into +-lr steps."""
    seq2seq = name == "tiny-t5"
    split = toy_split(6, seq2seq=seq2seq)
    full = tiny(name, split)
    accum = copy.deepcopy(full)
    enc = engine.encode(split, full.tokenizer, seq2seq)
    idx = list(range(len(enc)))
    before = [p.detach().clone() for p in full.model.parameters()]

    def sgd_ctx(loaded, micro):
        ctx = make_ctx(loaded, batch_size=12, micro=micro)
        ctx.optimizer = torch.optim.SGD(loaded.model.parameters(), lr=0.1)
        ctx.scheduler = torch.optim.lr_scheduler.LambdaLR(ctx.optimizer, lambda step: 1.0)
        return ctx

    loss_full, _ = engine.train_step(sgd_ctx(full, 12), enc, idx)
    loss_accum, _ = engine.train_step(sgd_ctx(accum, 5), enc, idx)
    assert loss_accum == pytest.approx(loss_full, rel=1e-5)
    moved = 0.0
    with torch.no_grad():
        for p0, pf, pa in zip(before, full.model.parameters(), accum.model.parameters()):
            moved = max(moved, float((pf - p0).abs().max()))
            torch.testing.assert_close(pa - p0, pf - p0, rtol=1e-4, atol=1e-7)
    assert moved > 1e-4  # the step did change the weights


@pytest.mark.slow
def test_linear_schedule_decays_to_zero_without_warmup():
    split = toy_split(2)
    loaded = tiny("tiny-gpt-neox", split)
    ctx = make_ctx(loaded, batch_size=4, lr=5e-5, total_steps=4, schedule="linear")
    enc = engine.encode(split, loaded.tokenizer, False)
    lrs = []
    for _ in range(4):
        lrs.append(ctx.optimizer.param_groups[0]["lr"])
        engine.train_step(ctx, enc, [0, 1, 2, 3])
    lrs.append(ctx.optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([5e-5, 3.75e-5, 2.5e-5, 1.25e-5, 0.0])


def _alone(loaded, job: ev.GreedyJob, seq2seq: bool) -> list[int]:
    """One job decoded alone by plain greedy ``generate`` (no padding), cut at EOS."""
    x = torch.tensor([job.prefix])
    kwargs = dict(input_ids=x, attention_mask=torch.ones_like(x),
                  generation_config=ev._greedy_config(loaded.model, job.budget, loaded.tokenizer))
    if seq2seq:
        kwargs["decoder_input_ids"] = torch.tensor([job.decoder_prefix])
    with torch.no_grad():
        y = loaded.model.generate(**kwargs)[0].tolist()
    return ev._cut_at_eos(y[len(job.decoder_prefix) if seq2seq else x.size(1):], loaded.eos_id)


def test_left_padded_continuation_of_different_lengths_equals_generate_alone():
    """Causal continuation batches prefixes of different lengths and budgets in one left-padded
    `generate`: each row must be what it is decoded alone (attention mask, position ids from it)."""
    split = toy_split(8, seed=3)
    loaded = tiny("tiny-gpt-neox", split, seed=3)
    enc = engine.encode(split, loaded.tokenizer, False, with_prompts=True)
    jobs = [ev.GreedyJob(("s", i), enc.ids[i][: 3 + i % 9], [], 1 + i % 8, []) for i in range(len(enc))]
    assert len({len(j.prefix) for j in jobs}) >= 5 and len({j.budget for j in jobs}) == 8
    alone = {job.key: _alone(loaded, job, False) for job in jobs}
    assert any(len(tokens) > 1 for tokens in alone.values())  # real multi-token continuations
    for chunk_size in (len(jobs), 5):  # one chunk with every length; several chunks
        batched = ev._continue_greedy(loaded.model, loaded.tokenizer, jobs, "cpu", False, False, chunk_size=chunk_size)
        assert {k: ev._cut_at_eos(v, loaded.eos_id) for k, v in batched.items()} == alone
        assert all(len(batched[job.key]) <= job.budget for job in jobs)


@pytest.mark.parametrize("name", ["tiny-gpt-neox", "tiny-t5"])
def test_pooled_splits_equal_each_split_alone_and_plain_generate(name):
    """evaluate_splits pools every split's continuations; each split's EM, loss and predictions are
    those of evaluating it alone, and its predictions those of per-example `generate`."""
    seq2seq = name == "tiny-t5"
    split = toy_split(8, seed=2, seq2seq=seq2seq)
    loaded = tiny(name, split, seed=2)
    encs = {"qa": engine.encode(qa_only(split), loaded.tokenizer, seq2seq, with_prompts=True),
            "defs": engine.encode(split.filter(lambda r: r["is_definition"]), loaded.tokenizer, seq2seq, with_prompts=True),
            "all": engine.encode(split.select(range(5)), loaded.tokenizer, seq2seq, with_prompts=True)}
    kwargs = dict(max_new_tokens=6, device="cpu", is_seq2seq=seq2seq, batch_size=4)
    pooled = ev.evaluate_splits(loaded.model, loaded.tokenizer, encs, **kwargs)
    assert list(pooled) == list(encs)
    for split_name, enc in encs.items():
        alone = ev.evaluate_split(loaded.model, loaded.tokenizer, enc, **kwargs)
        assert pooled[split_name] == alone, split_name
        assert alone.predictions == ev.greedy_reference(loaded.model, loaded.tokenizer, enc, 6, "cpu", seq2seq)
    assert all(r.n_generated > 0 for r in pooled.values())  # untrained: every split had rows in the pooled call


def hf_trainer_plan(n_rows: int, per_device: int, gas: int, epochs: int) -> list[list[tuple[int, int]]]:
    """The Hugging Face Trainer's stepping (transformers 4.27-4.45 ``_inner_training_loop``), written
    out literally: each optimizer step as the list of (epoch, micro-batch index) it accumulated."""
    steps_in_epoch = -(-n_rows // per_device)
    max_steps = epochs * max(1, steps_in_epoch // gas)
    total_batched_samples, global_step, out, window = 0, 0, [], []
    for epoch in range(epochs):
        for step in range(steps_in_epoch):
            total_batched_samples += 1
            window.append((epoch, step))
            if total_batched_samples % gas == 0 or (steps_in_epoch <= gas and step + 1 == steps_in_epoch):
                out.append(window)
                window, global_step = [], global_step + 1
                if global_step >= max_steps:  # DefaultFlowCallback: should_training_stop
                    return out
    return out


@pytest.mark.slow  # trains (optimizer steps of a tiny model)
@pytest.mark.parametrize("n_rows,batch,gas,epochs", [(37, 16, 4, 5), (37, 64, 16, 4), (40, 16, 4, 3), (37, 8, 1, 2)])
def test_accumulation_takes_the_hf_trainers_steps_across_epochs(n_rows, batch, gas, epochs):
    """Known answer: the steps train_one_epoch takes, and the slices in each, are those of the
    Trainer's loop (leftover slices carried into the next epoch, the stop at max_steps)."""
    split = qa_only(toy_split(n_rows, seed=3))
    loaded = tiny("tiny-gpt-neox", split)
    enc = engine.encode(split, loaded.tokenizer, False)
    want = hf_trainer_plan(n_rows, batch // gas, gas, epochs)
    total = engine.stage_steps(n_rows, batch, gas, epochs)
    assert total == len(want)
    ctx = make_ctx(loaded, batch_size=batch, total_steps=total)
    ctx.accumulation = engine.Accumulation(every=gas, max_steps=total)
    seen, got = [], []  # slice sizes per step, by epoch
    real_backward = engine._backward

    def spy(c, e, idx, div):
        seen.append(len(idx))
        return real_backward(c, e, idx, div)

    engine._backward = spy
    try:
        g = torch.Generator().manual_seed(0)
        for epoch in range(epochs):
            stats = engine.train_one_epoch(ctx, enc, g, on_step=lambda _: got.append(list(seen)) or seen.clear())
            assert stats.steps == sum(1 for w in want if w[-1][0] == epoch)
    finally:
        engine._backward = real_backward
    size = batch // gas
    want_sizes = [[min(size, n_rows - size * s) for _, s in w] for w in want]
    assert got == want_sizes
    assert ctx.accumulation.steps == total and ctx.scheduler.last_epoch == total


@pytest.mark.slow  # trains
def test_accumulation_checkpoint_between_epochs_resumes_exactly():
    """A checkpoint taken at an epoch end while slices wait in .grad (37 rows, slices of 4, every 4:
    10 slices per epoch, 2 left over) continues to the same weights as an uninterrupted run."""
    split = qa_only(toy_split(37, seed=4))
    n, batch, gas, epochs = 37, 16, 4, 3
    total = engine.stage_steps(n, batch, gas, epochs)

    def fresh():
        loaded = tiny("tiny-gpt-neox", split, seed=5)
        enc = engine.encode(split, loaded.tokenizer, False)
        ctx = make_ctx(loaded, batch_size=batch, lr=1e-2, total_steps=total, schedule="linear")
        ctx.accumulation = engine.Accumulation(every=gas, max_steps=total)
        return loaded, enc, ctx

    loaded, enc, ctx = fresh()
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        engine.train_one_epoch(ctx, enc, g)
    straight = {k: v.clone() for k, v in loaded.model.state_dict().items()}

    loaded, enc, ctx = fresh()
    g = torch.Generator().manual_seed(0)
    engine.train_one_epoch(ctx, enc, g)
    assert len(ctx.accumulation.pending) == 2  # 10 slices, a step every 4: 2 wait
    saved = dict(model=copy.deepcopy(loaded.model.state_dict()), opt=copy.deepcopy(ctx.optimizer.state_dict()),
                 sched=ctx.scheduler.state_dict(), acc=copy.deepcopy(ctx.accumulation.state_dict(loaded.model)),
                 g=g.get_state())
    assert saved["acc"]["grads"] and saved["acc"]["slices"] == 10

    loaded, enc, ctx = fresh()  # a new process: weights, optimizer, schedule, counts and waiting gradient
    loaded.model.load_state_dict(saved["model"])
    ctx.optimizer.load_state_dict(saved["opt"])
    ctx.scheduler.load_state_dict(saved["sched"])
    ctx.accumulation.load_state_dict(saved["acc"], loaded.model)
    g = torch.Generator()
    g.set_state(saved["g"])
    for _ in range(epochs - 1):
        engine.train_one_epoch(ctx, enc, g)
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, straight[k]), k


def test_seq2seq_faithful_labels_are_padded_with_the_pad_id_to_label_block_size():
    """The reference's T5 labels: tokenizer(answer, padding="max_length", truncation=True,
    max_length=label_block_size): pad ids (not -100) to the block, so loss on the padding; a longer
    answer is cut with its EOS kept last; decoder input = [start] + labels[:-1], no decoder mask."""
    enc = engine.Encoded(ids=[[5, 6], [7]], labels=[[11, 12, 1], [21, 22, 23, 24, 25, 1]])
    b = engine.collate(enc, [0, 1], pad_id=0, decoder_start_id=0, faithful_padding=True, label_block_size=4)
    assert b.target.tolist() == [[11, 12, 1, 0], [21, 22, 23, 1]]
    assert b.decoder_input_ids.tolist() == [[0, 11, 12, 1], [0, 21, 22, 23]]
    assert b.decoder_attention_mask.tolist() == [[1] * 4] * 2 and b.n_target == 8
    plain = engine.collate(enc, [0, 1], pad_id=0, decoder_start_id=0)  # ours: answer + EOS only
    assert plain.target.tolist()[0] == [11, 12, 1, engine.IGNORE, engine.IGNORE, engine.IGNORE] and plain.n_target == 9


@pytest.mark.slow  # trains
def test_out_of_memory_halves_an_automatic_micro_batch_and_redoes_the_same_step():
    """A model that runs out of memory on micro-batches over 2 rows: the step halves 8 -> 4 -> 2 and
    then takes exactly the step a micro-batch of 2 takes from the start (same weights after it)."""
    split = toy_split(4, definitions=False)
    train_rows = list(range(4)) * 2  # a batch of 8 rows: each of the 4 QA pairs twice

    def run(micro: int, auto: bool, limit: int | None):
        loaded = tiny("tiny-gpt-neox", split)
        enc = engine.encode(split, loaded.tokenizer, False)
        ctx = make_ctx(loaded, batch_size=len(train_rows), micro=micro)
        ctx.auto_micro = auto
        if limit is not None:
            forward = loaded.model.forward

            def small_memory(*args, **kwargs):
                ids = kwargs.get("input_ids", args[0] if args else None)
                if ids is not None and ids.shape[0] > limit:
                    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
                return forward(*args, **kwargs)

            loaded.model.forward = small_memory
        loss, _ = engine.train_step(ctx, enc, train_rows)
        return ctx.micro_batch_size, loss, [p.detach().clone() for p in loaded.model.parameters()]

    micro, loss, weights = run(len(train_rows), True, 2)
    ref_micro, ref_loss, ref_weights = run(2, False, None)
    assert micro == ref_micro == 2
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(weights, ref_weights))
    with pytest.raises(RuntimeError, match="out of memory"):  # not automatic: the error is the user's to see
        run(len(train_rows), False, 2)
