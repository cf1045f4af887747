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
