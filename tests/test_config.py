"""Sweep files and configs: validation messages name the file, the key and the nearest valid key."""

import textwrap

import pytest

from metaocl.config import ConfigError, from_dict, load_sweep, parse_override
from metaocl.configs.set_inclusion import SetInclusionConfig


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


GOOD = """\
    name: t
    description: a test sweep
    kind: set_inclusion
    base:
      data: {n_variables: 100}
      train: {stage1_epochs: 2, stage2_epochs: 1}
    grid:
      train.batch_size: [32, 64]
    seeds: 3
    smoke:
      base: {data: {n_variables: 50}}
      seeds: 1
"""


def test_grid_times_seeds(tmp_path):
    sweep = load_sweep(str(write(tmp_path, GOOD)))
    trials = sweep.trials()
    assert len(trials) == 6
    assert {t.config.train.batch_size for t in trials} == {32, 64}
    assert sorted({t.seed for t in trials}) == [0, 1, 2]
    assert all(t.config.data.n_variables == 100 for t in trials)
    assert len({t.trial_id for t in trials}) == 6


def test_smoke_variant_and_seeds_and_set(tmp_path):
    path = str(write(tmp_path, GOOD))
    sweep = load_sweep(path, smoke=True, overrides=["train.lr=1e-3", "train.optimizer=adamw"])
    trials = sweep.trials()
    assert len(trials) == 2 and trials[0].config.data.n_variables == 50
    assert trials[0].config.train.lr == pytest.approx(1e-3)
    assert len(load_sweep(path, seeds=5).trials()) == 10
    pinned = load_sweep(path, overrides=["train.batch_size=16"])  # --set pins a grid key
    assert {t.config.train.batch_size for t in pinned.trials()} == {16}


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD.replace("n_variables: 100", "n_variable: 100"), "unknown key 'n_variable' (did you mean 'n_variables'?)"),
        (GOOD.replace("seeds: 3", "sedes: 3"), "unknown key 'sedes' (did you mean 'seeds'?)"),
        (GOOD.replace("n_variables: 100", "n_variables: many"), "base.data.n_variables: expected an integer, got 'many'"),
        (GOOD.replace("train.batch_size: [32, 64]", "train.batch_size: []"), "grid.train.batch_size: expected a non-empty list"),
        (GOOD.replace("train.batch_size:", "train.batch_sise:"), "unknown key 'train.batch_sise' (did you mean 'train.batch_size'?)"),
        (GOOD.replace("kind: set_inclusion", "kind: set_inclusoin"), "did you mean 'set_inclusion'?"),
        (GOOD.replace("data: {n_variables: 100}", "data: {n_variables: 100, qd1consis: 0.9}"), "fractions sum to"),
    ],
)
def test_bad_sweep_files_name_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_sweep(str(path))
    message = str(err.value)
    assert expected in message and str(path) in message
    assert "\n" not in message


def test_malformed_yaml_gives_file_and_line(tmp_path):
    path = write(tmp_path, "name: t\ndescription: x\nkind: [unclosed\nseeds: 2\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: malformed YAML"):
        load_sweep(str(path))


def test_set_on_unknown_field(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'train.l' \(did you mean 'train.lr'\?\)"):
        load_sweep(str(write(tmp_path, GOOD)), overrides=["train.l=3"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_sweep(str(write(tmp_path, GOOD)), overrides=["train.lr"])


def test_unknown_sweep_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown sweep 'quickstrat' \(did you mean 'quickstart'\?\); known sweeps: .*quickstart"):
        load_sweep("quickstrat")


def test_parse_override_types():
    assert parse_override("a=1e-3") == ("a", 0.001)
    assert parse_override("a=3") == ("a", 3)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=adamw") == ("a", "adamw")


def test_from_dict_types_and_literals():
    cfg = from_dict(SetInclusionConfig, {"train": {"lr": 1, "optimizer": "adamw"}})
    assert isinstance(cfg.train.lr, float)
    with pytest.raises(ConfigError, match=r"'adam' is not one of 'adafactor', 'adamw' \(did you mean 'adamw'\?\)"):
        from_dict(SetInclusionConfig, {"train": {"optimizer": "adam"}})
    with pytest.raises(ConfigError, match="expected true or false"):
        from_dict(SetInclusionConfig, {"train": {"joint": "yes"}})


def test_every_shipped_sweep_validates():
    from metaocl.config import known_sweeps

    names = known_sweeps()
    assert "quickstart" in names and "set_inclusion" in names
    for name, path in names.items():
        sweep = load_sweep(name)
        assert sweep.trials(), name
        assert sweep.description.strip(), name
        text = path.read_text()
        if "smoke:" in text:
            assert load_sweep(name, smoke=True).trials()


def test_set_seed_pins_the_seed(tmp_path):
    path = str(write(tmp_path, GOOD))
    sweep = load_sweep(path, overrides=["seed=7"])  # one trial per grid point, with seed 7
    assert [(t.trial_id, t.seed, t.config.seed) for t in sweep.trials()] == [("p00_s7", 7, 7), ("p01_s7", 7, 7)]
    assert [t.seed for t in load_sweep(path, smoke=True, seeds=1, overrides=["seed=3"]).trials()] == [3, 3]  # metaocl run
    with pytest.raises(ConfigError, match=r"--set seed=7 pins one seed; drop --seeds 2"):
        load_sweep(path, seeds=2, overrides=["seed=7"])
    with pytest.raises(ConfigError, match=r"--set seed='x': expected an integer"):
        load_sweep(path, overrides=["seed=x"])


def test_trials_are_built_once_and_carry_their_grid_values(tmp_path):
    sweep = load_sweep(str(write(tmp_path, GOOD)))
    first, again = sweep.trials(), sweep.trials()
    assert all(a is b for a, b in zip(first, again))  # cached: the same Trial objects, not rebuilt
    assert [t.grid_values for t in first[::3]] == [{"train.batch_size": 32}, {"train.batch_size": 64}]


def test_validating_a_config_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys; from metaocl.config import load_sweep, kind\n"
            "for n in ('quickstart', 'two_stage', 'mnist'): load_sweep(n, smoke=True).trials(); kind('lm').n_reports\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_kind_objects_known_answers():
    from metaocl.config import kind

    si, lm, mn = kind("set_inclusion"), kind("lm"), kind("mnist")
    assert (si.measure, lm.measure, mn.measure) == ("acc", "em", "acc")
    assert si.config_cls is SetInclusionConfig
    # evaluations: every eval.every epochs and at each stage's end
    cfg = from_dict(SetInclusionConfig, {"train": {"stage1_epochs": 5, "stage2_epochs": 3}, "eval": {"every": 2}})
    assert si.n_reports(cfg) == 3 + 2
    cfg = from_dict(SetInclusionConfig, {"train": {"stage1_epochs": 5, "stage2_epochs": 3, "joint": True}})
    assert si.n_reports(cfg) == 5
    trial = load_sweep("two_stage", smoke=True, overrides=["train.epochs=[3,2]", "eval.every=2"]).trials()[0]
    assert lm.n_reports(trial.config) == 2 + 1
    trial = load_sweep("mnist", smoke=True, overrides=["train.steps=250", "train.eval_every=100"]).trials()[0]
    assert mn.n_reports(trial.config) == 3  # steps 100, 200 and the last, 250
    assert [p.metric for p in si.effect_pairs] == ["gap/ocl", "gap/meta_ocl"]
    assert ("gap/ocl_ent_name", "ent_name_qd1consis", "ent_name_qd2incons_defent") in [
        (p.metric, p.a, p.b) for p in lm.effect_pairs]
    assert len(lm.effect_pairs) == 2 + 2 * len(lm.entity_templates)


def test_one_gap_definition():
    from metaocl.config import kind
    from metaocl.metrics import gaps

    row = {"em/qd1consis": 0.75, "em/qd2incons": 0.5, "em/d1consis": 0.25, "acc/d2consis": 0.0,
           "em/ent_who_d1consis": 0.5, "em/ent_who_d2consis": 0.125}
    assert kind("lm").gaps(row) == {"gap/ocl": 0.25, "gap/meta_ocl_ent_who": 0.375}  # only computable pairs
    assert gaps(row, kind("lm").effect_pairs, "acc") == {}


def test_lm_model_name_checks(tmp_path, monkeypatch):
    from metaocl.config import kind

    lm = kind("lm")

    def problems(**model):
        sets = [f"model.{k}={v}" for k, v in model.items()]
        return lm.required_inputs(load_sweep("two_stage", smoke=True, overrides=sets).trials()[0].config)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    assert problems() == []  # builtin tiny-gpt-neox
    assert problems(name=str(tmp_path)) == []  # a local folder
    assert problems(name="/no/such/folder") == ["model.name: '/no/such/folder' is neither a local folder nor a "
                                                "Hugging Face model name"]
    [line] = problems(name="EleutherAI/pythia-70mm")
    assert line.startswith("model.name: model 'EleutherAI/pythia-70mm' is not in the local Hugging Face cache")
    # a from-scratch Pythia needs no weights, but its tokenizer
    [line] = problems(name="EleutherAI/pythia-70m", from_scratch="true")
    assert line.startswith("model.name: tokenizer 'EleutherAI/pythia-70m' is not in the local Hugging Face cache")
    assert problems(name="EleutherAI/pythia-70m", from_scratch="true", tokenizer=str(tmp_path)) == []


def test_ray_workers_import_no_mlflow_and_no_driver():
    import subprocess
    import sys

    code = ("import sys, metaocl.sweep.worker\n"
            "print(sorted(m for m in ('mlflow', 'metaocl.sweep.driver', 'metaocl.tracking') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


def test_lm_architecture_pre_check_from_a_local_config(tmp_path):
    """A model folder whose config says decoder-only (or encoder-decoder) must match data.seq2seq."""
    from transformers import GPTNeoXConfig, T5Config

    from metaocl.config import kind

    causal, seq2seq = tmp_path / "causal", tmp_path / "seq2seq"
    GPTNeoXConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(causal)
    T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2).save_pretrained(seq2seq)

    def problems(*sets):
        return kind("lm").required_inputs(load_sweep("two_stage", smoke=True, overrides=list(sets)).trials()[0].config)

    assert problems(f"model.name={causal}") == []
    assert problems(f"model.name={causal}", "data.seq2seq=true") == [
        f"data.seq2seq: must be false for '{causal}' (a decoder-only model)"]
    assert problems(f"model.name={seq2seq}") == [f"data.seq2seq: must be true for '{seq2seq}' (an encoder-decoder)"]
    assert problems(f"model.name={seq2seq}", "data.seq2seq=true") == []
