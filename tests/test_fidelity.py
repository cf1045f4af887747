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
            accumulation=_uniq(c.train.grad_accumulation for c in cfgs),
            optimizer=_uniq((c.train.optimizer, c.train.lr, c.train.lr_schedule, c.train.warmup_steps,
                             c.train.weight_decay, c.train.max_grad_norm) for c in cfgs),
            padding=_uniq((c.train.faithful_padding, c.train.block_size) for c in cfgs),
            stage1_seeds=_uniq(c.stage1_seed for c in cfgs),
            stage1_cache=_uniq(c.train.stage1_cache is not None for c in cfgs),
            max_new_tokens=_uniq(c.eval.resolved_max_new_tokens(c.data.source) for c in cfgs),
            eval_every=_uniq(c.eval.every for c in cfgs),
            grad_alignment_every=_uniq(c.train.grad_alignment_every for c in cfgs),
            grad_alignment_statistic=_uniq(c.train.grad_alignment_statistic for c in cfgs
                                           if c.train.grad_alignment_every),
            train_subset=_uniq(c.data.train_subset for c in cfgs),
            label_block=_uniq(c.resolved_label_block_size() for c in cfgs if c.data.seq2seq and c.train.faithful_padding),
            rounding=_uniq((c.data.subset_rounding, c.data.held_out_pairing) for c in cfgs),
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
            bf16=_uniq(c.train.bf16 for c in cfgs),
            eval=_uniq((c.eval.scoring, c.eval.every) for c in cfgs),
            stage1_seeds=_uniq(c.stage1_seed for c in cfgs),
            stage2_from_epoch=_uniq(c.train.stage2_from_epoch for c in cfgs),
            vocabulary=_uniq(c.data.vocabulary for c in cfgs),
            max_eval_samples=_uniq(c.eval.max_samples for c in cfgs),
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
               eval_every=(1,), grad_alignment_every=(0,), points=(), accumulation=(2,),
               grad_alignment_statistic=(), train_subset=("all",), rounding=(("authors", True),))
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
        accumulation=(1, 2),  # 1B: 256 x 1; 2.8B: 128 x 2
        points=(("model.name", "data.subsets.p"),
                ("model.name", "train.grad_accumulation", "data.subsets.p", "data.subsets.d1consis", "data.subsets.d2consis",
                 "data.subsets.d3consis", "data.subsets.no_qd_baseline"))),
    "word_order": _lm(trials=360, seeds=(0, 1, 2), grid=("data.word_order", "train.stage1_seed"), model=(P28,),
                      word_order=("TVE", "TEV", "VTE", "VET", "ETV", "EVT"), batch_epochs=((256, (20, 10)),),
                      stage1_seeds=STAGE1_SEEDS_20),
    "model_size": _lm(
        trials=600, seeds=tuple(range(5)), grid=("train.stage1_seed",), points=(("model.name", "train.grad_accumulation"),),
        accumulation=(2, 8),  # 128 x 2; Pythia-6.9B 32 x 8
        model=tuple(f"EleutherAI/pythia-{s}-deduped" for s in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"))
        + ("EleutherAI/gpt-neo-125m", "EleutherAI/gpt-neo-1.3B", "EleutherAI/gpt-neo-2.7B", "meta-llama/Llama-2-7b-hf"),
        batch_epochs=((256, (20, 10)),), stage1_seeds=STAGE1_SEEDS_10),
    "batch_size": _lm(
        trials=60, seeds=tuple(range(5)), grid=(), model=(P1B,), stages=("single",),
        batch_epochs=((16, (30,)), (32, (30,)), (64, (30,)), (128, (40,)), (256, (60,)), (512, (60,)), (1024, (60,)),
                      (2048, (60,)), (4096, (60,)), (8192, (120,)), (16384, (120,)), (32768, (240,))),
        stage1_seeds=tuple(range(5)), stage1_cache=(False,), eval_every=(1, 10), accumulation=(1, 2, 4, 8, 16, 32, 64),
        points=(("train.batch_size", "train.epochs"), ("train.batch_size", "train.grad_accumulation", "train.epochs"),
                ("train.batch_size", "train.grad_accumulation", "train.epochs", "eval.every"))),
    "t5": _lm(trials=100, seeds=tuple(range(5)), grid=("train.stage1_seed",),
              points=(("data.source", "train.stage2_from_epoch"),
                      ("data.source", "train.stage2_from_epoch", "train.authors_save_each_epochs")), model=("google-t5/t5-3b",),
              source=("cvdb", "trex"), entities=(4000, 6900), x2=(D3,), trex_construction=("authors",),
              batch_epochs=((256, (20, 10)),), padding=((True, 48),), stage1_seeds=STAGE1_SEEDS_10,
              max_new_tokens=(8, 16), accumulation=(4,), label_block=(8, 16)),
    "t5_single": _lm(trials=20, seeds=tuple(range(10)), grid=("data.source",), model=("google-t5/t5-3b",),
                     source=("cvdb", "trex"), stages=("single",), entities=(4000, 6900), x2=(D3,),
                     trex_construction=("authors",), batch_epochs=((256, (20,)),), padding=((True, 48),),
                     stage1_seeds=tuple(range(10)), stage1_cache=(False,), max_new_tokens=(8, 16), accumulation=(4,),
                     label_block=(8, 16)),
    "nl_tags": _lm(trials=10, seeds=tuple(range(10)), grid=(), model=(P28,), stages=("single",),
                   x1=((0.0, 0.0, 0.1, 0.1),), x2=((0.4, 0.4, 0.0, 0.0),), word_order=("VTE",), tags=("natural",),
                   batch_epochs=((512, (20,)),), stage1_seeds=tuple(range(10)), stage1_cache=(False,), accumulation=(16,)),
    "data_amount": _lm(trials=400, seeds=tuple(range(5)), grid=("train.stage1_seed",),
                       points=(("data.n_entities",), ("data.n_entities", "train.stage2_from_epoch")), model=(P1B,),
                       entities=(250, 500, 1000, 2000), entity_attribution=(False,), batch_epochs=((256, (20, 10)),),
                       stage1_seeds=STAGE1_SEEDS_20, max_new_tokens=(20,), accumulation=(1,)),
    "grad_alignment": _lm(trials=10, seeds=tuple(range(10)), grid=(), model=(P1B,), stages=("single",),
                          x1=((0.25, 0.25, 0.1, 0.12),), x2=((0.1, 0.1, 0.0, 0.08),), batch_epochs=((256, (20,)),),
                          stage1_seeds=tuple(range(10)), stage1_cache=(False,), eval_every=(2,),
                          grad_alignment_every=(130,), accumulation=(1,), grad_alignment_statistic=("authors",),
                          train_subset=("x1",)),
    "set_inclusion": dict(trials=60, seeds=(0, 1, 2), grid=("train.stage1_seed",), points=(), data=SI_DATA,
                          fractions=((0.4, 0.4, 0.1, 0.1, 0.0),), model=PYTHIA_70M, epochs=((100, 40, False),),
                          batch=((512, None),), optimizer=(("adafactor", 5e-05, "linear", 0, 0.0, 1.0),),
                          loss_on=("all",), eval=(("argmax", 5),), bf16=(True,), stage1_seeds=STAGE1_SEEDS_20,
                          stage2_from_epoch=(None,), vocabulary=("all_names",), max_eval_samples=(20_000,)),
    "set_inclusion_d3consis": dict(trials=60, seeds=(0, 1, 2), grid=("train.stage1_seed",), points=(), data=SI_DATA,
                                   fractions=((0.35, 0.35, 0.1, 0.1, 0.1),), model=PYTHIA_70M,
                                   epochs=((100, 40, False),), batch=((512, None),),
                                   optimizer=(("adafactor", 5e-05, "linear", 0, 0.0, 1.0),), loss_on=("all",),
                                   eval=(("argmax", 5),), bf16=(True,), stage1_seeds=STAGE1_SEEDS_20,
                                   stage2_from_epoch=(None,), vocabulary=("all_names",), max_eval_samples=(20_000,)),
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


# ------------------------------------------------------------------------------------------------
# Optimizer steps per run: the authors' arithmetic
# ------------------------------------------------------------------------------------------------
# The authors' configs/vary_bs/pythia-1b/pythia1b_cvdb_bs{B}_1stage.yaml (bs32k = B 32768):
# B -> (per_device_train_batch_size, gradient_accumulation_steps, num_train_epochs).
AUTHORS_VARY_BS = {16: (16, 1, 30), 32: (32, 1, 30), 64: (64, 1, 30), 128: (128, 1, 40), 256: (256, 1, 60),
                   512: (512, 1, 60), 1024: (512, 2, 60), 2048: (512, 4, 60), 4096: (512, 8, 60),
                   8192: (512, 16, 120), 16384: (512, 32, 120), 32768: (512, 64, 240)}
# Their single-stage CVDB training set at 4000 entities, fractions .25/.25/.1/.1 (X1, 5 of 6
# questions each) and .1/.1 definitions: (1000 + 1000) x (5 + 1 definition) + 400 x 5 + 400 x 5 + 400 + 400.
VARY_BS_ROWS = 16_800
# Optimizer steps of a run under their Trainer: max_steps = epochs x max(1, ceil(rows / per_device) // gas).
AUTHORS_STEPS = {16: 31_500, 32: 15_750, 64: 7_890, 128: 5_280, 256: 3_960, 512: 1_980, 1024: 960, 2048: 480,
                 4096: 240, 8192: 240, 16384: 120, 32768: 240}
# configs/is_isnt_exps/pythia28_bs512_2nd_stage.yaml: 32 x 16, 20 epochs on 1600 + 1600 definitions
# and 400 x 5 + 400 x 5 questions = 7,200 rows (7,200 % 512 = 32: one 32-row step per epoch without accumulation).
NL_TAGS = dict(rows=7_200, per_device=32, gas=16, epochs=20, steps=280)


def hf_trainer_step_rows(n_rows: int, per_device: int, gas: int, epochs: int) -> list[int]:
    """Rows per optimizer step under the Hugging Face Trainer of 2023-24 (transformers 4.27-4.45,
    ``_inner_training_loop``), written out literally: ``total_batched_samples`` counts micro-batches
    across epochs, a step when it is a multiple of ``gas`` or at the last micro-batch of an epoch
    with no more than ``gas`` of them; stop at ``max_steps``."""
    steps_in_epoch = -(-n_rows // per_device)
    max_steps = epochs * max(1, steps_in_epoch // gas)
    total_batched_samples, out, rows = 0, [], 0
    for _ in range(epochs):
        for step in range(steps_in_epoch):
            total_batched_samples += 1
            rows += min(per_device, n_rows - step * per_device)
            if total_batched_samples % gas == 0 or (steps_in_epoch <= gas and step + 1 == steps_in_epoch):
                out.append(rows)
                rows = 0
                if len(out) >= max_steps:
                    return out
    return out


def our_step_rows(n_rows: int, batch: int, gas: int, epochs: int) -> list[int]:
    """Rows per optimizer step of metaocl.engine.lm's stepping (:class:`Accumulation`'s plan, as
    ``train_one_epoch`` follows it; tests/test_lm_engine.py checks that on a real model)."""
    from metaocl.engine.lm import Accumulation, stage_steps

    size = batch // gas
    n_slices = -(-n_rows // size)
    acc = Accumulation(every=gas, max_steps=stage_steps(n_rows, batch, gas, epochs))
    out, rows = [], 0
    for _ in range(epochs):
        for i, step in acc.plan(n_slices):
            rows += min(size, n_rows - i * size)
            if step:
                out.append(rows)
                rows = 0
    return out


def test_vary_bs_training_set_is_the_authors_16800_rows():
    from metaocl.configs.lm_data import LMDataConfig
    from metaocl.data.qa import subset_sizes

    cfg = load_sweep("batch_size").trials()[0].config.data
    sizes = subset_sizes(cfg.subsets.resolved(), 4000)
    x1 = sizes["qd1consis"] + sizes["qd2incons"]
    rows = x1 * 6 + (sizes["q"] + sizes["q_no_replacement_baseline"]) * 5 + sizes["d1consis"] + sizes["d2consis"]
    assert rows == VARY_BS_ROWS and sizes.get("no_qd_baseline", 0) == 400 and isinstance(cfg, LMDataConfig)


def test_batch_size_sweep_takes_the_authors_optimizer_steps_of_the_authors_size():
    """Every point of the Fig. 6 sweep: batch, accumulation and epochs are the authors' and so are
    the number of optimizer steps and the rows in each (no extra short step at an epoch end)."""
    from metaocl.engine.lm import stage_steps

    points = {}
    for t in load_sweep("batch_size").trials():
        c = t.config
        points[c.train.batch_size] = (c.train.batch_size // c.train.grad_accumulation, c.train.grad_accumulation,
                                      c.epochs[0])
    assert points == AUTHORS_VARY_BS
    for batch, (per_device, gas, epochs) in AUTHORS_VARY_BS.items():
        want = hf_trainer_step_rows(VARY_BS_ROWS, per_device, gas, epochs)
        assert len(want) == AUTHORS_STEPS[batch] == stage_steps(VARY_BS_ROWS, batch, gas, epochs), batch
        assert our_step_rows(VARY_BS_ROWS, batch, gas, epochs) == want, batch
    # e.g. 4096: 240 steps of 4096 rows (the 416-row micro-batches ride inside them); full batch:
    # a step at every epoch end plus one wherever 64 micro-batches fill up mid-epoch, stopped at 240
    assert set(our_step_rows(VARY_BS_ROWS, 4096, 8, 60)) <= {4096, 4096 - 96}
    full = our_step_rows(VARY_BS_ROWS, 32768, 64, 240)
    assert len(full) == 240 and sum(full) < 240 * VARY_BS_ROWS


def test_nl_tags_takes_the_authors_steps_without_a_32_row_step():
    from metaocl.engine.lm import stage_steps

    c = load_sweep("nl_tags").trials()[0].config
    gas = c.train.grad_accumulation
    assert (c.train.batch_size // gas, gas, c.epochs[0]) == (NL_TAGS["per_device"], NL_TAGS["gas"], NL_TAGS["epochs"])
    want = hf_trainer_step_rows(NL_TAGS["rows"], NL_TAGS["per_device"], NL_TAGS["gas"], NL_TAGS["epochs"])
    assert len(want) == NL_TAGS["steps"] == stage_steps(NL_TAGS["rows"], c.train.batch_size, gas, c.epochs[0])
    assert our_step_rows(NL_TAGS["rows"], c.train.batch_size, gas, c.epochs[0]) == want == [512] * 280


# ------------------------------------------------------------------------------------------------
# Where stage 2 starts: the authors' string-sorted checkpoints and the plotted "cpt20_" runs
# ------------------------------------------------------------------------------------------------
def authors_stage2_start(rows: int, per_device: int, gas: int, epochs: int, save_each: int) -> dict[int, int]:
    """{label: stage-1 epoch} of the authors' stage-2 runs, in their config's terms (per-device batch x
    accumulation): :func:`metaocl.engine.lm.authors_checkpoint_labels`, checked here on known answers."""
    from metaocl.engine.lm import authors_checkpoint_labels

    return authors_checkpoint_labels(rows, per_device * gas, gas, epochs, save_each)


# (stage-1 rows of our builder at the authors' sizes, per-device batch, accumulation, stage-1 epochs,
# save_each_epochs) from configs/base_exps/pythia28b_cvdb_bs256_2stage.yaml, t5_cvdb_bs256_2stage.yaml,
# definition_order_exps/pythia_cvdb_bs256_2stage_28b_*.yaml, def_tag_and_consistency_correlation_exps/
# pythia{1b,28b}_cvdb_bs256_2stage_correlation*.yaml, vary_data_amount_exps/pythia1b_cvdb_bs256_2stage_*Ents.yaml
STAGE2_START = {
    "two_stage": ((16_000, 128, 2, 20, 5), 15),
    "t5 cvdb": ((16_000, 64, 4, 20, 5), 15),
    "word_order": ((16_000, 128, 2, 20, 10), 10),
    "tag_correlation 1b": ((16_000, 256, 1, 20, 10), 10),
    "tag_correlation 2.8b": ((16_000, 128, 2, 20, 10), 10),
    "data_amount 250": ((994, 256, 1, 20, 10), 20),
    "data_amount 500": ((2_000, 256, 1, 20, 10), 10),
    "data_amount 1000": ((4_000, 256, 1, 20, 10), 20),
    "data_amount 2000": ((8_000, 256, 1, 20, 10), 20),
}


def test_stage2_start_epoch_of_each_figure_by_the_authors_rule():
    """docs/fidelity.md, "Where stage 2 starts": the run plotted as cpt20 and its stage-1 epoch."""
    from metaocl.data.qa import subset_sizes

    for name, (args, epoch) in STAGE2_START.items():
        assert authors_stage2_start(*args)[20] == epoch, name
    assert authors_stage2_start(16_000, 128, 2, 20, 5) == {5: 20, 10: 5, 15: 10, 20: 15}
    # set inclusion (num_choice_exps/pythia70m_tokpervar_bs512_n8_i1.yaml): no cpt20 label at all
    assert authors_stage2_start(83_200, 512, 1, 100, 25) == {25: 75, 50: 100, 75: 25, 100: 50}
    # the stage-1 rows: X1 entities with a definition x 6 (5 questions + 1) + the others x 5
    for n, rows in ((4000, 16_000), (250, 994), (500, 2_000), (1000, 4_000), (2000, 8_000)):
        sizes = subset_sizes(load_sweep("two_stage").trials()[0].config.data.subsets.resolved(), n)
        assert (sizes["qd1consis"] + sizes["qd2incons"]) * 6 + (sizes["q"] + sizes["q_no_replacement_baseline"]) * 5 == rows


def test_trex_stage2_start_bands_by_stage1_rows():
    """T-REx (save_each_epochs 5; pythia28b_trex_bs256_2stage.yaml 128 x 2, t5_trex_bs256_2stage.yaml
    64 x 4): which stage-1 epoch their cpt20 run starts from, by the stage-1 rows R (docs/fidelity.md)."""
    bands = {(4_993, 12_672): 20, (12_673, 17_024): 15, (17_025, 25_472): 10, (25_473, 51_072): 5,
             (51_073, 127_872): 20}
    for (lo, hi), epoch in bands.items():
        for rows in (lo, hi):
            assert authors_stage2_start(rows, 128, 2, 20, 5)[20] == epoch, rows
        assert authors_stage2_start(lo - 1, 128, 2, 20, 5)[20] != epoch
    for rows, epoch in ((5_057, 20), (12_737, 15), (17_025, 10), (25_537, 5), (51_137, 20)):  # T5: 64 x 4
        assert authors_stage2_start(rows, 64, 4, 20, 5)[20] == epoch
        assert authors_stage2_start(rows - 1, 64, 4, 20, 5)[20] != epoch


def test_sweeps_start_stage2_where_the_figure_did():
    """Once train.stage2_from_epoch exists, the sweeps carry the values of the rule above."""
    from metaocl.configs.lm import TrainConfig

    if "stage2_from_epoch" not in TrainConfig.__dataclass_fields__:
        pytest.skip("train.stage2_from_epoch is not in this build")
    want = {"two_stage": {15}, "word_order": {10}, "tag_correlation": {10}, "model_size": {None},
            "three_stage": {None}}
    for name, values in want.items():
        assert {t.config.train.stage2_from_epoch for t in load_sweep(name).trials()} == values, name
    t5 = {t.config.data.source: t.config.train for t in load_sweep("t5").trials()}
    assert t5["cvdb"].stage2_from_epoch == 15
    # T-REx: the authors' cpt20 run (save_each_epochs 5), worked out in the trial from its stage-1 rows
    trex = [t.config for t in load_sweep("two_stage_trex").trials()] + [
        t.config for t in load_sweep("t5").trials() if t.config.data.source == "trex"]
    assert {(c.train.stage2_from_epoch, c.train.authors_save_each_epochs) for c in trex} == {("cpt20", 5)}
    for c in trex:  # the bands of test_trex_stage2_start_bands_by_stage1_rows, through the config
        per_device = c.train.batch_size // c.train.grad_accumulation
        for rows, epoch in ((12_000, None), (15_000, 15), (20_000, 10), (30_000, 5)):
            assert c.stage2_start(rows) == epoch == (authors_stage2_start(
                rows, per_device, c.train.grad_accumulation, 20, 5)[20] % 20 or None), (rows, per_device)
    amount = {t.config.data.n_entities: t.config.train.stage2_from_epoch for t in load_sweep("data_amount").trials()}
    assert {n: (e or 20) for n, e in amount.items()} == {250: 20, 500: 10, 1000: 20, 2000: 20}


# ------------------------------------------------------------------------------------------------
# Set inclusion: the authors' seed layout
# ------------------------------------------------------------------------------------------------
# configs/num_choice_exps/pythia70m_tokpervar_bs512_n8_i1.yaml and ..._d3consis.yaml: experiment_arguments
# n_seeds 20 (stage-1 seeds from start_seed 630 / 600), n_seeds_stage2 3 (src/experiment_pipeline.py:
# for seed_stage2 in range(n_seeds_stage2)), 100 + 40 epochs at 512 x 1, save_each_epochs 25 in stage 1.
# Stage-1 rows: X1 variables x (12 training questions + 1 definition): 6,400 (d3consis: 5,600) x 13.
AUTHORS_SET_INCLUSION = dict(stage1_seeds=20, stage2_seeds=(0, 1, 2), epochs=(100, 40), per_device=512, gas=1,
                             save_each_epochs=25, max_eval_samples=20_000,
                             # src/lm_training_utils.py create_tokenizer: [PAD] [UNK] = %, true false define1-3,
                             # numbers 0-99, 26 letters, every three-letter name
                             vocabulary=4 + 5 + 100 + 26 + 26 ** 3)
SET_INCLUSION_STAGE1_ROWS = {"set_inclusion": 83_200, "set_inclusion_d3consis": 72_800}


@pytest.mark.parametrize("name", ["set_inclusion", "set_inclusion_d3consis"])
def test_set_inclusion_runs_the_authors_seed_layout(name):
    """20 stage-1 seeds, each stage 1 trained once (a stage-1 unit) and branched into the stage-2
    seeds 0, 1, 2 (the trial seeds, which re-split X2); stage 2 from the end of stage 1."""
    from metaocl.config import kind
    from metaocl.sweep import stage1

    a = AUTHORS_SET_INCLUSION
    trials = {t.trial_id: t for t in load_sweep(name).trials()}
    units, unit_of = stage1.plan(trials, kind("set_inclusion"))
    assert len(units) == a["stage1_seeds"] and len(trials) == a["stage1_seeds"] * len(a["stage2_seeds"])
    for unit in units.values():
        assert tuple(trials[m].config.seed for m in unit.members) == a["stage2_seeds"]
        assert {trials[m].config.stage1_seed for m in unit.members} == {unit.trial.seed}
    c = next(iter(trials.values())).config
    assert (c.train.stage1_epochs, c.train.stage2_epochs) == a["epochs"] and c.train.batch_size == a["per_device"] * a["gas"]
    # the stage-1 rows of ours at the authors' size: X1 variables x (12 training questions + 1 definition)
    x1 = round((c.data.qd1consis + c.data.qd2incons) * c.data.n_variables)
    rows = SET_INCLUSION_STAGE1_ROWS[name]
    assert x1 * (c.data.train_questions + 1) == rows
    # their checkpoints (every 25 epochs) sort as strings to cpt25 = epoch 75, cpt50 = 100, cpt75 = 25,
    # cpt100 = 50 (both sweeps): the end of stage 1 (ours, stage2_from_epoch null) is their run labelled cpt50
    labels = authors_stage2_start(rows, a["per_device"], a["gas"], a["epochs"][0], a["save_each_epochs"])
    assert labels == {25: 75, 50: 100, 75: 25, 100: 50}
    # evaluation sample and vocabulary: theirs (ours has one more token, <eos>)
    assert c.eval.max_samples == a["max_eval_samples"] and a["vocabulary"] == 17_711
    import dataclasses

    from metaocl.data.set_inclusion import generate

    assert len(generate(dataclasses.replace(c.data, n_variables=50), 0).vocab) == a["vocabulary"] + 1
    assert labels[50] == a["epochs"][0] and c.train.stage2_from_epoch is None
