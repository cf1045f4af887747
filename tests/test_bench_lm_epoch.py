"""bench/lm_epoch.py: runs end to end on tiny sizes, prints its fields, and its engine proposal is exact.

No timing is asserted: the figures are only checked to be present and positive.
"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_lm_epoch", REPO / "bench" / "lm_epoch.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_lm_epoch"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bench(tmp_path, monkeypatch):
    monkeypatch.setenv("METAOCL_DATA", str(tmp_path / "data"))
    return _load_bench()


def test_one_epoch_prints_every_figure_and_evaluators_agree(bench, capsys):
    pytest.importorskip("accelerate")  # HF Trainer needs it (the reference side)
    figures = bench.main(["--entities", "20", "--max-eval-per-split", "3", "--batch-size", "16",
                          "--pretrain-epochs", "2", "--proposal"])
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


def test_proposed_continuation_equals_per_example_generate(bench):
    """The left-padded continuation gives what plain one-at-a-time ``generate`` gives, on splits whose
    prompts have different token lengths (so rows really are padded), with an untrained model (every
    example needs generation) and with a budget smaller than a row's remaining tokens."""
    from metaocl.engine import evaluate as ev
    from metaocl.engine import lm as engine
    from metaocl.engine.models import build_builtin

    args = bench.parse_args(["--entities", "20", "--max-eval-per-split", "6"])
    dataset = bench.build_dataset(args)
    torch.manual_seed(0)
    loaded = build_builtin("tiny-gpt-neox", [t for n in dataset for t in dataset[n]["text"]])
    names = bench.eval_split_names(dataset)[:6]
    lengths, n_generated = set(), 0
    for max_new in (3, 8):
        for name in names:
            enc = engine.encode(dataset[name], loaded.tokenizer, is_seq2seq=False, with_prompts=True)
            lengths |= {len(p) for p in enc.prompt_ids}
            with bench.continue_greedy_with(bench.proposed_continue_greedy):
                fast = ev.evaluate_split(loaded.model, loaded.tokenizer, enc, max_new_tokens=max_new, device="cpu",
                                         is_seq2seq=False, batch_size=4)
            slow = ev.greedy_reference(loaded.model, loaded.tokenizer, enc, max_new, "cpu", is_seq2seq=False)
            assert fast.predictions == slow, name
            n_generated += fast.n_generated
    assert len(lengths) > 1 and n_generated > 0


def test_continue_greedy_with_restores_the_engine(bench):
    from metaocl.engine import evaluate as ev

    original = ev._continue_greedy
    with pytest.raises(RuntimeError):
        with bench.continue_greedy_with(bench.proposed_continue_greedy):
            assert ev._continue_greedy is bench.proposed_continue_greedy
            raise RuntimeError("boom")
    assert ev._continue_greedy is original


@pytest.mark.parametrize("argv", [["--batch-size", "15"], ["--entities", "5"]])
def test_bad_arguments_exit_with_usage(bench, argv, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(argv)
    assert e.value.code == 2
    assert "--" in capsys.readouterr().err


@pytest.mark.parametrize("with_proposal", [False, True])
def test_pooled_evaluation_gives_the_per_split_results(bench, with_proposal):
    """proposed_evaluate_splits (continuations of every split pooled) gives, split by split, the EM,
    loss and predictions of one engine evaluate_split per split, and of plain generate."""
    from metaocl.engine import evaluate as ev
    from metaocl.engine import lm as engine
    from metaocl.engine.models import build_builtin

    args = bench.parse_args(["--entities", "20", "--max-eval-per-split", "3"])
    dataset = bench.build_dataset(args)
    torch.manual_seed(0)
    loaded = build_builtin("tiny-gpt-neox", [t for n in dataset for t in dataset[n]["text"]])
    encs = {n: engine.encode(dataset[n], loaded.tokenizer, is_seq2seq=False, with_prompts=True)
            for n in bench.eval_split_names(dataset)[:8]}
    kwargs = dict(max_new_tokens=8, device="cpu", is_seq2seq=False, batch_size=4)
    per_split = {n: ev.evaluate_split(loaded.model, loaded.tokenizer, e, **kwargs) for n, e in encs.items()}
    with bench.continue_greedy_with(bench.proposed_continue_greedy if with_proposal else None):
        pooled = bench.proposed_evaluate_splits(loaded.model, loaded.tokenizer, encs, **kwargs)
    assert ev._continue_greedy.__name__ == "_continue_greedy"  # restored
    assert list(pooled) == list(per_split)
    for name, enc in encs.items():
        assert pooled[name].predictions == per_split[name].predictions, name
        assert pooled[name].em == per_split[name].em and pooled[name].loss == per_split[name].loss
        assert pooled[name].predictions == ev.greedy_reference(loaded.model, loaded.tokenizer, enc, 8, "cpu", False)
    assert sum(r.n_generated for r in pooled.values()) > 0
