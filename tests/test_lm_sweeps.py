"""LM sweep files validate, and a smoke trial runs end to end through ``experiments.lm.run``
(dataset builder -> tiny model -> stages -> exact match every epoch -> reporter)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metaocl.config import load_sweep
from metaocl.configs.lm import BUILTIN_MODEL_NAMES
from metaocl.experiments import PrintReporter
from metaocl.experiments import lm as lm_runner

torch.set_num_threads(1)

LM_SWEEPS = ["two_stage", "two_stage_trex", "single_stage", "single_stage_trex", "three_stage", "in_context",
             "tag_correlation", "word_order", "model_size", "batch_size", "t5", "t5_single", "nl_tags",
             "data_amount", "grad_alignment"]
FAST = ["data.n_entities=40", "data.entity_attribution=false"]


@pytest.mark.parametrize("name", LM_SWEEPS)
def test_lm_sweep_and_its_smoke_variant_validate(name):
    full = load_sweep(name)
    # what it reproduces: a figure / section of the paper, or the authors' config for experiments the
    # paper text does not report
    assert full.kind == "lm" and any(w in full.description for w in ("Fig.", "section", "appendix", "configs/"))
    assert all(t.config.model.name not in BUILTIN_MODEL_NAMES for t in full.trials())
    smoke = load_sweep(name, smoke=True)
    trials = smoke.trials()
    assert len(smoke.seeds) <= 2 and len(trials) <= 2
    for t in trials:
        assert t.config.model.name in BUILTIN_MODEL_NAMES and t.config.data.source.endswith("_sample")
    assert smoke.trial_resources(cuda_available=True)["gpu"] == 0


def _metric_rows(history):
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in history]


@pytest.mark.slow
def test_two_stage_smoke_runs_end_to_end_and_stage2_seeds_branch_from_one_stage1(tmp_path, monkeypatch):
    monkeypatch.setenv("METAOCL_DATA", str(tmp_path))
    monkeypatch.setenv("METAOCL_TRIAL_CPUS", "1")  # run() sets torch threads from it
    trials = load_sweep("two_stage", smoke=True, overrides=FAST).trials()
    assert [t.seed for t in trials] == [0, 1] and all(t.config.train.stage1_seed == 0 for t in trials)

    first = PrintReporter()
    final = lm_runner.run(trials[0].config, first)
    epochs = trials[0].config.epochs
    assert [r["epoch"] for r in first.history] == list(range(1, sum(epochs) + 1))
    assert [r["stage"] for r in first.history] == [1] * epochs[0] + [2] * epochs[1]
    for key in ("em/qd1consis", "em/qd2incons", "em/d1consis", "em/d2consis", "loss/qd1consis", "train/loss",
                "perf/tokens_per_s", "gap/ocl", "gap/meta_ocl"):
        assert key in final
    assert final["gap/meta_ocl"] == pytest.approx(final["em/d1consis"] - final["em/d2consis"])
    assert first.history[-1] == final and first.history[0]["train/loss"] > first.history[epochs[0] - 1]["train/loss"]
    assert len(list((tmp_path / "smoke_stage1").iterdir())) == 2  # the saved stage-1 model and its lock

    second = PrintReporter()  # stage-2 seed 1: stage 1 replayed from the cache, not retrained
    lm_runner.run(trials[1].config, second)
    assert second.history[: epochs[0]] == first.history[: epochs[0]]

    uninterrupted = PrintReporter()  # the branch equals a run that never left memory
    lm_runner.run(dataclasses.replace(trials[0].config, train=dataclasses.replace(trials[0].config.train, stage1_cache=None)),
                  uninterrupted)
    rows_a, rows_b = _metric_rows(uninterrupted.history), _metric_rows(first.history)
    assert len(rows_a) == len(rows_b)
    for a, b in zip(rows_a, rows_b):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-6) for k in a)


@pytest.mark.slow
def test_stage2_starts_from_the_weights_at_the_end_of_stage1(monkeypatch):
    monkeypatch.setenv("METAOCL_TRIAL_CPUS", "1")
    config = load_sweep("two_stage", smoke=True, overrides=FAST + ["train.stage1_cache=null"]).trials()[0].config
    dataset = lm_runner.engine_dataset(config)
    loaded = lm_runner._load(config, dataset)
    initial = [p.detach().clone() for p in loaded.model.parameters()]
    lm_runner.train_stages(config, PrintReporter(), dataset, loaded, "cpu", last=1)
    end_of_stage1 = [p.detach().clone() for p in loaded.model.parameters()]
    assert max(float((a - b).abs().max()) for a, b in zip(initial, end_of_stage1)) > 1e-3
    # stage 2 with a vanishing learning rate: its weights must stay those at the end of stage 1
    frozen = dataclasses.replace(config, train=dataclasses.replace(config.train, lr=1e-12))
    history: list[dict] = []
    lm_runner.train_stages(frozen, PrintReporter(), dataset, loaded, "cpu", first=2, history=history)
    assert [r["stage"] for r in history] == [2] * config.epochs[1]
    for a, b in zip(end_of_stage1, loaded.model.parameters()):
        torch.testing.assert_close(b.detach(), a, rtol=0, atol=1e-8)


@pytest.mark.slow
def test_gradient_alignment_is_logged_when_enabled(monkeypatch):
    monkeypatch.setenv("METAOCL_TRIAL_CPUS", "1")
    config = load_sweep("grad_alignment", smoke=True, overrides=FAST).trials()[0].config  # the sweep turns it on
    assert config.train.grad_alignment_every == 1 and config.epochs == [2]
    reporter = PrintReporter()
    final = lm_runner.run(config, reporter)
    for key in ("grad/cos_def1_qa", "grad/cos_def2_qa"):
        assert all(-1.0 <= row[key] <= 1.0 for row in reporter.history), key
    assert "grad/cos_def1_qa" in final
