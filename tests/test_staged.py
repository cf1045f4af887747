"""The staged-trial skeleton's checkpoint cadence and the checkpoint arithmetic (known answers).

The cadence runs the real skeleton (metaocl.experiments.staged.run) on a tiny torch model with a
fake clock that each unit of training advances by a known number of seconds, so the count of
checkpoints is exact without waiting; the projection (n_checkpoints) must give the same count."""

import pytest
import torch

from metaocl.config import from_dict, load_sweep
from metaocl.configs.set_inclusion import SetInclusionConfig
from metaocl.experiments import set_inclusion, staged
from metaocl.experiments.staged import CheckpointPolicy, Stage, StagedTrial

PYTHIA_2_8B_PARAMS = 2_775_208_960  # EleutherAI/pythia-2.8b-deduped, embeddings included


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class TinyTrial(StagedTrial):
    """A linear model; each unit advances ``clock`` by ``seconds[stage]``."""

    def __init__(self, clock: Clock, seconds: dict[int, float]):
        self.clock, self.seconds = clock, seconds
        self.model = torch.nn.Linear(3, 1)
        self.generator = torch.Generator().manual_seed(0)

    def start_stage(self, stage):
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.scheduler = None

    def train_unit(self, stage, unit):
        x = torch.randn(8, 3, generator=self.generator)
        loss = self.model(x).pow(2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.clock.now += self.seconds[stage.number]
        return {"train/loss": float(loss.detach())}

    def evaluate(self, stage):
        return {"acc/x": float(self.model.weight.sum())}


class Saving:
    interactive = False

    def __init__(self):
        self.rows, self.saved = [], []

    def __call__(self, metrics):
        self.rows.append(dict(metrics))

    def save_checkpoint(self, state):
        self.saved.append((state["stage"], state["epoch"]))
        return 1000

    def restore_checkpoint(self):
        return None


@pytest.mark.slow  # trains (a few optimizer steps of a one-layer model)
def test_checkpoints_every_minutes_and_at_stage_boundaries_with_a_fake_clock():
    config = from_dict(SetInclusionConfig, {"train": {"stage1_epochs": 5, "stage2_epochs": 3, "checkpoint_minutes": 1},
                                            "eval": {"every": 2}})
    plan = set_inclusion.stages(config)
    assert plan == [Stage(1, 5, 2), Stage(2, 3, 2)]
    clock, reporter = Clock(), Saving()
    staged.run(TinyTrial(clock, {1: 25.0, 2: 25.0}), plan, reporter, CheckpointPolicy(1.0, clock=clock))
    # stage 1: 25 s units; at 75 s a minute has passed (unit 3); unit 5 is the stage's end, not
    # checkpointed inside; the boundary at stage 2's start (epoch 0); stage 2: 50 s then its end
    assert reporter.saved == [(1, 3), (2, 0)]
    assert staged.n_checkpoints(config, 25.0) == [(1, 0), (0, 1)]
    assert [int(r["epoch"]) for r in reporter.rows] == [2, 4, 5, 7, 8] and staged.n_reports(plan) == 5
    assert reporter.rows[-1]["perf/checkpoints"] == 2 and reporter.rows[-1]["perf/checkpoint_bytes"] == 2000
    assert reporter.rows[2]["perf/checkpoints"] == 1  # the unit-3 checkpoint, reported with the next evaluation


@pytest.mark.slow  # trains (a few optimizer steps of a one-layer model)
@pytest.mark.parametrize("minutes, expected", [(0, [(4, 0), (2, 1)]), (None, [(0, 0), (0, 0)]), (600, [(0, 0), (0, 1)])])
def test_checkpoint_counts_of_the_extremes(minutes, expected):
    config = from_dict(SetInclusionConfig, {"train": {"stage1_epochs": 5, "stage2_epochs": 3,
                                                      "checkpoint_minutes": minutes}})
    assert staged.n_checkpoints(config, 10.0) == expected
    clock, reporter = Clock(), Saving()
    staged.run(TinyTrial(clock, {1: 10.0, 2: 10.0}), set_inclusion.stages(config), reporter,
               CheckpointPolicy(minutes, clock=clock))
    assert len(reporter.saved) == sum(a + b for a, b in expected)


def test_two_stage_pythia_2_8b_checkpoint_bytes_known_answer():
    # Pythia-2.8B, fp32 weights, Adafactor; a trial that trains stage 1 whole (the sweep's trials start
    # stage 2 from stage-1 epoch 15, the figure's; a stage-1 unit trains all 20)
    config = load_sweep("two_stage", overrides=["train.stage2_from_epoch=null"]).trials()[0].config
    n = PYTHIA_2_8B_PARAMS
    assert config.train.checkpoint_minutes == 30
    assert staged.checkpoint_bytes(config, n, optimizer_state=False) == 4 * n == 11_100_835_840
    assert staged.checkpoint_bytes(config, n) == 4 * n + 11_100_835
    # stage 1: 20 epochs of 120 s (40 min): one checkpoint inside it (at 30 min), none at its end;
    # a full trial would checkpoint stage 2's fresh start; stage 2 (10 x 30 s) nothing inside
    assert staged.n_checkpoints(config, [120, 30]) == [(1, 0), (0, 1)]
    # scheduled as a stage-1 unit per stage-1 seed (its model written once) + stage-2 trials that load it
    stage1_unit = staged.trial_checkpoint_bytes(config, n, [120, 30], last=1) + 4 * n
    stage2_trial = staged.trial_checkpoint_bytes(config, n, [120, 30], first=2)
    assert stage1_unit == 22_212_772_515 and stage2_trial == 0
    total = 20 * stage1_unit + 100 * stage2_trial
    assert total == 444_255_450_300 <= 1.5e12
    # the bound holds while a stage-1 epoch takes under 10 minutes (stage 1 under 3 h 20 min): every
    # 4th epoch is checkpointed, 4 inside stage 1; at 10 minutes every 3rd, 6 inside: 1.55 TB
    assert staged.n_checkpoints(config, [599, 30], last=1) == [(4, 0)]
    assert 20 * (staged.trial_checkpoint_bytes(config, n, [599, 30], last=1) + 4 * n) <= 1.5e12
    assert staged.n_checkpoints(config, [600, 30], last=1) == [(6, 0)]
    assert 20 * (staged.trial_checkpoint_bytes(config, n, [600, 30], last=1) + 4 * n) > 1.5e12


def test_bfloat16_and_adamw_checkpoint_sizes():
    config = load_sweep("two_stage", overrides=["model.dtype=bfloat16", "train.optimizer=adamw"]).trials()[0].config
    assert staged.checkpoint_bytes(config, 1000) == 2 * 1000 + 8 * 1000
    assert staged.checkpoint_bytes(config, 1000, optimizer_state=False) == 2000
