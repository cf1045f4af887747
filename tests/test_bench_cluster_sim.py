"""bench/cluster_sim.py on a tiny layout (2 stage-1 seeds x 2 stage-2 seeds, 4 logical GPUs, stage-1
units on one node): stage 1 is trained once per stage-1 seed, and the busy fraction is the one the
per-attempt records' real timestamps give (no timing is asserted)."""

import json
from pathlib import Path

import pytest

from bench_scripts import load_bench


def test_layout_bound_of_the_issue_layout():
    """4 stage-1 units then 20 trials on 8 GPUs: at best (4 U + 20 T) / (8 (U + 3 T))."""
    bench = load_bench("cluster_sim")
    assert bench.layout_bound(4, 20, 8, 2.0, 1.0) == pytest.approx(28 / 40)
    assert bench.layout_bound(4, 20, 8, 1.0, 1.0) == pytest.approx(24 / 32)
    assert bench.layout_bound(8, 16, 8, 2.0, 1.0) == pytest.approx(1.0)  # as many units as GPUs, full waves


@pytest.mark.slow
def test_tiny_layout_trains_stage1_once_per_seed_and_computes_busy_from_timestamps():
    bench = load_bench("cluster_sim")
    out = bench.main(["--stage1-seeds", "2", "--seeds", "2", "--gpus", "4", "--epochs", "1,1", "--modes", "units",
                      "--port", "6395"])
    (row,) = out["rows"]
    assert row["units"] == 2 and row["trials"] == 4
    assert row["stage1_trainings"] == 2  # = stage-1 seeds
    assert row["gpu_shares"] == [1.0]  # what Ray gave each attempt (gpu: 1)
    records = [json.loads(p.read_text()) for p in (Path(out["folder"]) / "units" / "times").glob("*.json")]
    assert sorted(r["role"] for r in records) == ["branch"] * 4 + ["stage1"] * 2
    wall = max(r["end"] for r in records) - min(r["start"] for r in records)
    busy = sum(r["gpu"] * (r["end"] - r["start"] - r["waited_s"]) for r in records)
    assert row["busy_fraction"] == pytest.approx(busy / (4 * wall))
    assert all(r["waited_s"] == 0 for r in records)  # units: nobody waits on a lock
    units_end = max(r["end"] for r in records if r["role"] == "stage1")
    first_branch = min(r["start"] for r in records if r["role"] == "branch")
    assert first_branch >= min(r["end"] for r in records if r["role"] == "stage1")  # a trial after its unit
    assert units_end > 0
