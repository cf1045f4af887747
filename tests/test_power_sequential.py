"""The quickstart's group-sequential design end to end: the sweep file's ``sequential:`` block, one
sweep invocation per look (the next only while a verdict is undecided), the looks joined in MLflow,
and verdicts that say which look decided (the statistics: tests/test_report_stats.py)."""

from __future__ import annotations

import pytest
import yaml
from mlflow.tracking import MlflowClient

from metaocl.cli import main
from metaocl.config import ConfigError, load_sweep


def _sweep_file(tmp_path, **sequential):
    data = yaml.safe_load(load_sweep("quickstart").path.read_text())
    data.pop("smoke")
    data["base"]["data"]["n_variables"] = 60
    data["base"]["train"]["stage1_epochs"] = 1
    data["base"]["eval"]["every"] = 1
    data["seeds"] = sequential.pop("seeds", 4)
    data["sequential"] = sequential or {"looks": [2, 4], "boundary": "pocock"}
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_quickstart_declares_6_then_6_pocock():
    sweep = load_sweep("quickstart")
    assert sweep.looks == (6, 12) and sweep.boundary == "pocock" and sweep.seeds == list(range(12))
    assert sweep.for_look(1).seeds == list(range(6)) and sweep.for_look(2, "abc").seeds == list(range(6, 12))
    assert sweep.for_look(2, "abc").sequential_tags() == (("metaocl.sequential", "pocock:6,12"), ("metaocl.look", "2"),
                                                          ("metaocl.previous_invocation", "abc"))
    assert sweep.sequential_tags() == ()  # the whole sweep in one invocation is an ordinary sweep
    # --seeds N, a pinned seed, --smoke: an ordinary fixed test
    assert load_sweep("quickstart", seeds=6).looks == () and load_sweep("quickstart", smoke=True).looks == ()
    assert load_sweep("quickstart", overrides=["seed=3"]).looks == ()


def test_bad_sequential_block_is_one_line(tmp_path):
    for bad, match in (({"looks": [4, 2], "seeds": 2}, "sequential.looks"),
                       ({"looks": [2, 4], "boundary": "haybittle"}, "sequential.boundary"),
                       ({"looks": [2, 6]}, r"seeds \(4\) must be the last look")):
        with pytest.raises(ConfigError, match=match):
            load_sweep(str(_sweep_file(tmp_path, **bad)))


@pytest.mark.slow
def test_sequential_sweep_runs_look_2_when_look_1_is_undecided(in_tmp, capsys):
    # 2 seeds cannot reject at the first look (|t| would need to pass ~22): look 2 must run
    path = _sweep_file(in_tmp)
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    assert "look 1 of 2, seeds 0-1" in out and "look 2 of 2, seeds 2-3" in out
    assert "not decided at look 1 of 2 (the next look adds seeds)" in out
    last = out.rsplit("verdicts:", 1)[1]
    assert "meta-OCL" in last and "at look 2 of 2" in last and "4 seeds" in last

    client = MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("metaocl/quickstart")
    parents = client.search_runs([exp.experiment_id], "tags.`metaocl.role` = 'sweep'",
                                 order_by=["attributes.start_time ASC"])
    assert [p.data.tags["metaocl.look"] for p in parents] == ["1", "2"]
    assert parents[1].data.tags["metaocl.previous_invocation"] == parents[0].info.run_id
    assert parents[1].data.tags["metaocl.sequential"].startswith("pocock:2,4")

    assert main(["report", "quickstart", "--no-log"]) == 0  # the last invocation: both looks
    printed = capsys.readouterr().out
    assert "4 finished trial runs" in printed and "at look 2 of 2" in printed
    summary = (in_tmp / "reports" / "quickstart" / "summary.md").read_text()
    assert "meta-OCL (look 1 of 2, p < " in summary and "meta-OCL (look 2 of 2, p < " in summary
