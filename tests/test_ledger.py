"""The ledger of a sweep's storage (metaocl.sweep.ledger): which folder `--resume` continues."""

import pytest

from metaocl.config import ConfigError, load_sweep
from metaocl.sweep.ledger import Ledger, experiment_prefix, find_resumable


def _started(storage, sweep, suffix: str, created: float, restorable: bool = True, experiment: str | None = None):
    exp_dir = storage / (experiment_prefix(sweep) + suffix)
    Ledger(str(exp_dir)).write_state({"experiment": experiment or sweep.experiment_name, "created": created,
                                      "parent_run_id": suffix})
    if restorable:
        (exp_dir / "tuner.pkl").write_bytes(b"")  # what Tune's can_restore looks for
    return exp_dir


def test_find_resumable_takes_the_newest_started_folder_of_this_sweep(tmp_path):
    sweep = load_sweep("quickstart", smoke=True)
    other = load_sweep("quickstart")
    _started(tmp_path, sweep, "aaaa", created=100)
    newest = _started(tmp_path, sweep, "bbbb", created=300)
    _started(tmp_path, sweep, "cccc", created=200)
    _started(tmp_path, other, "dddd", created=900)  # another sweep (metaocl/quickstart): never chosen
    (tmp_path / (experiment_prefix(sweep) + "eeee")).mkdir()  # no sweep.json (stopped at once): skipped
    exp_dir, state = find_resumable(sweep, str(tmp_path))
    assert exp_dir == str(newest) and state["parent_run_id"] == "bbbb"
    assert find_resumable(other, str(tmp_path))[1]["parent_run_id"] == "dddd"


def test_find_resumable_refuses_a_newest_folder_without_ray_state(tmp_path):
    sweep = load_sweep("quickstart", smoke=True)
    _started(tmp_path, sweep, "aaaa", created=100)
    newest = _started(tmp_path, sweep, "bbbb", created=300, restorable=False)
    with pytest.raises(ConfigError, match=f"--resume: {newest} holds no Ray experiment state"):
        find_resumable(sweep, str(tmp_path))
    with pytest.raises(ConfigError, match="--resume: no started sweep metaocl/quickstart under"):
        find_resumable(load_sweep("quickstart"), str(tmp_path))
