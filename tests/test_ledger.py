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


def _state_of(trials, drop=(), change=None):
    """sweep.json as a sweep started by an earlier metaocl wrote it: the fields in ``drop`` (dotted)
    not yet there, ``change`` = (dotted, value) different."""
    from metaocl.sweep.ledger import trial_configs

    configs = trial_configs(trials)
    for config in configs.values():
        for dotted in drop:
            *path, last = dotted.split(".")
            node = config
            for key in path:
                node = node[key]
            del node[last]
        if change:
            *path, last = change[0].split(".")
            node = config
            for key in path:
                node = node[key]
            node[last] = change[1]
    return {"fingerprint": "from-an-earlier-version", "configs": configs}


def test_resume_accepts_fields_added_since_the_sweep_started_at_their_defaults():
    from metaocl.sweep.ledger import fingerprint, same_trials

    trials = {t.trial_id: t for t in load_sweep("two_stage", smoke=True).trials()}
    assert same_trials(trials, {"fingerprint": fingerprint(trials)}) == (True, [])
    added = ("train.authors_save_each_epochs", "train.grad_alignment_variables")
    assert same_trials(trials, _state_of(trials, drop=added)) == (True, sorted(added))
    # the sweep's own fingerprint is the one earlier versions computed: unchanged by keeping configs
    import hashlib
    import json

    old = hashlib.sha256(json.dumps({tid: t.config_dict() for tid, t in sorted(trials.items())}, sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    assert fingerprint(trials) == old


@pytest.mark.parametrize("what", ["changed value", "added field not at its default", "removed field", "other trials",
                                  "no configs kept"])
def test_resume_refuses_trials_that_differ_in_anything_else(what):
    from metaocl.sweep.ledger import same_trials

    trials = {t.trial_id: t for t in load_sweep("two_stage", smoke=True).trials()}
    if what == "changed value":
        state = _state_of(trials, change=("train.lr", 0.5))
    elif what == "added field not at its default":  # the sweep sets a field its start did not know
        trials = {t.trial_id: t for t in load_sweep("two_stage", smoke=True,
                                                    overrides=["train.authors_save_each_epochs=5"]).trials()}
        state = _state_of(trials, drop=("train.authors_save_each_epochs",))
    elif what == "removed field":
        state = _state_of(trials)
        for config in state["configs"].values():
            config["train"]["a_field_since_removed"] = 1
    elif what == "other trials":
        state = _state_of(trials)
        state["configs"].pop(sorted(state["configs"])[0])
    else:
        state = {"fingerprint": "from-an-earlier-version"}
    assert same_trials(trials, state) == (False, [])
