"""bench/set_inclusion.py: runs on tiny sizes and prints every figure (no timing is asserted)."""

import pytest

from bench_scripts import load_bench

bench = load_bench("set_inclusion")


@pytest.mark.slow
def test_tiny_epoch_prints_ours_and_the_trainer_baseline(capsys):
    out = bench.main(["--variables", "20", "--batch-size", "16"])
    printed = capsys.readouterr().out
    for key in ("ours_stage1_steps_per_s", "ours_stage1_examples_per_s", "ours_stage2_steps_per_s",
                "ours_eval_examples_per_s", "trainer_stage1_steps_per_s", "trainer_stage1_examples_per_s",
                "speedup_train"):
        assert out[key] > 0, key
        assert f"  {key}: " in printed
    # 20 variables: 16 in stage 1 (8 + 8) with a definition and 12 questions each; 4 stage-2 definitions
    assert (out["stage1_examples"], out["stage2_examples"]) == (16 * 13, 4)
    assert out["eval_examples"] == 20 * 12
    s1 = out["ours_stage1_examples_per_s"] / out["ours_stage1_steps_per_s"]
    assert s1 == pytest.approx(out["stage1_examples"] / -(-out["stage1_examples"] // 16))


@pytest.mark.slow
def test_no_baseline_skips_the_trainer(capsys):
    out = bench.main(["--variables", "20", "--batch-size", "64", "--no-baseline"])
    assert "speedup_train" not in out and "trainer_stage1_steps_per_s" not in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--variables", "5"], ["--batch-size", "0"]])
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(argv)
    assert e.value.code == 2
