"""Epoch checkpoints through the reporter: a trial that dies and is restarted ends exactly where an
uninterrupted one does (same metrics at every epoch), and a reporter without checkpoints still works.
Set inclusion, LM (with its stage-1 cache) and MNIST runners."""

import dataclasses
import io

import pytest
import torch

from metaocl.config import from_dict, load_sweep
from metaocl.configs.set_inclusion import SetInclusionConfig
from metaocl.experiments import PrintReporter
from metaocl.experiments import lm, set_inclusion

torch.set_num_threads(1)

pytestmark = pytest.mark.slow  # every test here trains a runner (the rule in pyproject.toml)

TINY = {
    "device": "cpu", "seed": 3,
    "data": {"n_variables": 60, "train_questions": 8, "test_questions": 8},
    "model": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    "train": {"stage1_epochs": 3, "stage2_epochs": 2, "batch_size": 64, "optimizer": "adamw", "lr": 0.003,
              "checkpoint_minutes": 0},
    "eval": {"every": 2},
}


class Crash(RuntimeError):
    pass


class CheckpointingReporter:
    """Like Ray's reporter: checkpoints survive a crash (serialized like a file), metrics are recorded."""

    interactive = False

    def __init__(self, crash_at_report: int | None = None):
        self.blob: bytes | None = None
        self.rows: list[dict] = []
        self.crash_at_report = crash_at_report
        self.saves = 0

    def __call__(self, metrics):
        if self.crash_at_report is not None and len(self.rows) + 1 == self.crash_at_report:
            self.crash_at_report = None
            raise Crash("worker died")
        self.rows.append(dict(metrics))

    def save_checkpoint(self, state):
        buf = io.BytesIO()
        torch.save(state, buf)
        self.blob = buf.getvalue()
        self.saves += 1

    def restore_checkpoint(self):
        return None if self.blob is None else torch.load(io.BytesIO(self.blob), weights_only=False)


def by_epoch(rows):
    return {int(r["epoch"]): {k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows}


@pytest.mark.parametrize("crash_at_report", [2, 3])  # 2: inside stage 1; 3: the last report of stage 1
def test_restart_from_checkpoint_matches_uninterrupted_run(crash_at_report):
    config = from_dict(SetInclusionConfig, TINY)
    straight = CheckpointingReporter()
    final = set_inclusion.run(config, straight)
    # checkpoint_minutes 0: after epochs 1, 2 of stage 1, at the start of stage 2, after its epoch 1
    # (not at the end of the trial)
    assert straight.saves == 4

    flaky = CheckpointingReporter(crash_at_report=crash_at_report)
    with pytest.raises(Crash):
        set_inclusion.run(config, flaky)
    done_before = len(flaky.rows)
    resumed_final = set_inclusion.run(config, flaky)  # the retry: same reporter, its last checkpoint
    assert len(flaky.rows) - done_before < len(straight.rows)  # it did not start over
    assert by_epoch(flaky.rows) == by_epoch(straight.rows)
    assert {k: v for k, v in resumed_final.items() if not k.startswith("perf/")} == \
        {k: v for k, v in final.items() if not k.startswith("perf/")}


def test_print_reporter_checkpoints_are_no_ops():
    reporter = PrintReporter()
    reporter.save_checkpoint({"x": 1})
    assert reporter.restore_checkpoint() is None
    set_inclusion.run(from_dict(SetInclusionConfig, dict(TINY, train=dict(TINY["train"], stage2_epochs=0))), reporter)
    assert [int(r["epoch"]) for r in reporter.history] == [2, 3]


def without_perf(metrics):
    return {k: v for k, v in metrics.items() if not k.startswith("perf/")}


@pytest.fixture(scope="module")
def lm_config():
    overrides = ["data.n_entities=40", "data.entity_attribution=false", "train.epochs=[2,2]",
                 "train.checkpoint_minutes=0"]
    return load_sweep("two_stage", smoke=True, overrides=overrides).trials()[0].config  # tiny-gpt-neox, cvdb_sample


def lm_with(config, **train):
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **train))


@pytest.fixture(scope="module")
def lm_straight(lm_config, tmp_path_factory):
    reporter = CheckpointingReporter()
    final = lm.run(lm_with(lm_config, stage1_cache=str(tmp_path_factory.mktemp("straight"))), reporter)
    return reporter, final


# 2: inside stage 1 (no stage-1 cache yet); 3: first report of stage 2 (the last checkpoint is the end of
# stage 1, and the cache exists); 4: inside stage 2 (a stage-2 checkpoint bypasses the cache)
@pytest.mark.parametrize("crash_at_report", [2, 3, 4])
def test_lm_restart_from_checkpoint_matches_uninterrupted_run(lm_config, lm_straight, crash_at_report, tmp_path,
                                                             monkeypatch):
    monkeypatch.setenv("METAOCL_TRIAL_CPUS", "1")
    straight, final = lm_straight
    # checkpoint_minutes 0: after stage 1's epoch 1 (its end goes into the stage-1 cache, not a
    # checkpoint), after stage 2's epoch 1 (its end is the trial's)
    assert straight.saves == 2
    config = lm_with(lm_config, stage1_cache=str(tmp_path / "stage1"))
    flaky = CheckpointingReporter(crash_at_report=crash_at_report)
    with pytest.raises(Crash):
        lm.run(config, flaky)
    resumed_final = lm.run(config, flaky)
    assert flaky.saves == 2  # every checkpoint written once: the retry did not start over
    assert by_epoch(flaky.rows) == by_epoch(straight.rows)
    assert without_perf(resumed_final) == without_perf(final)


def test_lm_checkpoint_minutes(lm_config, monkeypatch):
    monkeypatch.setenv("METAOCL_TRIAL_CPUS", "1")
    config = lm_with(lm_config, stage1_cache=None, epochs=[3, 2], checkpoint_minutes=0)
    reporter = CheckpointingReporter()
    lm.run(config, reporter)
    # stage 1: after epochs 1, 2; the boundary (stage 2's start, epoch 0); stage 2: after epoch 1
    assert reporter.saves == 4
    state = reporter.restore_checkpoint()
    assert (state["stage"], state["epoch"], state["units_before"]) == (2, 1, 3) and len(state["history"]) == 4
    assert state["totals"]["perf/checkpoints"] == 3  # those before this one
    last = reporter.rows[-1]
    assert last["perf/checkpoints"] == 4 and last["perf/checkpoint_s"] > 0
    boundary = CheckpointingReporter()  # a long interval: only the stage boundary
    lm.run(lm_with(config, checkpoint_minutes=600), boundary)
    assert boundary.saves == 1 and (boundary.restore_checkpoint()["stage"], boundary.restore_checkpoint()["epoch"]) == (2, 0)
    off = CheckpointingReporter()
    lm.run(lm_with(config, checkpoint_minutes=None), off)
    assert off.saves == 0 and by_epoch(off.rows) == by_epoch(reporter.rows)


MNIST_TINY = {
    "device": "cpu", "seed": 1,
    "data": {"digits": "sklearn_digits", "digit_size": 8, "n_pairs": 40},
    "model": {"name": "convnextv2_atto", "drop_path_rate": 0.1},  # drop path: the global RNG matters too
    "train": {"steps": 6, "batch_size": 8, "lr": 0.002, "warmup_steps": 2, "eval_every": 2, "checkpoint_minutes": 0},
    "eval": {"batches": 1, "batch_size": 8},
}


@pytest.fixture(scope="module")
def mnist_straight():
    from metaocl.configs.mnist import MnistConfig
    from metaocl.experiments import mnist

    reporter = CheckpointingReporter()
    final = mnist.run(from_dict(MnistConfig, MNIST_TINY), reporter)
    return reporter, final


@pytest.mark.parametrize("crash_at_report", [2, 3])  # 3: the last evaluation
def test_mnist_restart_from_checkpoint_matches_uninterrupted_run(mnist_straight, crash_at_report, monkeypatch):
    from metaocl.configs.mnist import MnistConfig
    from metaocl.experiments import mnist

    monkeypatch.setenv("METAOCL_TRIAL_CPUS", "1")
    straight, final = mnist_straight
    assert straight.saves == 2 and [int(r["epoch"]) for r in straight.rows] == [2, 4, 6]  # not at the end
    config = from_dict(MnistConfig, MNIST_TINY)
    flaky = CheckpointingReporter(crash_at_report=crash_at_report)
    with pytest.raises(Crash):
        mnist.run(config, flaky)
    assert flaky.restore_checkpoint()["kind_state"]["step"] == 2 * (crash_at_report - 1)
    resumed_final = mnist.run(config, flaky)
    assert flaky.saves == 2 and len(flaky.rows) == 3  # the retry went on from its checkpoint
    assert by_epoch(flaky.rows) == by_epoch(straight.rows)
    assert without_perf(resumed_final) == without_perf(final)


def test_mnist_checkpoints_follow_the_minutes(monkeypatch):
    from metaocl.configs.mnist import MnistConfig
    from metaocl.experiments import mnist

    monkeypatch.setenv("METAOCL_TRIAL_CPUS", "1")
    raw = dict(MNIST_TINY, train=dict(MNIST_TINY["train"], steps=5))
    reporter = CheckpointingReporter()
    mnist.run(from_dict(MnistConfig, raw), reporter)
    assert [int(r["epoch"]) for r in reporter.rows] == [2, 4, 5] and reporter.saves == 2  # steps 2 and 4
    off = CheckpointingReporter()
    mnist.run(from_dict(MnistConfig, dict(raw, train=dict(raw["train"], checkpoint_minutes=None))), off)
    assert off.saves == 0


# ------------------------------------------------------------------------------------------------
# The sweep's checkpoint store (metaocl.experiments.checkpoints.TrialCheckpoints) behind the Ray
# worker's own reporter: written once into trial storage (here a local folder), read back by a retry.
# ------------------------------------------------------------------------------------------------
class StoreReporter:
    """The Ray worker's TuneReporter with its checkpoint methods, reports kept in memory (no Ray
    session here), crashing like CheckpointingReporter."""

    def __init__(self, store, crash_at_report: int | None = None):
        from metaocl.sweep.worker import TuneReporter

        self.tune = TuneReporter(store)
        self.interactive, self.rows, self.crash_at_report = False, [], crash_at_report

    def __call__(self, metrics):
        if self.crash_at_report is not None and len(self.rows) + 1 == self.crash_at_report:
            self.crash_at_report = None
            raise Crash("worker died")
        self.rows.append(dict(metrics))

    def save_checkpoint(self, state):
        return self.tune.save_checkpoint(state)

    def restore_checkpoint(self):
        return self.tune.restore_checkpoint()


class DiesWhilePickled:
    """Makes ``torch.save`` fail part-way through a checkpoint, like a worker killed mid-write."""

    def __reduce__(self):
        raise Crash("node died mid-write")


def test_trial_store_restart_matches_uninterrupted_run_and_leaves_one_checkpoint(tmp_path):
    from metaocl.experiments.checkpoints import LATEST, TrialCheckpoints

    config = from_dict(SetInclusionConfig, TINY)
    straight = CheckpointingReporter()
    final = set_inclusion.run(config, straight)
    store = TrialCheckpoints(str(tmp_path / "exp"), "s0")
    flaky = StoreReporter(store, crash_at_report=3)
    with pytest.raises(Crash):
        set_inclusion.run(config, flaky)
    folder = tmp_path / "exp" / "metaocl" / "checkpoints" / "s0"
    assert sorted(p.name for p in folder.iterdir()) == sorted([store.latest()["file"], LATEST])
    retry = StoreReporter(TrialCheckpoints(str(tmp_path / "exp"), "s0"))  # a new attempt, a new process
    retry.rows = list(flaky.rows)
    resumed_final = set_inclusion.run(config, retry)
    assert by_epoch(retry.rows) == by_epoch(straight.rows)
    assert without_perf(resumed_final) == without_perf(final)
    assert resumed_final["perf/checkpoints"] == 4 == straight.saves  # each written once, across both attempts
    assert resumed_final["perf/checkpoint_bytes"] > 0
    assert len([p for p in folder.iterdir() if p.suffix == ".pt"]) == 1  # the previous one went after the switch


def test_a_half_written_checkpoint_is_never_read(tmp_path):
    from metaocl.experiments.checkpoints import LATEST, TrialCheckpoints

    store = TrialCheckpoints(str(tmp_path), "s0")
    store.save({"step": 1, "w": torch.ones(50)})
    good = store.latest()
    with pytest.raises(Crash):
        store.save({"step": 2, "w": torch.zeros(50), "boom": DiesWhilePickled()})
    assert store.latest() == good  # the record still names the whole one
    assert len(store.files()) == 3  # and the half-written file lies beside it, named by nothing
    retry = StoreReporter(TrialCheckpoints(str(tmp_path), "s0"))
    state = retry.restore_checkpoint()
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(50))
    assert store.files() == sorted([good["file"], LATEST])  # the retry deleted the half-written one
