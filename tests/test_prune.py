"""metaocl.sweep.prune on experiment folders laid out as Ray leaves them, with states it cannot use:
nothing is deleted then (tests/test_sweep_ray.py prunes a real sweep's folder)."""

import json

from metaocl.sweep.prune import CheckpointPruner, checkpoint_index


def trial_with_checkpoints(exp_dir, n=3):
    trial = exp_dir / "trainable_00000_0"
    for i in range(n):
        (trial / f"checkpoint_{i:06d}").mkdir(parents=True)
        (trial / f"checkpoint_{i:06d}" / "state.pt").write_bytes(b"x")
    return trial


def test_checkpoint_index():
    assert checkpoint_index("/runs/exp/trainable_0/checkpoint_000012") == 12
    assert checkpoint_index("bucket/exp/trainable_0/checkpoint_000000/") == 0
    assert checkpoint_index("/runs/exp/trainable_0/checkpoint_tmp123") is None
    assert checkpoint_index("/runs/exp/trainable_0/result.json") is None


def test_no_state_yet_deletes_nothing(tmp_path):
    trial = trial_with_checkpoints(tmp_path)
    assert CheckpointPruner(str(tmp_path)).prune() == 0
    assert len(list(trial.glob("checkpoint_*"))) == 3


def test_state_caught_mid_copy_deletes_nothing_quietly(tmp_path, capsys):
    trial = trial_with_checkpoints(tmp_path)
    (tmp_path / "experiment_state-2026-12-01_10-00-00.json").write_text('{"trial_data": [["{}", "{\\"check')
    assert CheckpointPruner(str(tmp_path)).prune() == 0
    assert len(list(trial.glob("checkpoint_*"))) == 3 and capsys.readouterr().err == ""


def test_state_ray_cannot_decode_deletes_nothing_and_warns_once(tmp_path, capsys):
    trial = trial_with_checkpoints(tmp_path)
    state = {"trial_data": [["{}", json.dumps({"checkpoint_manager": {"_type": "CLOUDPICKLE_FALLBACK", "value": "00"}})]]}
    (tmp_path / "experiment_state-2026-12-01_10-00-00.json").write_text(json.dumps(state))
    pruner = CheckpointPruner(str(tmp_path))
    assert pruner.prune() == 0 and pruner.prune() == 0
    assert len(list(trial.glob("checkpoint_*"))) == 3
    err = capsys.readouterr().err
    assert err.count("metaocl: old trial checkpoints are kept (cannot read Ray's experiment state") == 1
