"""bench/checkpoint_io.py on its tiny size: the previous way (a local torch.save, then Ray's copy into
storage) writes every checkpoint twice and keeps them all; the trial store writes each once and keeps
one; both trials end identically (the script checks it). Counts and bytes only, no timing asserted."""

import pytest

from bench_scripts import load_bench

pytestmark = pytest.mark.slow


def test_tiny_trial_writes_each_checkpoint_once_and_keeps_one(tmp_path):
    out = load_bench("checkpoint_io").main(["--tiny", "--epochs", "3", "--folder", str(tmp_path)])
    before, now = out["rows"]
    assert before["checkpoints"] == now["checkpoints"] == 2  # after epochs 1 and 2, not at the end
    assert before["written_mb"] == pytest.approx(2 * before["storage_written_mb"])  # worker disk, then storage
    assert now["written_mb"] == pytest.approx(now["storage_written_mb"])  # storage only
    assert before["storage_files_left"] == 2 and now["storage_files_left"] == 2  # checkpoint_0, _1 / record + one
    assert len(list((tmp_path / "r0" / "now" / "storage").rglob("*.pt"))) == 1
