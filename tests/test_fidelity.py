"""Every sweep resolves to the configuration that docs/fidelity.md states, field by field.

Each sweep's trials are resolved (``load_sweep(NAME).trials()``) and condensed into the fields that
decide the result (model, data, fractions, entities, epochs per stage, batch, optimizer, lr,
schedule, seeds, evaluation, grid); the expected values below are the table of docs/fidelity.md.
An edit that changes what a sweep runs fails here until the table (and this pin) say so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from metaocl.config import known_sweeps, load_sweep

DOC = Path(__file__).resolve().parent.parent / "docs" / "fidelity.md"

# X2 fractions (d1consis, d2consis, d3consis, no_qd_baseline) and X1 (qd1consis, qd2incons, q, q_no_replacement_baseline)
D3 = (0.08, 0.08, 0.08, 0.06)
NO_D3 = (0.1, 0.1, 0.0, 0.1)
TABLE1_X1 = (0.25, 0.25, 0.1, 0.1)
HF_ADAFACTOR = ("adafactor", 5e-05, "linear", 0, 0.0, 1.0)  # optimizer, lr, schedule, warmup, weight decay, clip
STAGE1_SEEDS_20, STAGE1_SEEDS_10 = tuple(range(20)), tuple(range(10))


def _uniq(values):
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return tuple(out)


def summarize(sweep) -> dict:
    """The deciding fields of a sweep, each as the tuple of its distinct values over all trials."""
    trials = sweep.trials()
    cfgs = [t.config for t in trials]
    out = {"trials": len(trials), "seeds": tuple(sweep.seeds), "grid": tuple(sweep.grid),
           "points": tuple(tuple(p) for p in _uniq(tuple(p) for p in sweep.points))}
    if sweep.kind == "lm":
        out.update(
            model=_uniq(c.model.name for c in cfgs),
            from_scratch=_uniq(c.model.from_scratch for c in cfgs),
            source=_uniq(c.data.source for c in cfgs),
            stages=_uniq(c.data.stages for c in cfgs),
            entities=_uniq(c.data.resolved_n_entities for c in cfgs),
            x1=_uniq((s.qd1consis, s.qd2incons, s.q, s.q_no_replacement_baseline) for s in (c.data.subsets for c in cfgs)),
            x2=_uniq((s.d1consis, s.d2consis, s.d3consis, s.no_qd_baseline) for s in (c.data.subsets for c in cfgs)),
            p=_uniq(c.data.subsets.p for c in cfgs),
            word_order=_uniq(c.data.word_order for c in cfgs),
            tags=_uniq(c.data.tags.kind for c in cfgs),
            in_context=_uniq(c.data.in_context for c in cfgs),
            entity_attribution=_uniq(c.data.entity_attribution for c in cfgs),
            # H4's data fields; their defaults are the authors' (absent = that default)
            braces=_uniq(getattr(c.data, "braces", True) for c in cfgs),
            resplit_x2=_uniq(getattr(c.data, "resplit_x2_per_seed", True) for c in cfgs),
            trex_construction=_uniq(getattr(c.data, "trex_construction", "authors") for c in cfgs
                                    if c.data.source.startswith("trex")),
            batch_epochs=_uniq((c.train.batch_size, tuple(c.epochs)) for c in cfgs),
            optimizer=_uniq((c.train.optimizer, c.train.lr, c.train.lr_schedule, c.train.warmup_steps,
                             c.train.weight_decay, c.train.max_grad_norm) for c in cfgs),
            padding=_uniq((c.train.faithful_padding, c.train.block_size) for c in cfgs),
            stage1_seeds=_uniq(c.stage1_seed for c in cfgs),
            stage1_cache=_uniq(c.train.stage1_cache is not None for c in cfgs),
            max_new_tokens=_uniq(c.eval.resolved_max_new_tokens(c.data.source) for c in cfgs),
            eval_every=_uniq(c.eval.every for c in cfgs),
            grad_alignment_every=_uniq(c.train.grad_alignment_every for c in cfgs),
        )
    elif sweep.kind == "set_inclusion":
        d, m, t = cfgs[0].data, cfgs[0].model, cfgs[0].train
        out.update(
            data=_uniq((c.data.n_variables, c.data.max_number, c.data.list_length, c.data.var_length,
                        c.data.train_questions, c.data.test_questions) for c in cfgs),
            fractions=_uniq((c.data.qd1consis, c.data.qd2incons, c.data.d1consis, c.data.d2consis, c.data.d3consis)
                            for c in cfgs),
            model=_uniq((c.model.hidden_size, c.model.num_hidden_layers, c.model.num_attention_heads,
                         c.model.intermediate_size, c.model.tie_embeddings) for c in cfgs),
            epochs=_uniq((c.train.stage1_epochs, c.train.stage2_epochs, c.train.joint) for c in cfgs),
            batch=_uniq((c.train.batch_size, c.train.stage2_batch_size) for c in cfgs),
            optimizer=_uniq((c.train.optimizer, c.train.lr, c.train.schedule, c.train.warmup_steps,
                             c.train.weight_decay, c.train.grad_clip) for c in cfgs),
            loss_on=_uniq(c.train.loss_on for c in cfgs),
            eval=_uniq((c.eval.scoring, c.eval.every) for c in cfgs),
        )
    elif sweep.kind == "mnist":
        out.update(
            model=_uniq((c.model.name, c.model.pretrained) for c in cfgs),
            n_pairs=_uniq(c.data.n_pairs for c in cfgs),
            train=_uniq((c.train.steps, c.train.batch_size, c.train.lr, c.train.warmup_steps, c.train.weight_decay)
                        for c in cfgs),
        )
    return out


def _lm(**kw) -> dict:
    """An LM row: the authors' common settings, overridden per sweep."""
    row = dict(from_scratch=(False,), source=("cvdb",), stages=("two_stage",), entities=(4000,), x1=(TABLE1_X1,),
               x2=(NO_D3,), p=(None,), word_order=("TVE",), tags=("random",), in_context=(False,),
               entity_attribution=(True,), braces=(True,), resplit_x2=(True,), trex_construction=(),
               optimizer=(HF_ADAFACTOR,), padding=((True, 48),), stage1_cache=(True,), max_new_tokens=(8,),
               eval_every=(1,), grad_alignment_every=(0,), points=())
    row.update(kw)
    return row


P28 = "EleutherAI/pythia-2.8b-deduped"
P1B = "EleutherAI/pythia-1b-deduped"
SI_DATA = ((8000, 98, 8, 3, 12, 12),)
PYTHIA_70M = ((512, 6, 8, 2048, False),)

EXPECTED = {
    "two_stage": _lm(trials=100, seeds=tuple(range(5)), grid=("train.stage1_seed",), model=(P28,), x2=(D3,),
                     batch_epochs=((256, (20, 10)),), stage1_seeds=STAGE1_SEEDS_20),
    "two_stage_trex": _lm(trials=30, seeds=(0, 1, 2), grid=("train.stage1_seed",), model=(P28,), source=("trex",),
                          entities=(6900,), x2=(D3,), trex_construction=("authors",), batch_epochs=((256, (20, 10)),),
                          padding=((True, 64),), stage1_seeds=STAGE1_SEEDS_10, max_new_tokens=(16,)),
    "single_stage": _lm(trials=10, seeds=tuple(range(10)), grid=(), model=(P28,), stages=("single",), x2=(D3,),
                        batch_epochs=((256, (20,)),), stage1_seeds=tuple(range(10)), stage1_cache=(False,)),
    "single_stage_trex": _lm(trials=10, seeds=tuple(range(10)), grid=(), model=(P28,), source=("trex",),
                             stages=("single",), entities=(6900,), x2=(D3,), trex_construction=("authors",),
                             batch_epochs=((256, (20,)),), padding=((True, 64),), stage1_seeds=tuple(range(10)),
                             stage1_cache=(False,), max_new_tokens=(16,)),
    "three_stage": _lm(trials=30, seeds=(0, 1, 2), grid=("train.stage1_seed",), model=(P28,), stages=("three_stage",),
                       batch_epochs=((256, (20, 20, 10)),), stage1_seeds=STAGE1_SEEDS_10, max_new_tokens=(20,)),
    "in_context": _lm(trials=20, seeds=tuple(range(20)), grid=(), model=(P28,), stages=("single",), x2=(D3,),
                      in_context=(True,), entity_attribution=(False,), batch_epochs=((256, (20,)),),
                      padding=((True, 72),), stage1_seeds=tuple(range(20)), stage1_cache=(False,)),
    "tag_correlation": _lm(
        trials=360, seeds=(0, 1, 2), grid=("train.stage1_seed",), model=(P1B, P28), x2=(NO_D3, D3),
        p=(0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.5), batch_epochs=((256, (20, 10)),), stage1_seeds=STAGE1_SEEDS_10,
        points=(("model.name", "data.subsets.p"),
                ("model.name", "data.subsets.p", "data.subsets.d1consis", "data.subsets.d2consis",
                 "data.subsets.d3consis", "data.subsets.no_qd_baseline"))),
    "word_order": _lm(trials=360, seeds=(0, 1, 2), grid=("data.word_order", "train.stage1_seed"), model=(P28,),
                      word_order=("TVE", "TEV", "VTE", "VET", "ETV", "EVT"), batch_epochs=((256, (20, 10)),),
                      stage1_seeds=STAGE1_SEEDS_20),
    "model_size": _lm(
        trials=600, seeds=tuple(range(5)), grid=("model.name", "train.stage1_seed"),
        model=tuple(f"EleutherAI/pythia-{s}-deduped" for s in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"))
        + ("EleutherAI/gpt-neo-125m", "EleutherAI/gpt-neo-1.3B", "EleutherAI/gpt-neo-2.7B", "meta-llama/Llama-2-7b-hf"),
        batch_epochs=((256, (20, 10)),), stage1_seeds=STAGE1_SEEDS_10),
    "batch_size": _lm(
        trials=60, seeds=tuple(range(5)), grid=(), model=(P1B,), stages=("single",),
        batch_epochs=((16, (30,)), (32, (30,)), (64, (30,)), (128, (40,)), (256, (60,)), (512, (60,)), (1024, (60,)),
                      (2048, (60,)), (4096, (60,)), (8192, (120,)), (16384, (120,)), (0, (240,))),
        stage1_seeds=tuple(range(5)), stage1_cache=(False,), eval_every=(1, 10),
        points=(("train.batch_size", "train.epochs"), ("train.batch_size", "train.epochs", "eval.every"))),
    "t5": _lm(trials=100, seeds=tuple(range(5)), grid=("data.source", "train.stage1_seed"), model=("google-t5/t5-3b",),
              source=("cvdb", "trex"), entities=(4000, 6900), x2=(D3,), trex_construction=("authors",),
              batch_epochs=((256, (20, 10)),), padding=((False, 48),), stage1_seeds=STAGE1_SEEDS_10,
              max_new_tokens=(8, 16)),
    "t5_single": _lm(trials=20, seeds=tuple(range(10)), grid=("data.source",), model=("google-t5/t5-3b",),
                     source=("cvdb", "trex"), stages=("single",), entities=(4000, 6900), x2=(D3,),
                     trex_construction=("authors",), batch_epochs=((256, (20,)),), padding=((False, 48),),
                     stage1_seeds=tuple(range(10)), stage1_cache=(False,), max_new_tokens=(8, 16)),
    "nl_tags": _lm(trials=10, seeds=tuple(range(10)), grid=(), model=(P28,), stages=("single",),
                   x1=((0.0, 0.0, 0.1, 0.1),), x2=((0.4, 0.4, 0.0, 0.0),), word_order=("VTE",), tags=("natural",),
                   batch_epochs=((512, (20,)),), stage1_seeds=tuple(range(10)), stage1_cache=(False,)),
    "data_amount": _lm(trials=400, seeds=tuple(range(5)), grid=("data.n_entities", "train.stage1_seed"), model=(P1B,),
                       entities=(250, 500, 1000, 2000), entity_attribution=(False,), batch_epochs=((256, (20, 10)),),
                       stage1_seeds=STAGE1_SEEDS_20, max_new_tokens=(20,)),
    "grad_alignment": _lm(trials=10, seeds=tuple(range(10)), grid=(), model=(P1B,), stages=("single",),
                          x1=((0.25, 0.25, 0.1, 0.12),), x2=((0.1, 0.1, 0.0, 0.08),), batch_epochs=((256, (20,)),),
                          stage1_seeds=tuple(range(10)), stage1_cache=(False,), eval_every=(2,),
                          grad_alignment_every=(66,)),
    "set_inclusion": dict(trials=20, seeds=tuple(range(20)), grid=(), points=(), data=SI_DATA,
                          fractions=((0.4, 0.4, 0.1, 0.1, 0.0),), model=PYTHIA_70M, epochs=((100, 40, False),),
                          batch=((512, None),), optimizer=(("adafactor", 5e-05, "linear", 0, 0.0, 1.0),),
                          loss_on=("all",), eval=(("argmax", 5),)),
    "set_inclusion_d3consis": dict(trials=20, seeds=tuple(range(20)), grid=(), points=(), data=SI_DATA,
                                   fractions=((0.35, 0.35, 0.1, 0.1, 0.1),), model=PYTHIA_70M,
                                   epochs=((100, 40, False),), batch=((512, None),),
                                   optimizer=(("adafactor", 5e-05, "linear", 0, 0.0, 1.0),), loss_on=("all",),
                                   eval=(("argmax", 5),)),
    "mnist": dict(trials=50, seeds=tuple(range(10)), grid=("data.n_pairs",), points=(),
                  model=(("convnextv2_tiny", False),), n_pairs=(100, 300, 1000, 3000, 10000),
                  train=((50000, 256, 0.0004, 2000, 0.05),)),
}


def test_every_sweep_is_pinned_and_in_the_fidelity_table():
    """A new sweep needs a row in docs/fidelity.md and a pin here; quickstart is pinned below."""
    assert set(known_sweeps()) - {"quickstart"} == set(EXPECTED)
    doc = DOC.read_text()
    for name in known_sweeps():
        assert f"`{name}`" in doc, f"docs/fidelity.md has no row for {name}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sweep_resolves_to_the_fidelity_table(name):
    got = summarize(load_sweep(name))
    want = EXPECTED[name]
    assert {k: got[k] for k in want} == want


def test_quickstart_pins_what_it_uses_so_changed_defaults_cannot_change_it():
    """The CPU demo (a documented deviation) names its optimizer, lr and schedule itself."""
    raw = load_sweep("quickstart").base["train"]
    assert {"optimizer", "lr", "schedule"} <= set(raw)
    if raw["schedule"] == "wsd":  # its decay share too
        assert "decay_fraction" in raw
    assert load_sweep("quickstart", smoke=True).trials()[0].config.train.schedule == raw["schedule"]


@pytest.mark.slow
def test_set_inclusion_default_optimizer_is_hf_trainer_adafactor_with_linear_decay():
    """Known answer: the Trainer's Adafactor (no relative step, no parameter scaling) at 5e-5, linear to 0."""
    import torch
    from transformers.optimization import Adafactor

    from metaocl.configs.set_inclusion import SetInclusionTrain
    from metaocl.engine import set_inclusion as engine

    model = torch.nn.Linear(4, 4)
    opt, sched = engine.make_optimizer(model, SetInclusionTrain(), SetInclusionTrain().lr, total_steps=10)
    assert isinstance(opt, Adafactor)
    group = opt.param_groups[0]
    assert (group["lr"], group["relative_step"], group["scale_parameter"], group["warmup_init"]) == (5e-5, False, False, False)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([5e-5 * (10 - i) / 10 for i in range(10)])
    # the relative-step mode stays an option (lr null)
    opt, sched = engine.make_optimizer(model, SetInclusionTrain(lr=None), None, total_steps=10)
    assert opt.param_groups[0]["relative_step"] and sched is None


def test_block_size_without_faithful_padding_is_a_one_line_error(tmp_path):
    from metaocl.config import ConfigError

    with pytest.raises(ConfigError, match=r"block_size: 64 has no effect without faithful_padding") as e:
        load_sweep("two_stage_trex", overrides=["train.faithful_padding=false"])
    assert "\n" not in str(e.value)
    load_sweep("two_stage_trex", overrides=["train.faithful_padding=false", "train.block_size=48"])  # default: fine


def test_paper_values_match_only_the_pretrained_deduped_headline():
    from metaocl.config import flatten
    from metaocl.report.paper_values import HEADLINE_PYTHIA_2_8B_CVDB, match_reference

    # the params a two_stage trial logs (flattened resolved config, values as strings)
    params = {k: str(v) for k, v in flatten(load_sweep("two_stage").trials()[0].config_dict()).items()}
    assert match_reference("lm", params, 2) is HEADLINE_PYTHIA_2_8B_CVDB
    assert "Fig. 2" in HEADLINE_PYTHIA_2_8B_CVDB.source and "read off the figure" in HEADLINE_PYTHIA_2_8B_CVDB.source
    assert "experiments.md" not in HEADLINE_PYTHIA_2_8B_CVDB.source
    for change in ({"model.name": "EleutherAI/pythia-2.8b"}, {"model.from_scratch": "True"},
                   {"model.name": "EleutherAI/pythia-1b-deduped"}, {"data.source": "cvdb_sample"},
                   {"data.word_order": "VTE"}, {"data.subsets.p": "0.8"}):
        assert match_reference("lm", {**params, **change}, 2) is None, change
    assert match_reference("lm", params, 1) is None
    assert match_reference("set_inclusion", params, 2) is None
