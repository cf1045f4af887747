"""scripts/gap_noise.py: the within-seed standard error of the meta-OCL gap, on known answers and
on checkpoints laid out as a sweep leaves them, and as Ray Tune left them in older versions (tiny
random models the test saves)."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gap_noise.py"
if not SCRIPT.is_file():  # the image carries metaocl/, tests/ and bench/, not scripts/ (.dockerignore)
    pytest.skip("scripts/gap_noise.py is not here (the Docker image leaves scripts/ out)", allow_module_level=True)
spec = importlib.util.spec_from_file_location("gap_noise", SCRIPT)
gap_noise = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gap_noise)

TINY = ["data.n_variables=60", "model.hidden_size=16", "model.num_hidden_layers=1",
        "model.num_attention_heads=2", "model.intermediate_size=32"]


def test_gap_and_its_standard_error_by_hand():
    acc1, n1 = np.array([1.0, 0.5, 0.0]), np.array([4, 4, 4])
    acc2, n2 = np.array([0.5, 0.5]), np.array([2, 2])
    gap, se, binom = gap_noise.gap_with_se(acc1, n1, acc2, n2)
    assert gap == pytest.approx(0.5 - 0.5)
    # variance over variables (ddof 1) / number of variables, per subset: 0.25/3 and 0/2
    assert se == pytest.approx(math.sqrt(0.25 / 3))
    # binomial part: mean of a(1-a)/(n-1) / variables: (0 + 0.25/3 + 0)/3/3 and (0.25/1)/2
    assert binom == pytest.approx(math.sqrt((0.25 / 3) / 3 / 3 + 0.25 / 2))


def _checkpoint(root: Path, trial_id: str, seed: int) -> None:
    import torch

    from metaocl.config import load_sweep
    from metaocl.data.set_inclusion import generate
    from metaocl.engine import set_inclusion as engine

    cfg = next(t for t in load_sweep("quickstart", overrides=TINY).trials() if t.trial_id == trial_id).config
    ds = generate(cfg.data, seed)
    torch.manual_seed(seed)
    model = engine.build_model(cfg.model, engine.build_tokenizer(ds.vocab).get_vocab_size())
    state = {"model": model.state_dict(), "epoch": 3, "epoch_global": 3}
    if seed == 0:  # the sweep's checkpoint store
        from metaocl.experiments.checkpoints import TrialCheckpoints

        TrialCheckpoints(str(root), trial_id).save(state)
        return
    # a folder of an older version: Ray Tune's trial checkpoints
    d = root / f"trainable_ab_0000{seed}_{seed}_trial=trial_id_{trial_id}_kind_set_inclusion_cpus_1" / "checkpoint_000002"
    d.mkdir(parents=True)
    torch.save(state, d / "state.pt")


def test_reads_each_trials_last_checkpoint_and_compares_spreads(tmp_path, capsys):
    for tid, seed in (("s0", 0), ("s1", 1)):
        _checkpoint(tmp_path, tid, seed)
    args = ["quickstart", str(tmp_path)] + [a for o in TINY for a in ("--set", o)]
    assert gap_noise.main(args) == 0
    out = capsys.readouterr().out
    assert "s0 (seed 0, epoch 3): acc " in out and "s1 (seed 1, epoch 3): acc " in out
    assert "2 trials: meta-OCL mean " in out and "share of the seed-to-seed variance that is test sampling" in out


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert gap_noise.main(["quickstart", str(tmp_path)]) == 2
    assert "checkpoints of fewer than 2 trials" in capsys.readouterr().err
    assert gap_noise.main(["mnist", str(tmp_path)]) == 2
    assert gap_noise.main(["no_such_sweep", str(tmp_path)]) == 2


@pytest.mark.parametrize("scoring", ["argmax", "true_false"])
def test_per_variable_accuracy_averages_to_the_engines_subset_accuracy(scoring):
    """Both score through engine.score: weighted by questions, the per-variable accuracies are acc/{subset}."""
    import dataclasses

    import torch

    from metaocl.config import load_sweep
    from metaocl.data.set_inclusion import generate
    from metaocl.engine import set_inclusion as engine

    cfg = load_sweep("quickstart", overrides=TINY).trials()[0].config
    ds = generate(cfg.data, 0)
    tok = engine.build_tokenizer(ds.vocab)
    torch.manual_seed(0)
    model = engine.build_model(cfg.model, tok.get_vocab_size())
    sets = {s: engine.EvalSet.from_questions(tok, ds.test_qa[s]) for s in ("d1consis", "d2consis")}
    overall = engine.evaluate(model, sets, tok, dataclasses.replace(cfg.eval, scoring=scoring), "cpu")
    for s in sets:
        acc, n = gap_noise.per_variable_accuracy(model, tok, ds.test_qa[s], scoring, batch_size=7)
        assert n.sum() == len(ds.test_qa[s])
        assert float((acc * n).sum() / n.sum()) == pytest.approx(overall[f"acc/{s}"], abs=1e-12)
