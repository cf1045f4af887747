"""Gradient-alignment diagnostics: correct cosines, and the training step is left exactly as it was."""

from __future__ import annotations

import math

import pytest
import torch

from metaocl.engine.grad_alignment import (
    METRIC_DEF1,
    METRIC_DEF2,
    GradAlignmentMonitor,
    gradient_alignment,
    mean_gradient,
)

torch.set_num_threads(1)


class TinyNet(torch.nn.Module):
    """Dropout (uses the RNG) and BatchNorm (has running statistics): both must stay undisturbed."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.drop = torch.nn.Dropout(0.3)
        self.fc2 = torch.nn.Linear(8, 3)
        self.unused = torch.nn.Linear(2, 2)  # never reached by the loss: zero gradient, no error

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


def ce_loss(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


def _batch(seed, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_cosines_are_finite_and_training_state_is_untouched():
    torch.manual_seed(0)
    model = TinyNet().train()
    # A training step in the middle of gradient accumulation: .grad holds partial sums.
    ce_loss(model, _batch(1)).backward()
    grads_before = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    weights_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bn_before = (model.bn.running_mean.clone(), model.bn.running_var.clone(), int(model.bn.num_batches_tracked))

    rng_state = torch.random.get_rng_state()
    out = gradient_alignment(model, ce_loss, _batch(2), _batch(3), _batch(4))
    after_call = torch.rand(5)
    torch.random.set_rng_state(rng_state)
    assert torch.equal(after_call, torch.rand(5)), "the diagnostic consumed training randomness"

    assert set(out) == {METRIC_DEF1, METRIC_DEF2}
    assert all(math.isfinite(v) and -1.0 <= v <= 1.0 for v in out.values())
    assert model.training
    for n, p in model.named_parameters():
        if grads_before[n] is None:
            assert p.grad is None, n
        else:
            assert torch.equal(p.grad, grads_before[n]), n
        assert torch.equal(p.detach(), weights_before[n]), n
    assert torch.equal(model.bn.running_mean, bn_before[0]) and torch.equal(model.bn.running_var, bn_before[1])
    assert int(model.bn.num_batches_tracked) == bn_before[2]

    # Same inputs, eval-mode measurement: deterministic.
    assert gradient_alignment(model, ce_loss, _batch(2), _batch(3), _batch(4)) == out
    # train_mode=True (dropout on) still leaves the RNG stream and the mode alone.
    model.eval()
    torch.random.set_rng_state(rng_state)
    noisy = gradient_alignment(model, ce_loss, _batch(2), _batch(3), _batch(4), train_mode=True)
    assert not model.training and torch.equal(torch.rand(5), after_call)
    assert all(-1.0 <= v <= 1.0 for v in noisy.values())


def test_cosine_values_on_a_linear_model():
    # f(x) = w.x with w = 0 and squared loss: the gradient is -2 mean(y x), so the same batch gives +1,
    # the batch with negated targets -1, and an orthogonal batch 0.
    model = torch.nn.Linear(3, 1, bias=False)
    torch.nn.init.zeros_(model.weight)

    def mse(m, batch):
        x, y = batch
        return ((m(x).squeeze(-1) - y) ** 2).mean()

    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([1.0, 2.0])
    qa = (x, y)
    out = gradient_alignment(model, mse, qa, (x, -y), qa)
    assert out[METRIC_DEF1] == pytest.approx(1.0) and out[METRIC_DEF2] == pytest.approx(-1.0)
    ortho = (torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([1.0]))
    assert gradient_alignment(model, mse, ortho, None, qa) == {METRIC_DEF1: pytest.approx(0.0)}
    # A list of micro-batches is the mean of their mean gradients (equal sizes -> the full batch's).
    full = mean_gradient(model, mse, qa)
    parts = mean_gradient(model, mse, [(x[:1], y[:1]), (x[1:], y[1:])])
    assert torch.allclose(full[0], parts[0])


def test_monitor_schedule_and_epoch_means():
    torch.manual_seed(0)
    model = TinyNet()
    off = GradAlignmentMonitor(every_steps=0)
    assert not off.due(10) and off.epoch_metrics() == {}
    monitor = GradAlignmentMonitor(every_steps=3)
    assert [s for s in range(1, 10) if monitor.due(s)] == [3, 6, 9]
    a = monitor.measure(model, ce_loss, _batch(2), _batch(3), _batch(4), step=3)
    b = monitor.measure(model, ce_loss, _batch(5), _batch(6), _batch(7), step=6)
    epoch = monitor.epoch_metrics()
    assert epoch[METRIC_DEF1] == pytest.approx((a[METRIC_DEF1] + b[METRIC_DEF1]) / 2)
    assert epoch[METRIC_DEF2] == pytest.approx((a[METRIC_DEF2] + b[METRIC_DEF2]) / 2)
    assert monitor.epoch_metrics() == {} and [s for s, _ in monitor.history] == [3, 6]


def test_tiny_causal_lm_from_config():
    import transformers

    cfg = transformers.GPTNeoXConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(cfg)

    def lm_loss(m, ids):
        return m(input_ids=ids, labels=ids).loss

    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 32, (4, 8), generator=g) for _ in range(3)]
    out = gradient_alignment(model, lm_loss, *batches)
    assert all(math.isfinite(v) and -1.0 <= v <= 1.0 for v in out.values())
    assert all(p.grad is None for p in model.parameters())


def test_authors_paired_statistic_known_answer():
    """The authors' statistic: per variable, cos(definition gradient, each own question's gradient),
    averaged over pairs. With w = 0 and squared loss a one-datapoint gradient is -2 y x."""
    from metaocl.engine.grad_alignment import PairedProbes, paired_cosine

    model = torch.nn.Linear(3, 1, bias=False)
    torch.nn.init.zeros_(model.weight)

    def mse(m, batch):
        x, y = batch
        return ((m(x).squeeze(-1) - y) ** 2).mean()

    e1, e2, e3 = (torch.eye(3)[i : i + 1] for i in range(3))
    one = torch.tensor([1.0])
    same, opposite, ortho = (e1, one), (e1, -one), (e2, one)
    # variable A: definition along e1, questions along e1 (+1) and e2 (0); variable B: e3 vs -e3 (-1)
    probes = PairedProbes([(same, [same, ortho]), ((e3, one), [(e3, -one)])])
    assert paired_cosine(model, mse, probes) == pytest.approx((1.0 + 0.0 - 1.0) / 3)
    out = gradient_alignment(model, mse, PairedProbes([(same, [same])]), PairedProbes([(same, [opposite])]), None)
    assert out == {METRIC_DEF1: pytest.approx(1.0), METRIC_DEF2: pytest.approx(-1.0)}
    # unlike the cosine of mean gradients: the mean of {e1, e2} vs e1 is 1/sqrt(2), the pair mean 1/2
    assert gradient_alignment(model, mse, same, None, [same, ortho])[METRIC_DEF1] == pytest.approx(2 ** -0.5)
    assert paired_cosine(model, mse, PairedProbes([(same, [same, ortho])])) == pytest.approx(0.5)
    assert all(p.grad is None for p in model.parameters())


def test_x1_only_training_keeps_d_definitions_as_untrained_probes(tmp_path, monkeypatch):
    """The authors' gradient-alignment run trains on X1 only; the d1consis / d2consis definitions are
    only probes: the LM runner pairs each with its own questions, one datapoint each."""
    from metaocl.config import from_dict
    from metaocl.configs.lm import LMConfig
    from metaocl.data.qa import build_lm_dataset
    from metaocl.engine.lm_models import build_builtin
    from metaocl.experiments.lm import _alignment_probes

    monkeypatch.setenv("METAOCL_DATA", str(tmp_path))
    cfg = from_dict(LMConfig, {"data": {"source": "cvdb_sample", "n_entities": 60, "stages": "single",
                                        "train_subset": "x1"},
                               "model": {"name": "tiny-gpt-neox"},
                               "train": {"grad_alignment_every": 1, "faithful_padding": True}}, "test")
    dd = build_lm_dataset(cfg.data, 0)
    assert not set(dd["train_1"]["subset"]) & {"d1consis", "d2consis", "d3consis", "no_qd_baseline"}
    assert set(dd["train_defs_d1consis"]["subset"]) == {"d1consis"} and all(dd["train_defs_d1consis"]["is_definition"])
    n_d1 = len(set(dd["d1consis"]["variable"]))
    assert len(dd["train_defs_d1consis"]) == n_d1 > 0
    torch.manual_seed(0)
    loaded = build_builtin("tiny-gpt-neox", [t for s in dd.values() for t in s["text"]])
    probes = _alignment_probes(cfg, dd, loaded, "cpu", False)
    assert len(probes.def1.pairs) == n_d1 and all(len(qs) == 6 for _, qs in probes.def1.pairs)
    assert all(b.input_ids.shape[0] == 1 for d, qs in probes.def1.pairs for b in [d, *qs])
    out = GradAlignmentMonitor(every_steps=1).measure(loaded.model, probes.loss_fn, probes.def1, probes.def2, probes.qa)
    assert set(out) == {METRIC_DEF1, METRIC_DEF2} and all(-1.0 <= v <= 1.0 for v in out.values())
