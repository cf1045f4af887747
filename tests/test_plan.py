"""The plan's estimates against hand computations and published figures (metaocl/sweep/plan.py).

Parameter counts are the models' published ones (their hub model cards); memory and FLOPs are
written out by hand here from the architecture. Nothing is trained: models live on the meta device.
"""

from __future__ import annotations

import pytest

from metaocl.config import ConfigError, load_sweep
from metaocl.sweep import plan

GB = 1e9


@pytest.fixture(autouse=True)
def _data_home(tmp_path_factory, monkeypatch):
    # the LM sizes are counted on the generated stand-in of CVDB, written under the data home
    monkeypatch.setenv("METAOCL_DATA", str(tmp_path_factory.getbasetemp() / "plan-data"))
    for var in ("METAOCL_GPU_TYPE", "METAOCL_GPU_MEMORY_GB"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("name,params", [
    ("EleutherAI/pythia-2.8b-deduped", 2_775_208_960),
    ("EleutherAI/pythia-12b-deduped", 11_846_072_320),
    ("EleutherAI/pythia-70m-deduped", 70_426_624),
    ("EleutherAI/gpt-neo-125m", 125_198_592),
    ("EleutherAI/gpt-neo-2.7B", 2_651_307_520),
    ("meta-llama/Llama-2-7b-hf", 6_738_415_616),
    ("google-t5/t5-3b", 2_851_598_336),
])
def test_parameter_counts_from_configs_match_the_published_ones(name, params):
    assert plan.lm_shape(name).params == params


def test_pythia_2_8b_fp32_weights_and_gradients_are_22_2_gb():
    shape = plan.lm_shape("EleutherAI/pythia-2.8b-deduped")
    mem = plan.memory(shape, optimizer="adafactor", weight_bytes=4, autocast=True, micro_batch=256, tokens=48)
    assert mem["weights"] + mem["gradients"] == 8 * 2_775_208_960
    assert round((mem["weights"] + mem["gradients"]) / GB, 1) == 22.2
    assert mem["autocast copies"] == 2 * shape.matmul_params  # bf16 copies of the matmul weights: 5.3 GB
    assert mem["optimizer"] < 0.1 * GB  # Adafactor's factored second moments
    adamw = plan.memory(shape, optimizer="adamw", weight_bytes=4, autocast=True, micro_batch=256, tokens=48)
    assert adamw["optimizer"] == 2 * 4 * shape.params  # two fp32 moments: +22.2 GB
    # activations by hand (16-bit, s b h (34 + 5 a s / h) per layer) and logits (bf16 + fp32 + fp32 grad)
    sbh = 256 * 48 * 2560
    assert mem["activations"] == pytest.approx(32 * sbh * (34 + 5 * 32 * 48 / 2560))
    assert mem["logits"] == 256 * 48 * 50304 * 10
    assert 60 * GB < mem["peak"] < 80 * GB  # fits one 80 GB GPU at micro-batch 256, tightly


def test_pythia_12b_is_refused_on_80_gb_naming_what_would_fit():
    sweep = load_sweep("model_size", seeds=1,
                       overrides=["model.name=EleutherAI/pythia-12b-deduped", "train.stage1_seed=0"])
    shape = plan.lm_shape("EleutherAI/pythia-12b-deduped")
    assert round(8 * shape.params / GB, 1) == 94.8  # fp32 weights + gradients alone
    line = plan.refusal(plan.plan_for([sweep], plan.stated_cluster("8xH100")))
    assert line is not None and "\n" not in line
    assert "pythia-12b-deduped" in line and "largest GPU of 8 x H100, 80 GB each" in line
    assert "--set model.dtype=bfloat16" in line and "H200 (141 GB)" in line
    assert plan.refusal(plan.plan_for([sweep], plan.stated_cluster("H200"))) is None
    bf16 = load_sweep("model_size", seeds=1, overrides=["model.name=EleutherAI/pythia-12b-deduped",
                                                        "train.stage1_seed=0", "model.dtype=bfloat16"])
    assert plan.refusal(plan.plan_for([bf16], plan.stated_cluster("8xH100"))) is None


def test_two_stage_flops_by_hand():
    sweep = load_sweep("two_stage", seeds=1, overrides=["train.stage1_seed=0"])
    est = plan.plan_sweep(sweep).estimates[0]
    n = 32 * (12 * 2560**2 + 9 * 2560) + 2560 * 50304  # Pythia-2.8B matmul parameters
    assert est.shape.matmul_params == n == 2_646_097_920
    per_token = 6 * n + 12 * 32 * 2560 * 48  # 6N + attention at 48 tokens (faithful padding)
    stage1 = 20 * 16000 * 48  # 4000 entities: 16,000 stage-1 datapoints, 20 epochs, 48 tokens each
    stage2 = 10 * 960 * 48  # 960 stage-2 definitions, 10 epochs
    assert est.shared_flops == pytest.approx(per_token * stage1)  # stage 1: once per stage-1 seed
    assert est.train_flops == pytest.approx(per_token * stage2)
    train_n, rows = plan.lm_data_sizes(_data_yaml(sweep))
    assert train_n == (16000, 960)
    assert est.eval_flops == pytest.approx(30 * rows * 2 * n * (20 + 8))  # 30 evaluations, 8 new tokens
    # the cadence (train.checkpoint_minutes, default 30) on the reference clock: an H100 at 30% MFU
    # runs a stage-1 epoch in 41 s, so stage 1 (to the epoch stage 2 starts from) and stage 2 end
    # before 30 minutes pass: no checkpoint inside either; every 5 minutes: one in stage 1 (epoch 8)
    assert plan.unit_seconds([est.shared_flops], [20])[0] == pytest.approx(per_token * 16000 * 48 / (989e12 * 0.3))
    assert est.shared_runs == 1 and est.checkpoints == 0 and est.shared_checkpoints == 0
    every5 = plan.plan_sweep(load_sweep("two_stage", seeds=1, overrides=["train.stage1_seed=0",
                                                                         "train.checkpoint_minutes=5"])).estimates[0]
    assert (every5.shared_checkpoints, every5.checkpoints) == (1, 0)
    assert round(est.checkpoint_each / GB, 1) == 11.1  # fp32 weights + Adafactor state


def _data_yaml(sweep) -> str:
    import yaml

    from metaocl.config import to_dict

    return yaml.safe_dump(to_dict(sweep.trials()[0].config.data), sort_keys=True)


def test_projection_against_appendix_f():
    """The authors' 6 A100-hours per two-stage Pythia-2.8B seed imply about 5.5% MFU (training and
    the evaluation upper bound; 3.7% counting training alone): their HF Trainer with a generation
    pipeline. At that utilisation the plan projects their 6 hours; at our stated 30% about 1.1 h."""
    sweep = load_sweep("two_stage", seeds=1, overrides=["train.stage1_seed=0"])
    a100 = plan.stated_cluster("A100")
    p = plan.plan_for([sweep], a100)
    flops = p.flops
    mfu = plan.implied_mfu(flops, plan.PAPER_A100_HOURS["two_stage"], 312e12)
    assert 0.05 < mfu < 0.06
    training_only = plan.implied_mfu(flops - p.sweeps[0].estimates[0].eval_flops, 6.0, 312e12)
    assert 0.035 < training_only < 0.04
    assert p.gpu_hours(mfu) == pytest.approx(6.0)
    assert p.gpu_hours() == pytest.approx(6.0 * mfu / plan.ASSUMED_MFU)


def test_set_inclusion_trials_share_one_80_gb_gpu():
    """16 set-inclusion trials side by side on one 80 GB GPU with the authors' 17,712-token vocabulary
    (21 with only the words in use); stage 1's FLOPs count once per stage-1 seed (20 units for 60 trials)."""
    sweep = load_sweep("set_inclusion")
    p = plan.plan_for([sweep], plan.stated_cluster("H100"))
    share = p.gpu_share()
    assert share == 0.0625  # 1/16
    est = p.sweeps[0].estimates[0]
    assert len(est.trials) == 60 and est.shared_runs == 20 and est.peak * plan.SHARED_HEADROOM * 16 <= 80 * GB
    used = plan.plan_for([load_sweep("set_inclusion", overrides=["data.vocabulary=used"])], plan.stated_cluster("H100"))
    assert used.gpu_share() == 0.0476  # 1/21, rounded down so that 21 shares fit in one GPU
    assert est.shared_flops > 0 and est.flops == pytest.approx(
        60 * (est.train_flops + est.eval_flops) + 20 * est.shared_flops)
    # stage 1: 100 epochs of 83,200 rows; stage 2: 40 epochs of 1,600 definitions
    assert est.shared_flops / est.train_flops == pytest.approx(100 * 83_200 / (40 * 1_600))
    assert sweep.trial_resources(True, share)["gpu"] == share
    assert plan.gpu_fraction(60 * GB, 80 * GB) == 1.0  # more than half: a whole GPU
    assert plan.gpu_fraction(10 * GB, 80 * GB) == pytest.approx(0.1666)  # 6 fit with head-room
    assert plan.gpu_fraction(20 * GB, 80 * GB) == pytest.approx(0.3333)  # 3 x 0.3334 would exceed one GPU


def test_each_trial_gets_its_own_configurations_gpu_share():
    """batch_size on 8 x H100 (gpu: auto): the small batch sizes pack several to a GPU, the large
    ones get a whole one, every seed of a point the same; the sweep's largest share is what a node
    must hold. Up to 25 trials at once: 10 x 0.2 on 2 GPUs, 5 x 0.25 + 5 x 0.3333 + 5 x 0.5 on 5
    (filled smallest first, first fit), 1 whole GPU left for a 1."""
    import dataclasses

    from metaocl.sweep.preflight import trial_gpus

    sweep = load_sweep("batch_size")
    p = plan.plan_for([sweep], plan.stated_cluster("8xH100"))
    shares = p.trial_shares()
    assert len(shares) == 60
    by_point = {tid.split("_")[0]: share for tid, share in shares.items() if tid.endswith("_s0")}
    assert by_point == {"p00": 0.2, "p01": 0.2, "p02": 0.25, "p03": 0.3333, "p04": 0.5, **{f"p{i:02d}": 1.0
                                                                                           for i in range(5, 12)}}
    assert all(share == by_point[tid.split("_")[0]] for tid, share in shares.items())
    assert p.gpu_share() == 1.0
    assert "  packing: each trial gets its configuration's gpu share (auto), 0.2 to 1; up to 25 trials at a " \
           "time on 8 GPUs" in plan.render(p).splitlines()
    resources = sweep.trial_resources(True, p.gpu_share())
    assert trial_gpus(sweep, shares, resources, p) == shares
    assert set(trial_gpus(sweep, shares, resources, None).values()) == {1.0}  # no plan: the sweep's one share
    fixed = dataclasses.replace(sweep, resources=dataclasses.replace(sweep.resources, gpu=0.5))  # a number: as given
    assert set(trial_gpus(fixed, shares, fixed.trial_resources(True), p).values()) == {0.5}


def test_trials_at_once_count_as_ray_places_gpu_shares():
    assert plan.at_once([0.5, 0.5, 0.5, 1.0, 1.0], 2) == 3  # 0.5 + 0.5 on one GPU, 0.5 on the other: no whole GPU left
    assert plan.at_once([0.3333] * 7, 2) == 6
    assert plan.at_once([0.0476] * 25, 1) == 21
    assert plan.at_once([2.0] * 5, 8) == 4 and plan.at_once([1.0] * 10, 8) == 8


def test_trial_resources_come_from_each_trials_spec():
    """What Ray Tune asks for per trial (tune.with_resources): the spec's cpus and gpus, else the sweep's."""
    from metaocl.sweep.worker import TrialResources

    resources = TrialResources({"cpu": 4, "gpu": 1.0})
    assert resources({"trial": {"cpus": 4.0, "gpus": 0.25}}).bundles == [{"CPU": 4.0, "GPU": 0.25}]
    assert resources({"trial": {"cpus": 2.0}}).bundles == [{"CPU": 2.0, "GPU": 1.0}]  # a spec from before
    assert resources({}).bundles == [{"CPU": 4.0, "GPU": 1.0}]


def test_gpu_types_and_memory_override(monkeypatch):
    assert plan.parse_gpu_type("8xH100") == (8, "H100") and plan.parse_gpu_type("h200") == (1, "H200")
    with pytest.raises(ConfigError, match="--gpu-type 'X100'"):
        plan.parse_gpu_type("X100")
    assert plan.stated_cluster(None) is None
    monkeypatch.setenv("METAOCL_GPU_MEMORY_GB", "40")
    c = plan.stated_cluster("4xH100")
    assert (c.gpus, c.gpu_bytes, c.gpu_name) == (4, 40 * GB, "H100")
    assert plan.peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and plan.peak_flops("cpu") is None


def test_mnist_and_tiny_models_are_estimated_without_weights():
    sweep = load_sweep("mnist", seeds=1)
    est = plan.plan_sweep(sweep).estimates[0]
    import timm

    model = timm.create_model("convnextv2_tiny", num_classes=27, in_chans=1)
    assert est.shape.params == sum(p.numel() for p in model.parameters())
    assert est.train_flops > 0 and est.peak > est.static_bytes > 0
    smoke = plan.plan_sweep(load_sweep("two_stage", smoke=True)).estimates[0]
    assert smoke.shape.family == "gpt_neox" and smoke.download is None


def test_dry_run_prints_the_plan_below_the_trial_table(capsys):
    from metaocl.cli import main

    assert main(["sweep", "set_inclusion", "--dry-run", "--gpu-type", "H100"]) == 0
    out = capsys.readouterr().out
    assert out.index("trial ") < out.index("plan on 1 x H100, 80 GB each (stated: H100)")
    for text in ("sweep set_inclusion: 60 trials", "GPU-hours", "peak memory per trial: up to",
                 "checkpoints written:", "downloads: none", "packing: each trial gets gpu=0.0"):
        assert text in out, out
