"""bench/lm_epoch.py: runs end to end on tiny sizes, prints its fields, and our side's evaluation is exact.

No timing is asserted: the figures are only checked to be present and positive.
"""

import pytest
import torch

from bench_scripts import load_bench


@pytest.fixture
def bench(tmp_path, monkeypatch):
    monkeypatch.setenv("METAOCL_DATA", str(tmp_path / "data"))
    return load_bench("lm_epoch")


@pytest.mark.slow
def test_one_epoch_prints_every_figure_and_evaluators_agree(bench, capsys):
    figures = bench.main(["--entities", "20", "--max-eval-per-split", "3", "--batch-size", "16",
                          "--pretrain-epochs", "2"])
    out = capsys.readouterr().out
    for block in ("[setup]", "[ours]", "[reference]", "[summary]"):
        assert block in out
    for key in ("speedup_end_to_end", "speedup_train", "speedup_eval", "ours_examples_per_s",
                "reference_examples_per_s", "em_identical", "predictions_identical", "load_avg_before"):
        assert f"  {key}: " in out
    assert figures["train_examples"] > 0 and figures["eval_examples"] > 0
    assert figures["ours_examples_per_s"] > 0 and figures["reference_examples_per_s"] > 0
    assert figures["em_identical"] is True and figures["predictions_identical"] is True
    assert figures["splits_differing"] == "-"


@pytest.mark.parametrize("argv", [["--batch-size", "15"], ["--entities", "5"]])
def test_bad_arguments_exit_with_usage(bench, argv, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(argv)
    assert e.value.code == 2
    assert "--" in capsys.readouterr().err


@pytest.mark.parametrize("pretrain_epochs", [0, 2])
@pytest.mark.slow
def test_our_side_evaluates_every_split_as_each_split_alone(bench, pretrain_epochs, tmp_path):
    """The bench's side (one pooled evaluation over every split) gives, split by split, the EM and
    predictions of evaluating each split alone, on the bench's real prompts (different token lengths,
    so rows are padded), untrained (every example generates) and partly trained. That the pooled
    evaluation equals plain per-example ``generate`` is tested once, in tests/test_lm_engine.py."""
    from metaocl.engine import lm_evaluate as ev
    from metaocl.engine import lm as engine
    from metaocl.engine.lm_models import load_pretrained

    args = bench.parse_args(["--entities", "20", "--max-eval-per-split", "3"])
    dataset = bench.build_dataset(args)
    bench.save_initial_model(dataset, tmp_path / "model", seed=0, pretrain_epochs=pretrain_epochs)
    loaded = load_pretrained(str(tmp_path / "model"), kind="causal")
    encs = {n: engine.encode(dataset[n], loaded.tokenizer, is_seq2seq=False, with_prompts=True)
            for n in bench.eval_split_names(dataset)[:8]}
    assert len({len(p) for enc in encs.values() for p in enc.prompt_ids}) > 1
    ours = bench.evaluate_all(loaded.model, loaded.tokenizer, encs, args)
    kwargs = dict(max_new_tokens=8, device="cpu", is_seq2seq=False, batch_size=4)
    assert list(ours) == list(encs)
    generated = 0
    for name, enc in encs.items():
        alone = ev.evaluate_split(loaded.model, loaded.tokenizer, enc, **kwargs)
        assert ours[name] == (alone.em, alone.predictions), name
        generated += alone.n_generated
    assert generated > 0
