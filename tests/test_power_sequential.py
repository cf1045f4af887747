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


def _store_with_looks(tmp_path, look1, look2):
    """Two sweep invocations of a 6 + 6 sequential set-inclusion sweep, as the CLI leaves them in MLflow:
    look 1 (seeds 0-5) and look 2 (seeds 6-11, its parent tagged with look 1's). Gaps: meta-OCL as given, OCL 0.10-0.15."""
    import time

    from mlflow.entities import Metric

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("metaocl/quickstart", artifact_location=str(tmp_path / "artifacts"))
    previous = None
    parents = []
    now = int(time.time() * 1000)
    for look, (first, gaps) in enumerate(((0, look1), (6, look2)), start=1):
        if gaps is None:
            break
        tags = {"metaocl.role": "sweep", "metaocl.sweep": "quickstart", "metaocl.kind": "set_inclusion",
                "metaocl.sequential": "pocock:6,12", "metaocl.look": str(look)}
        if previous:
            tags["metaocl.previous_invocation"] = previous
        parent = client.create_run(exp_id, run_name="quickstart", tags=tags, start_time=now + look)
        for i, gap in enumerate(gaps):
            seed = first + i
            run = client.create_run(exp_id, run_name=f"s{seed}", tags={
                "mlflow.parentRunId": parent.info.run_id, "metaocl.role": "trial", "metaocl.sweep": "quickstart",
                "metaocl.trial_id": f"s{seed}", "metaocl.grid": "{}", "seed": str(seed)})
            accs = {"qd1consis": 0.9, "qd2incons": 0.8 - 0.01 * i, "d1consis": 0.5 + gap, "d2consis": 0.5}
            client.log_batch(run.info.run_id, metrics=[Metric(f"acc/{k}", v, now, 24) for k, v in accs.items()])
            client.set_terminated(run.info.run_id)
        client.set_terminated(parent.info.run_id)
        previous = parent.info.run_id
        parents.append(previous)
    return uri, parents


def test_report_joins_the_looks_and_says_which_decided(tmp_path):
    from metaocl.report.effects import analyse, verdict_lines
    from metaocl.report.runs import load_invocation

    look1 = [0.04, 0.01, 0.06, -0.01, 0.05, 0.03]  # p = 0.037 over 6 seeds: not below 0.0283
    look2 = [0.02, 0.04, 0.03, 0.05, 0.01, 0.04]
    uri, parents = _store_with_looks(tmp_path, look1, None)
    analysed = analyse(load_invocation(uri, "metaocl/quickstart"))
    lines = verdict_lines(analysed)
    meta = [line for line in lines if line.startswith("meta-OCL")]
    assert len(meta) == 1 and meta[0].startswith("meta-OCL not decided at look 1 of 2 (the next look adds seeds): ")
    assert [line for line in lines if line.startswith("OCL")][0].startswith("OCL reproduced at look 1 of 2: ")

    uri, parents = _store_with_looks(tmp_path / "two", look1, look2)
    runs = load_invocation(uri, "metaocl/quickstart")  # the newest invocation: look 2, joined with look 1
    assert runs.parent_run_id == parents[1] and runs.looks_parents == parents and runs.n_trials == 12
    analysed = analyse(runs)
    meta = [e for e in analysed[0].effects if e.name == "meta-OCL"]
    assert [(e.look, e.n, e.outcome) for e in meta] == [((1, 2), 6, "continued"), ((2, 2), 12, "reproduced")]
    assert meta[1].mean == pytest.approx(sum(look1 + look2) / 12) and meta[1].seeds == list(range(12))
    line = [v for v in verdict_lines(analysed) if v.startswith("meta-OCL")][0]
    assert line.startswith("meta-OCL reproduced at look 2 of 2: d1consis - d2consis = +0.031 [")
    assert line.endswith(", 12 seeds (acc, end of stage 1; group-sequential: p < 0.0283 at this look, 97.2% CI)")


def test_summaries_say_the_looks_were_joined(tmp_path):
    from metaocl.report.build import make_report
    from metaocl.report.summary import summarize_invocation

    look1 = [0.04, 0.01, 0.06, -0.01, 0.05, 0.03]
    uri, parents = _store_with_looks(tmp_path, look1, [0.02, 0.04, 0.03, 0.05, 0.01, 0.04])
    joined = f"2 looks joined: sweep invocations {parents[0]} (look 1), {parents[1]} (look 2)"
    assert summarize_invocation(uri, parents[1]).splitlines()[0] == f"metaocl/quickstart: {joined}, 12 finished trial runs"
    _, runs = make_report("quickstart", uri, tmp_path / "report", log_to_mlflow=False)
    line = (tmp_path / "report" / "summary.md").read_text().splitlines()[2]
    assert line == (f"- MLflow experiment `metaocl/quickstart` at `{uri}`: the finished trial runs of the 2 looks of "
                    f"this group-sequential sweep, joined: sweep invocations (parent runs) `{parents[0]}` (look 1), "
                    f"`{parents[1]}` (look 2)")

    uri, parents = _store_with_looks(tmp_path / "one", look1, None)  # one look so far: that invocation only
    assert summarize_invocation(uri, parents[0]).splitlines()[0] == (
        f"metaocl/quickstart: sweep invocation {parents[0]}, 6 finished trial runs")
    make_report("quickstart", uri, tmp_path / "one" / "report", log_to_mlflow=False)
    assert (tmp_path / "one" / "report" / "summary.md").read_text().splitlines()[2].endswith(
        f"the finished trial runs of sweep invocation (parent run) `{parents[0]}` only")
