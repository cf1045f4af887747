"""The set-inclusion engine on a tiny model: tokenizer, loss, gradients, evaluation, a full run."""

import math

import pytest
import torch

from metaocl.config import from_dict
from metaocl.configs.set_inclusion import GPTNeoXArch, SetInclusionConfig, SetInclusionData, SetInclusionTrain
from metaocl.data.set_inclusion import generate
from metaocl.engine import set_inclusion as eng
from metaocl.experiments import PrintReporter
from metaocl.experiments.set_inclusion import run

TINY = GPTNeoXArch(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def small():
    ds = generate(SetInclusionData(n_variables=60), seed=0)
    return ds, eng.build_tokenizer(ds.vocab)


def test_tokenizer_round_trip_one_token_per_word():
    ds, tok = small()
    words = ds.train_qa["qd1consis"][0].words
    enc = tok.encode(" ".join(words))
    assert len(enc.ids) == len(words)
    assert tok.decode(enc.ids) == " ".join(words)
    assert tok.get_vocab_size() == len(ds.vocab)
    assert all(tok.token_to_id(v) is not None for v in ds.numbers)  # every variable is its own token


def test_encode_pads_and_appends_eos():
    ds, tok = small()
    batch = eng.encode(tok, [["define1", "abc", "%", "3"], ds.train_qa["qd1consis"][0].words])
    assert batch.shape == (2, 13)
    assert batch[0, 4] == tok.token_to_id("<eos>") and (batch[0, 5:] == 0).all()


@pytest.mark.slow
def test_gradients_reach_every_parameter_and_loss_decreases():
    torch.manual_seed(0)
    ds, tok = small()
    model = eng.build_model(TINY, tok.get_vocab_size())
    data = eng.encode(tok, ds.stage_examples(1)[:64])
    loss = eng.lm_loss(model, data)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    cfg = SetInclusionTrain(optimizer="adamw", lr=3e-3)
    opt, sched = eng.make_optimizer(model, cfg, cfg.lr, 100)
    first = eng.lm_loss(model, data).item()
    for _ in range(30):
        eng.train_one_epoch(model, data, opt, sched, cfg, 64, torch.Generator().manual_seed(0))
    assert eng.lm_loss(model, data).item() < first * 0.7


def test_answer_only_loss_targets_the_answer_token():
    ds, tok = small()
    model = eng.build_model(TINY, tok.get_vocab_size())
    q = ds.train_qa["qd1consis"][0]
    batch = eng.encode(tok, [q.words])
    logits = model(input_ids=batch).logits[0]
    expected = torch.nn.functional.cross_entropy(logits[len(q.words) - 2][None], batch[0, len(q.words) - 1][None])
    assert torch.allclose(eng.lm_loss(model, batch, answer_only=True), expected, atol=1e-5)



def test_answer_only_loss_equals_the_loss_on_full_rows():
    """Trimming the answer and <eos> off the input changes nothing (causal attention), on mixed rows.

    Known answer: the mean over rows of the cross-entropy read off the untrimmed forward pass at
    each row's own '=' / '%' position, rows of different lengths (definitions and questions)."""
    torch.manual_seed(1)
    ds, tok = small()
    model = eng.build_model(TINY, tok.get_vocab_size())
    rows = [ds.definitions["d1consis"][0], *(q.words for q in ds.train_qa["qd2incons"][:3]),
            ds.definitions["qd1consis"][1]]
    batch = eng.encode(tok, rows)
    logits = model(input_ids=batch).logits
    expected = torch.stack([
        torch.nn.functional.cross_entropy(logits[i, len(w) - 2][None], batch[i, len(w) - 1][None])
        for i, w in enumerate(rows)]).mean()
    got = eng.lm_loss(model, batch, answer_only=True)
    assert torch.allclose(got, expected, atol=1e-6)
    got.backward()  # and the gradients flow as before
    assert all(p.grad is not None for p in model.parameters())

def always_true_model(tok) -> torch.nn.Module:
    """The real tiny GPT-NeoX, set to answer ``true`` everywhere with logits (true: 1, every other token: 0).

    The final layer norm outputs the constant vector c at every position (weight 0, bias c) and the
    unembedding maps c to 1 on ``true`` and 0 elsewhere.
    """
    model = eng.build_model(TINY, tok.get_vocab_size())
    c = torch.linspace(-1.0, 1.0, TINY.hidden_size)
    with torch.no_grad():
        model.gpt_neox.final_layer_norm.weight.zero_()
        model.gpt_neox.final_layer_norm.bias.copy_(c)
        w = model.get_output_embeddings().weight
        w.zero_()
        w[tok.token_to_id("true")] = c / c.dot(c)
    return model


def test_evaluate_scores_a_model_that_always_answers_true():
    from metaocl.configs.set_inclusion import SetInclusionEval

    ds, tok = small()
    model = always_true_model(tok)
    sets = {s: eng.EvalSet.from_questions(tok, qs) for s, qs in ds.test_qa.items()}
    qs = ds.test_qa["qd1consis"]
    sets["only_true"] = eng.EvalSet.from_questions(tok, [q for q in qs if q.words[-1] == "true"])
    sets["only_false"] = eng.EvalSet.from_questions(tok, [q for q in qs if q.words[-1] == "false"])
    v = tok.get_vocab_size()
    # cross-entropy with logits (1, 0, ..., 0): -log(e / (e + v - 1)) for "true", -log(1 / (e + v - 1)) for "false"
    loss_true, loss_false = math.log(math.e + v - 1) - 1.0, math.log(math.e + v - 1)
    for scoring in ("argmax", "true_false"):
        out = eng.evaluate(model, sets, tok, SetInclusionEval(scoring=scoring, batch_size=50), "cpu")
        assert set(out) == {f"{m}/{s}" for s in sets for m in ("acc", "loss")}
        for s in ds.test_qa:  # every test subset is half true, half false
            assert out[f"acc/{s}"] == 0.5, (scoring, s)
            assert out[f"loss/{s}"] == pytest.approx((loss_true + loss_false) / 2, rel=1e-5)
        assert out["acc/only_true"] == 1.0 and out["acc/only_false"] == 0.0
        assert out["loss/only_true"] == pytest.approx(loss_true, rel=1e-5)
        assert out["loss/only_false"] == pytest.approx(loss_false, rel=1e-5)


def test_gaps_from_known_subset_values():
    from metaocl.experiments.set_inclusion import KIND

    metrics = {"acc/qd1consis": 0.75, "acc/qd2incons": 0.5, "acc/d1consis": 0.625, "acc/d2consis": 0.5,
               "loss/qd1consis": 9.0, "acc/q": 0.25}
    assert KIND.gaps(metrics) == {"gap/ocl": 0.25, "gap/meta_ocl": 0.125}
    assert KIND.gaps({"acc/qd1consis": 0.75}) == {}  # a gap needs both of its subsets


@pytest.mark.slow
def test_run_reports_every_epoch_with_gaps():
    cfg = from_dict(SetInclusionConfig, {
        "data": {"n_variables": 60}, "model": {"hidden_size": 32, "num_hidden_layers": 1,
                                              "num_attention_heads": 2, "intermediate_size": 64},
        "train": {"stage1_epochs": 2, "stage2_epochs": 1, "batch_size": 64}})
    reporter = PrintReporter()
    final = run(cfg, reporter)
    assert [r["epoch"] for r in reporter.history] == [1, 2, 3]
    assert [r["stage"] for r in reporter.history] == [1, 1, 2]
    for key in ("acc/qd1consis", "acc/d2consis", "gap/ocl", "gap/meta_ocl", "train/loss", "acc_def/qd2incons"):
        assert key in final


@pytest.mark.slow
def test_grad_alignment_metrics_are_finite_cosines():
    cfg = from_dict(SetInclusionConfig, {
        "data": {"n_variables": 60}, "model": {"hidden_size": 32, "num_hidden_layers": 1,
                                              "num_attention_heads": 2, "intermediate_size": 64},
        "train": {"stage1_epochs": 2, "stage2_epochs": 1, "batch_size": 32, "grad_alignment_every": 1}})
    reporter = PrintReporter()
    run(cfg, reporter)
    assert len(reporter.history) == 3
    for row in reporter.history:  # both stages: stage-1 (qd) and stage-2 (d) definitions vs QA
        for key in ("grad/cos_def1_qa", "grad/cos_def2_qa"):
            assert math.isfinite(row[key]) and -1.0 <= row[key] <= 1.0, (key, row)
    off = PrintReporter()
    run(from_dict(SetInclusionConfig, {**{"data": {"n_variables": 60}}, "model": cfg.model.__dict__,
                                       "train": {"stage1_epochs": 1, "stage2_epochs": 0, "batch_size": 32}}), off)
    assert not any(k.startswith("grad/") for k in off.history[-1])


def test_tie_embeddings_shares_input_and_output_matrix():
    tied = eng.build_model(GPTNeoXArch(**{**TINY.__dict__, "tie_embeddings": True}), 50)
    untied = eng.build_model(TINY, 50)
    assert tied.get_input_embeddings().weight is tied.get_output_embeddings().weight
    assert untied.get_input_embeddings().weight is not untied.get_output_embeddings().weight
    n_tied, n_untied = (sum(p.numel() for p in m.parameters()) for m in (tied, untied))
    assert n_untied - n_tied == 50 * TINY.hidden_size


@pytest.mark.slow
def test_joint_run_reports_one_stage_with_both_gaps():
    cfg = from_dict(SetInclusionConfig, {
        "data": {"n_variables": 60, "max_number": 19, "list_length": 4},
        "model": {**TINY.__dict__, "tie_embeddings": True},
        "train": {"joint": True, "stage1_epochs": 2, "stage2_epochs": 0, "batch_size": 64, "optimizer": "adamw",
                  "lr": 2e-3, "loss_on": "answer"}})
    reporter = PrintReporter()
    final = run(cfg, reporter)
    assert [r["stage"] for r in reporter.history] == [1, 1]
    assert final["gap/meta_ocl"] == final["acc/d1consis"] - final["acc/d2consis"]


def test_wsd_schedule_warms_up_holds_then_decays_linearly_to_zero():
    """Known answers: 100 steps, 10 warm-up, the last 25% linear to 0."""
    model = torch.nn.Linear(2, 2)
    cfg = SetInclusionTrain(optimizer="adamw", lr=1.0, schedule="wsd", warmup_steps=10, decay_fraction=0.25)
    opt, sched = eng.make_optimizer(model, cfg, 1.0, 100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.5)
    assert lrs[10] == lrs[50] == lrs[75] == pytest.approx(1.0)
    assert lrs[76] == pytest.approx(24 / 25) and lrs[99] == pytest.approx(1 / 25)
    assert all(a >= b for a, b in zip(lrs[75:], lrs[76:]))


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_wsd_decay_fraction_must_be_a_fraction(bad):
    from metaocl.config import ConfigError

    with pytest.raises(ConfigError, match="decay_fraction must be in"):
        from_dict(SetInclusionConfig, {"train": {"schedule": "wsd", "optimizer": "adamw", "lr": 1e-3,
                                                 "decay_fraction": bad}}).train.validate()


@pytest.mark.gpu
def test_training_runs_under_bf16_autocast_on_cuda():
    """The authors' bf16: True: the training forward pass autocasts to bf16 on CUDA (fp32 weights)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from metaocl.configs.set_inclusion import SetInclusionTrain
    from metaocl.engine import set_inclusion as engine

    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(16, 8)
            self.out = torch.nn.Linear(8, 16)

        def forward(self, input_ids):
            h = self.out(self.emb(input_ids))
            seen.append(h.dtype)
            return type("O", (), {"logits": h})()

    model = Probe().cuda()
    data = torch.randint(1, 16, (8, 5)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine.train_one_epoch(model, data, opt, None, SetInclusionTrain(), 4, torch.Generator().manual_seed(0))
    assert seen and all(d == torch.bfloat16 for d in seen) and model.out.weight.dtype == torch.float32
