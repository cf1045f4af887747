"""bench/gpu.py: the CPU-side parts (FLOP and MFU arithmetic from metaocl.sweep.plan, projections,
sizes, arguments) and the whole path on CPU with tiny sizes, as the sweeps run it (padding to 48
tokens, model load and checkpoint I/O timed). The CUDA run itself is a GPU test, skipped without CUDA.

No timing is asserted anywhere: figures are checked to exist and to follow from their inputs.
"""

import math

import pytest
import torch

from bench_scripts import load_bench

gpu = load_bench("gpu")


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("METAOCL_DATA", str(tmp_path / "data"))
    return tmp_path


# ------------------------------------------------------------------------------------------------
# Arithmetic
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,expected", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("cpu", None), ("Tesla T4", None),
])
def test_peak_flops_by_device_name(name, expected):
    assert gpu.peak_flops(name) == expected


def test_peak_flops_override_wins():
    assert gpu.peak_flops("NVIDIA H100 80GB HBM3", override_tflops=500) == 500e12
    assert gpu.peak_flops("cpu", override_tflops=0.5) == 0.5e12


def test_matmul_params_of_pythia_70m_match_the_closed_form():
    """Per layer: qkv (3d^2 + 3d), dense (d^2 + d), MLP (2 * 4d^2 + 4d + d) = 12d^2 + 9d; plus the
    output projection d*V (no bias); the input embedding is a lookup and not counted."""
    from transformers import GPTNeoXForCausalLM

    from metaocl.engine.lm_models import PYTHIA_ARCHITECTURES, pythia_config

    arch = PYTHIA_ARCHITECTURES["pythia-70m"]
    d, layers, vocab = arch["hidden_size"], arch["num_hidden_layers"], arch["vocab_size"]
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(pythia_config("pythia-70m"))
    assert gpu.matmul_params(model) == layers * (12 * d * d + 9 * d) + d * vocab


def test_pythia_2_8b_flops_per_token_is_about_six_times_its_size():
    from transformers import GPTNeoXForCausalLM

    from metaocl.engine.lm_models import pythia_config

    with torch.device("meta"):
        model = GPTNeoXForCausalLM(pythia_config("pythia-2.8b"))
    n = gpu.matmul_params(model)
    assert 2.6e9 < n < 2.8e9  # 2.78B parameters, less the 129M input embedding
    per_token = gpu.train_flops_per_token(n, 32, 2560, 20)
    assert per_token == 6 * n + 12 * 32 * 2560 * 20


def test_mfu_is_useful_flops_over_peak():
    assert gpu.mfu(1000.0, 1e9, 1e13) == pytest.approx(0.1)
    assert gpu.mfu(1000.0, 1e9, None) is None


def test_lm_projection_adds_every_epoch_of_both_stages():
    # 100 s per stage-1 epoch of 1000 datapoints; stage 2 has 50 datapoints; 10 s of eval per epoch.
    seconds = gpu.project_lm(100.0, 1000, 50, 10.0, epochs=(20, 10))
    assert seconds == pytest.approx(20 * (100 + 10) + 10 * (5 + 10))
    # plus one model load and the checkpoints the sweep's cadence writes
    assert gpu.project_lm(100.0, 1000, 50, 10.0, epochs=(20, 10), load_s=7.0, checkpoint_s=2.0,
                          checkpoints=30) == pytest.approx(seconds + 7 + 30 * 2)


def test_set_inclusion_and_mnist_projections():
    assert gpu.project_set_inclusion(3.0, 0.5, 1.0) == pytest.approx(100 * 4.0 + 40 * 1.5)
    # 50 evaluations x 4 groups x 3 kinds x 4 batches x 256 images
    images = gpu.mnist_eval_images(50_000, 1000, 4, 4, 256)
    assert images == 50 * 4 * 3 * 4 * 256
    assert gpu.mnist_eval_images(1500, 1000, 1, 1, 1) == 2 * 3  # at step 1000 and at the end
    assert gpu.project_mnist(1000.0, 100, 10, 500, 500.0) == pytest.approx(1.0 + 1.0)


def test_projection_line_compares_with_paper_and_goal():
    line = gpu.projection_line("lm", 15 * 60.0)
    assert line["meets_goal"] is True and line["projected"] == "15.0 min"
    assert line["speedup_vs_paper"] == pytest.approx(6 * 3600 / 900)
    assert "6 h" in line["paper"]
    assert gpu.projection_line("mnist", 16 * 60.0)["meets_goal"] is False
    assert gpu.fmt_duration(30) == "30.0 s" and gpu.fmt_duration(3 * 3600) == "3.00 h"


# ------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------
def test_arguments_default_to_the_paper_sizes_and_tiny_shrinks_them():
    args = gpu.parse_args(["--dry-run"])
    assert args.experiments == gpu.EXPERIMENTS
    assert (args.sizes.lm_model, args.sizes.lm_entities, args.sizes.si_variables) == ("pythia-2.8b", 4000, 8000)
    assert args.sizes.mnist_model == "convnextv2_tiny" and args.sizes.lm_batch_size == 256
    tiny = gpu.parse_args(["--device", "cpu", "--tiny", "--only", "lm", "--only", "mnist", "--lm-entities", "30"])
    assert tiny.experiments == ("lm", "mnist")
    assert tiny.sizes.lm_entities == 30 and tiny.sizes.lm_model == "pythia-14m"
    assert gpu.Sizes().lm_entities == 4000  # --tiny and flags never change the defaults


@pytest.mark.parametrize("argv,message", [
    (["--device", "cpu"], "--tiny"),
    (["--dry-run", "--lm-model", "gpt2"], "--lm-model"),
    (["--dry-run", "--assumed-mfu", "0"], "--assumed-mfu"),
    (["--only", "resnet"], "--only"),
])
def test_bad_arguments_exit_2_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        gpu.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_without_a_gpu_says_what_to_run_instead(capsys):
    with pytest.raises(SystemExit):
        gpu.parse_args([])
    assert "--device cpu --tiny" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# The whole path on CPU
# ------------------------------------------------------------------------------------------------
def test_dry_run_sizes_the_data_and_the_physical_limit(data_home, capsys):
    out = gpu.main(["--dry-run", "--device", "cpu", "--tiny", "--only", "lm", "--assumed-mfu", "0.5"])
    printed = capsys.readouterr().out
    assert "[dry-run]" in printed and "dry/lm_training_limit" in printed
    # the two_stage sweep's subsets at 20 entities (X1: 80 datapoints; X2: d1/d2/d3consis .08 + no_qd .06)
    n1, n2 = out["dry/lm_stage1_datapoints"], out["dry/lm_stage2_datapoints"]
    assert (n1, n2) == (80, 6)  # the authors' subset rounding (docs/fidelity.md)
    assert out["dry/lm_tokens_per_datapoint"] == 48  # the sweeps' faithful padding, not the tokenizer's length
    tokens = 48 * (20 * n1 + 10 * n2)
    n = out["dry/lm_matmul_params"]
    assert out["dry/lm_training_flops_per_seed"] == pytest.approx((6 * n + 12 * 6 * 128 * 48) * tokens)
    assert out["dry/lm_eval_flops_per_seed_max"] == pytest.approx(30 * out["dry/lm_eval_examples_per_epoch"] * 2 * n * 28)
    assert out["dry/peak_tflops"] == pytest.approx(989)  # no GPU: the H100's, for the estimate


@pytest.mark.slow
def test_tiny_cpu_run_prints_throughput_mfu_and_projections(data_home, capsys):
    out = gpu.main(["--device", "cpu", "--tiny", "--peak-tflops", "1"])
    printed = capsys.readouterr().out
    for block in ("[lm]", "[set_inclusion]", "[mnist]", "[projection per seed]"):
        assert block in printed
    for key in ("lm/train_tokens_per_s", "lm/mfu", "lm/eval_engine_examples_per_s", "si/train_steps_per_s",
                "si/eval_examples_per_s", "mnist/train_images_per_s", "mnist/eval_images_per_s"):
        assert out[key] > 0, key
    assert out["lm/mfu"] == pytest.approx(out["lm/train_tokens_per_s"] * out["lm/train_flops_per_token"] / 1e12)
    assert out["lm/eval_engine_examples"] == out["lm/eval_engine_generated"] > 0  # random weights: all generate
    for name in gpu.EXPERIMENTS:
        assert f"  {name}: projected " in printed
    assert out["lm/tokens_per_datapoint"] == 48 and out["lm/faithful_padding"] is True  # as the sweeps run
    assert out["lm/real_tokens_per_datapoint"] < 48
    assert out["si/vocab"] == 17_712  # the set_inclusion sweep's all-names vocabulary, whatever the size here
    assert out["lm/model_load_s"] > 0 and out["lm/checkpoint_save_s"] > 0 and out["lm/checkpoint_load_s"] > 0
    assert out["lm/checkpoint_bytes"] > 4 * out["lm/matmul_params"]  # fp32 weights (+ optimizer state)
    # two_stage at its 30-minute cadence: epochs take well under a minute here, so only the stage
    # boundary (stage 2's fresh start) is checkpointed
    assert out["lm/train_epoch_s"] < 60 and out["lm/checkpoints_per_seed"] == 1
    line = out["lm/projection"]
    seconds = gpu.project_lm(out["lm/train_epoch_s"], out["lm/stage1_datapoints"], out["lm/stage2_datapoints"],
                             out["lm/eval_engine_epoch_s_extrapolated"], load_s=out["lm/model_load_s"],
                             checkpoint_s=out["lm/checkpoint_save_s"], checkpoints=out["lm/checkpoints_per_seed"])
    assert math.isclose(line["projected_s"], seconds)
    assert out["lm/record"] == f"MEASURED_MFU['cpu'] = {out['lm/mfu']:.3f}" and "record: MEASURED_MFU" in printed
    assert out["mnist/image_shape"] == "1x32x32"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_cuda_run(data_home, capsys):
    out = gpu.main(["--device", "cuda", "--tiny"])
    assert out["peak_tflops"] is not None, out["device"]  # a GPU whose peak the plan does not know: add it
    assert out["lm/mfu"] > 0 and out["lm/max_memory_gib"] > 0
    assert out["lm/eval_engine_examples"] > 0
    assert "[projection per seed]" in capsys.readouterr().out
