"""metaocl.sweep.prune and the trial checkpoint store it prunes (metaocl.experiments.checkpoints),
on a local folder laid out as a sweep leaves it: a finished trial keeps exactly its last checkpoint,
an unfinished one is never touched (one of its attempts may be writing). tests/test_s3.py and
tests/test_sweep_ray.py prune real sweeps' folders."""

import torch

from metaocl.experiments.checkpoints import LATEST, TrialCheckpoints
from metaocl.sweep.ledger import Ledger
from metaocl.sweep.prune import CheckpointPruner


def leftovers(exp_dir, tid):
    """A trial with two checkpoints written, and what dead attempts leave: a half-written checkpoint,
    the previous checkpoint of an attempt that died right after the switch, a temporary record."""
    store = TrialCheckpoints(str(exp_dir), tid)
    store.save({"x": torch.zeros(3)})
    first = store.latest()["file"]
    store.save({"x": torch.ones(3)})
    folder = exp_dir / "metaocl" / "checkpoints" / tid
    (folder / first).write_bytes(b"previous")  # the previous one, not yet deleted
    (folder / "000002-999-dead.pt").write_bytes(b"PK\x03\x04 half")  # half-written, never named
    (folder / f"{LATEST}.999-dead.tmp").write_text("{")
    return store, folder


def test_a_finished_trial_keeps_exactly_its_last_checkpoint_an_unfinished_one_everything(tmp_path):
    done, done_folder = leftovers(tmp_path, "s0")
    _, running_folder = leftovers(tmp_path, "s1")
    Ledger(str(tmp_path)).mark_finished("s0")
    Ledger(str(tmp_path)).mark_finished("s2")  # finished without a checkpoint (too short for one)
    pruner = CheckpointPruner(str(tmp_path))
    assert pruner.prune() == 3
    assert sorted(p.name for p in done_folder.iterdir()) == ["000001-" + done.attempt + ".pt", LATEST]
    assert torch.equal(done.load()["x"], torch.ones(3))
    assert len(list(running_folder.iterdir())) == 5  # s1 is not finished: untouched
    assert pruner.prune() == 0  # a finished trial is pruned once
    Ledger(str(tmp_path)).mark_finished("s1")
    assert pruner.prune() == 3 and len(list(running_folder.iterdir())) == 2


def test_nothing_finished_or_no_checkpoints_deletes_nothing(tmp_path):
    assert CheckpointPruner(str(tmp_path)).prune() == 0
    assert CheckpointPruner(str(tmp_path / "not-there")).prune() == 0


def test_the_record_names_the_new_checkpoint_before_the_old_one_goes(tmp_path):
    store = TrialCheckpoints(str(tmp_path), "s0")
    assert store.latest() is None and store.load() is None and store.files() == []
    sizes = [store.save({"step": step, "w": torch.full((100,), float(step))}) for step in range(3)]
    record = store.latest()
    assert record["seq"] == 2 and record["bytes"] == sizes[2] > 400  # 100 fp32 values and the zip around them
    assert store.files() == sorted([record["file"], LATEST])  # one checkpoint at any time
    assert store.load()["step"] == 2
    again = TrialCheckpoints(str(tmp_path), "s0")  # the next attempt: continues the numbering, new names
    again.save({"step": 3})
    assert again.latest()["seq"] == 3 and again.latest()["file"].endswith(f"-{again.attempt}.pt")
    assert again.files() == sorted([again.latest()["file"], LATEST])
