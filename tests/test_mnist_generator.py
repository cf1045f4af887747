"""The MNIST grid-QA generator: layout, targets, highlight, tags, groups, splits, sources, config."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from metaocl.config import ConfigError, from_dict
from metaocl.configs.mnist import MnistConfig, group_sizes
from metaocl.data.mnist_grid import (
    NO_ANSWER,
    GridLayout,
    MnistGridTask,
    MnistNotFoundError,
    load_digits,
    make_tag_patterns,
)

torch.set_num_threads(1)


def data_cfg(**over):
    base = {"digits": "sklearn_digits", "digit_size": 8, "n_pairs": 40}
    return from_dict(MnistConfig, {"data": {**base, **over}}).data


@pytest.fixture(scope="module")
def task():
    return MnistGridTask(data_cfg(), seed=3)


def crop(images, layout, cell, box="digit"):
    r, c = layout.digit_box(cell) if box == "digit" else layout.cell_box(cell)
    size = layout.digit if box == "digit" else layout.cell
    return images[..., r : r + size, c : c + size]


def ring_mask(layout, cell):
    m = torch.zeros(layout.height, layout.width, dtype=torch.bool)
    r, c = layout.cell_box(cell)
    s, b = layout.cell, layout.border
    m[r : r + s, c : c + s] = True
    m[r + b : r + s - b, c + b : c + s - b] = False
    return m


def test_layout_is_a_multiple_of_the_convnext_stride():
    mnist = GridLayout(grid=3, digit=28, border=1, tag_square=2)
    assert (mnist.cell, mnist.top, mnist.height, mnist.width) == (30, 2, 96, 96)
    assert GridLayout(grid=3, digit=8, border=1, tag_square=2).height == 32


def test_shapes_and_value_ranges(task):
    b = task.sample_train(64)
    assert b.images.shape == (64, 1, 32, 32) and b.images.dtype == torch.float32
    assert task.image_shape == (1, 32, 32)
    assert 0.0 <= b.images.min() and b.images.max() <= 1.0
    assert b.targets.shape == (64, 9) and b.targets.dtype == torch.long
    assert set(b.targets.unique().tolist()) <= {0, 1, 2}
    assert b.digit_index.shape == (64, 9)


def test_qa_examples_highlight_one_cell_and_answer_only_there(task):
    b = task.sample_train(512)
    qa = (~b.is_def).nonzero().flatten()
    assert len(qa) > 50
    lay = task.layout
    for i in qa[:60].tolist():
        cell, pair = int(b.cell[i]), int(b.pair[i])
        img = b.images[i, 0]
        answer_cells = (b.targets[i] != NO_ANSWER).nonzero().flatten().tolist()
        assert answer_cells == [cell]
        assert b.targets[i, cell] == task.entities[pair, cell]
        for c in range(task.n_cells):  # a 1-pixel white frame around the asked cell, no other
            ring = img[ring_mask(lay, c)]
            assert bool((ring == 1.0).all()) if c == cell else bool((ring == 0.0).all())
        assert bool((img[: lay.top] == 0).all())  # no tag on a QA example
        # digits untouched by the frame: each cell shows its bank image of the variable's label
        bank = task.banks["train"]
        for c in range(task.n_cells):
            k = b.digit_index[i, c]
            assert bank.labels[k] == task.variables[pair, c]
            assert torch.equal((crop(img, lay, c) * 255).round().to(torch.uint8), bank.images[k])


def test_definitions_carry_their_tag_row_and_the_whole_entity(task):
    b = task.sample_train(512)
    lay = task.layout
    defs = b.is_def.nonzero().flatten()
    assert len(defs) > 50
    for i in defs[:60].tolist():
        pair = int(b.pair[i])
        tag = int(task.pair_tag[pair])
        assert torch.equal(b.targets[i], task.def_entities[pair])
        row = b.images[i, 0, : lay.top]
        sq = lay.tag_square
        expected = torch.from_numpy(task.tag_bits[tag]).float().repeat_interleave(sq)
        assert torch.equal(row[0, : len(expected)], expected) and torch.equal(row[-1, : len(expected)], expected)
        for c in range(task.n_cells):  # no highlight on definitions
            assert bool((b.images[i, 0][ring_mask(lay, c)] == 0).all())


def test_tag_patterns_differ_between_tags_and_are_stable_per_seed():
    a = make_tag_patterns(7, 45)
    assert a.shape == (2, 45) and not np.array_equal(a[0], a[1]) and a.any(axis=1).all()
    assert np.array_equal(a, make_tag_patterns(7, 45))
    assert not np.array_equal(a, make_tag_patterns(8, 45))
    # tags depend on the seed only, not on the rest of the config
    t1 = MnistGridTask(data_cfg(n_pairs=40), seed=5)
    t2 = MnistGridTask(data_cfg(n_pairs=80, p_def=0.5), seed=5)
    assert np.array_equal(t1.tag_bits, t2.tag_bits)
    assert torch.equal(t1.overlays, t2.overlays)


def test_held_out_cell_never_appears_in_training_qa(task):
    cells_seen = set()
    for _ in range(20):
        b = task.sample_train(256)
        qa = ~b.is_def
        assert not bool((b.cell[qa] == task.heldout[b.pair[qa]]).any())
        cells_seen |= set(b.cell[qa].tolist())
    assert cells_seen == set(range(task.n_cells))  # every other cell is asked
    assert len(set(task.heldout.tolist())) > 1  # a different cell for different variables


def test_d_groups_only_ever_give_definitions_and_qd_groups_mix_with_p_def(task):
    groups, is_def = [], []
    for _ in range(20):
        b = task.sample_train(256)
        groups.append(b.group)
        is_def.append(b.is_def)
    groups, is_def = torch.cat(groups), torch.cat(is_def)
    for gi, name in enumerate(task.groups):
        mine = is_def[groups == gi]
        assert abs(len(mine) / len(groups) - 0.25) < 0.04  # each group with equal probability
        if name.startswith("d"):
            assert bool(mine.all())
        else:
            assert abs(mine.float().mean().item() - task.cfg.p_def) < 0.06


def test_proportional_group_sampling_follows_pair_counts():
    t = MnistGridTask(data_cfg(n_pairs=100, qd1consis=0.55, qd2incons=0.15, d1consis=0.15, d2consis=0.15, group_sampling="proportional"), seed=0)
    g = torch.cat([t.sample_train(500).group for _ in range(8)])
    assert abs((g == 0).float().mean().item() - 0.55) < 0.05


def test_groups_sizes_and_inconsistent_definitions_are_a_derangement(task):
    w = task.world
    assert dict(zip(w.groups, w.group_size.tolist())) == group_sizes(task.cfg) == {g: 10 for g in w.groups}
    assert len({v.tobytes() for v in w.variables}) == len(w.variables)  # distinct variables
    for gi, name in enumerate(w.groups):
        s, n = w.group_start[gi], w.group_size[gi]
        own, shown = w.entities[s : s + n], w.def_entities[s : s + n]
        if name == "qd2incons":
            assert sorted(map(bytes, own.astype(np.uint8))) == sorted(map(bytes, shown.astype(np.uint8)))
            assert not np.array_equal(own, shown)
        else:
            assert np.array_equal(own, shown)


def test_evaluation_draws_from_the_test_split(task):
    lay, test_bank, train_bank = task.layout, task.banks["test"], task.banks["train"]
    train_set = {bytes(im.numpy()) for im in train_bank.images}
    gen = task.eval_generator()
    for name in task.groups:
        for kind in ("heldout", "all", "def"):
            b = task.eval_batch(name, kind, 16, gen)
            assert bool((b.group == task.groups.index(name)).all())
            assert bool(b.is_def.all()) == (kind == "def")
            for i in range(4):
                for c in range(task.n_cells):
                    shown = (crop(b.images[i, 0], lay, c) * 255).round().to(torch.uint8)
                    assert torch.equal(shown, test_bank.images[b.digit_index[i, c]])
                    assert bytes(shown.numpy()) not in train_set


def test_eval_heldout_asks_the_held_out_cell_of_qd_pairs_and_any_cell_of_d_pairs(task):
    gen = task.eval_generator()
    qd = task.eval_batch("qd1consis", "heldout", 40, gen)
    assert torch.equal(qd.cell, task.heldout[qd.pair])
    assert len(set(qd.pair.tolist())) == 10  # cycles through every pair of the group
    d = task.eval_batch("d2consis", "heldout", 40, gen)
    assert len(set(d.cell.tolist())) > 3
    # the same examples at every evaluation
    again = task.eval_batch("qd1consis", "heldout", 40, task.eval_generator())
    first = task.eval_batch("qd1consis", "heldout", 40, task.eval_generator())
    assert torch.equal(again.images, first.images)


def test_training_batches_are_repeatable_per_seed():
    a = MnistGridTask(data_cfg(), seed=11).sample_train(32)
    b = MnistGridTask(data_cfg(), seed=11).sample_train(32)
    c = MnistGridTask(data_cfg(), seed=12).sample_train(32)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.images, c.images)


def test_sklearn_split_is_disjoint_and_deterministic():
    tr_x, tr_y = load_digits("sklearn_digits", "train", 8)
    te_x, te_y = load_digits("sklearn_digits", "test", 8)
    assert len(tr_x) + len(te_x) == 1797 and 340 < len(te_x) < 380
    assert set(te_y.tolist()) == set(range(10))
    big, _ = load_digits("sklearn_digits", "test", 20)
    assert big.shape == (len(te_x), 20, 20) and big.dtype == torch.uint8


def _write_idx(path, array: np.ndarray, magic: int):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_source_reads_the_data_cache_and_names_the_fix_when_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("METAOCL_DATA", str(tmp_path))
    read = load_digits.__wrapped__  # bypass the cache: the root changes between calls
    with pytest.raises(MnistNotFoundError) as err:
        read("mnist", "train", 28)
    msg = str(err.value)
    assert isinstance(err.value, ConfigError) and "\n" not in msg
    assert "metaocl data download mnist" in msg and "sklearn_digits" in msg
    raw = tmp_path / "MNIST" / "raw"  # torchvision reads the decompressed idx files kept here
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 20)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, 2049)
    x, y = read("mnist", "test", 28)
    assert x.shape == (20, 28, 28) and x.dtype == torch.uint8 and y.tolist() == [i % 10 for i in range(20)]
    x, _ = read("mnist", "train", 14)
    assert x.shape == (30, 14, 14)


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"qd1consis": 0.5}, "sum to"),
        ({"p_def": 1.0}, "p_def"),
        ({"n_pairs": 3}, "no pairs"),
        ({"grid_size": 1}, "grid_size"),
        ({"digits": "emnist"}, "not one of"),
        ({"n_pair": 10}, "did you mean 'n_pairs'"),
    ],
)
def test_config_mistakes_are_one_line_errors(data, needle):
    with pytest.raises(ConfigError, match=needle):
        from_dict(MnistConfig, {"data": data}, "sweeps/mnist.yaml")
