"""bench/quickstart_cost.py: both configurations run at a tiny size and every figure prints (no timing is asserted)."""

import pytest

from bench_scripts import load_bench

bench = load_bench("quickstart_cost")


@pytest.mark.slow
def test_quick_mode_measures_both_configurations(capsys):
    out = bench.main(["--quick"])
    printed = capsys.readouterr().out
    for key in ("today_cpu_s_per_trial", "new_cpu_s_per_trial", "today_cpu_s_per_sweep", "new_cpu_s_per_sweep",
                "ratio_cpu_per_trial", "ratio_cpu_per_sweep"):
        assert out[key] > 0, key
        assert f"  {key}: " in printed
    assert out["today_seeds"] == bench.TODAY_SEEDS == 6
    assert out["ratio_cpu_per_sweep"] == pytest.approx(
        out["new_cpu_s_per_trial"] * out["new_seeds"] / (out["today_cpu_s_per_trial"] * 6))
    assert "cpu: " in printed


def test_today_is_the_issue_16_configuration():
    from metaocl.config import load_sweep

    cfg = load_sweep("quickstart", overrides=bench.TODAY).trials()[0].config
    assert (cfg.data.n_variables, cfg.data.train_questions, cfg.data.d1consis) == (2000, 20, 0.1)
    assert (cfg.train.stage1_epochs, cfg.train.lr, cfg.train.schedule, cfg.eval.every) == (24, 0.002, "constant", 4)


def test_bad_arguments_exit_2():
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--trials", "0"])
    assert e.value.code == 2


def test_issue16_loss_is_the_engine_loss_on_the_whole_row_and_is_swapped_back():
    import torch

    from metaocl.data.set_inclusion import generate
    from metaocl.configs.set_inclusion import GPTNeoXArch, SetInclusionData
    from metaocl.engine import set_inclusion as eng

    ds = generate(SetInclusionData(n_variables=40), seed=3)
    tok = eng.build_tokenizer(ds.vocab)
    torch.manual_seed(0)
    model = eng.build_model(GPTNeoXArch(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64), tok.get_vocab_size())
    batch = eng.encode(tok, ds.stage_examples(1, joint=True)[:16])
    assert torch.allclose(bench.issue16_lm_loss(model, batch, answer_only=True),
                          eng.lm_loss(model, batch, answer_only=True), atol=1e-6)
    current = eng.lm_loss
    with bench.engine_loss("issue16"):
        assert eng.lm_loss is bench.issue16_lm_loss
    assert eng.lm_loss is current
