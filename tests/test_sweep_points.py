"""Coupled grid points in sweep files (``points:``): values that vary together, e.g. a batch size with
its epochs, validated like ``grid`` keys and crossed with ``grid`` when both are given."""

from __future__ import annotations

import pytest

from metaocl.config import ConfigError, load_sweep

SWEEP = """\
name: coupled
description: test
kind: set_inclusion
base:
  data: {n_variables: 100}
  train: {stage1_epochs: 1, stage2_epochs: 1}
grid: {train.lr: [0.001, 0.002]}
points:
  - {train.batch_size: 16, train.stage1_epochs: 3}
  - {train.batch_size: 64, train.stage1_epochs: 5}
  - {train.batch_size: 128, train.stage1_epochs: 7}
seeds: 2
smoke:
  points:
    - {train.batch_size: 8, train.stage1_epochs: 2}
  seeds: 1
"""


def _write(tmp_path, text):
    path = tmp_path / "coupled.yaml"
    path.write_text(text)
    return str(path)


def test_points_vary_together_and_cross_the_grid(tmp_path):
    trials = load_sweep(_write(tmp_path, SWEEP)).trials()
    assert len(trials) == 2 * 3 * 2  # grid x points x seeds
    combos = {(t.config.train.lr, t.config.train.batch_size, t.config.train.stage1_epochs) for t in trials}
    assert combos == {(lr, bs, ep) for lr in (0.001, 0.002) for bs, ep in ((16, 3), (64, 5), (128, 7))}
    assert trials[0].trial_id == "p00_s0" and trials[-1].trial_id == "p05_s1"
    # the untouched base value stays
    assert all(t.config.train.stage2_epochs == 1 for t in trials)


def test_smoke_points_replace_the_points(tmp_path):
    trials = load_sweep(_write(tmp_path, SWEEP), smoke=True).trials()
    assert {(t.config.train.batch_size, t.config.train.stage1_epochs) for t in trials} == {(8, 2)}
    assert len(trials) == 2  # the grid of lr stays, one seed


def test_set_pins_a_points_key_and_drops_duplicates(tmp_path):
    sweep = load_sweep(_write(tmp_path, SWEEP), overrides=["train.stage1_epochs=4"])
    trials = sweep.trials()
    assert {t.config.train.stage1_epochs for t in trials} == {4}
    assert {t.config.train.batch_size for t in trials} == {16, 64, 128}
    pinned_all = load_sweep(_write(tmp_path, SWEEP), overrides=["train.stage1_epochs=4", "train.batch_size=32"])
    assert pinned_all.points == [] and len(pinned_all.trials()) == 2 * 2


def test_unknown_points_key_names_the_nearest(tmp_path):
    bad = SWEEP.replace("{train.batch_size: 64,", "{train.batch_sise: 64,")
    with pytest.raises(ConfigError, match=r"points\[1\].*'train.batch_sise'.*did you mean 'train.batch_size'"):
        load_sweep(_write(tmp_path, bad))


def test_a_key_in_grid_and_points_is_refused(tmp_path):
    bad = SWEEP.replace("grid: {train.lr: [0.001, 0.002]}", "grid: {train.batch_size: [1, 2]}")
    with pytest.raises(ConfigError, match=r"points\[0\].train.batch_size: also a grid key"):
        load_sweep(_write(tmp_path, bad))


def test_a_point_that_is_not_a_mapping_is_refused(tmp_path):
    bad = SWEEP.replace("  - {train.batch_size: 128, train.stage1_epochs: 7}", "  - 128")
    with pytest.raises(ConfigError, match=r"points\[2\]"):
        load_sweep(_write(tmp_path, bad))


def test_report_draws_coupled_keys_in_one_panel():
    """The batch-size summary (Fig. 6) is one panel: epochs (and the full batch's eval.every) follow
    from the batch size; a key that does not (the model of a tag-correlation point) still splits panels."""
    from metaocl.report.build import _coupled_keys

    grids = [t.grid_values for t in load_sweep("batch_size").trials()]
    assert _coupled_keys("train.batch_size", grids) == {"train.epochs", "eval.every", "train.grad_accumulation"}
    grids = [{k: v for k, v in t.grid_values.items() if k != "train.stage1_seed"}
             for t in load_sweep("tag_correlation").trials()]
    assert "model.name" not in _coupled_keys("data.subsets.p", grids)
