"""Real sweeps (local Ray, SQLite MLflow) then `metaocl report`: the summary a sweep prints at its end
is the report's verdicts, numbers and seed counts. (Which invocation the report reads, and that a
`metaocl run` or a configuration run never counts, is tested on written runs: test_report_invocation.py.)"""

from __future__ import annotations

import re

import pytest
from mlflow.tracking import MlflowClient

from metaocl.cli import main

pytestmark = pytest.mark.slow

TINY = ["--set", "data.n_variables=60"]


def _verdicts(printed: str) -> list[str]:
    """The verdict lines of an end-of-sweep summary (after its ``verdicts:`` line)."""
    block = printed.split("\nverdicts:\n", 1)[1]
    return [line for line in block.split("\n\n", 1)[0].splitlines() if line.strip()]


def test_quickstart_summary_equals_report(in_tmp, capsys):
    assert main(["sweep", "quickstart", "--smoke", "--seeds", "2", *TINY, "--set", "train.lr=0.003"]) == 0
    second = capsys.readouterr().out

    client = MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("metaocl/quickstart-smoke")
    parents = client.search_runs([exp.experiment_id], "tags.`metaocl.role` = 'sweep'")
    assert len(parents) == 1
    last = parents[0].info.run_id
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{last}'")
    assert sorted(r.data.params["train.lr"] for r in children) == ["0.003", "0.003"]

    assert main(["report", "quickstart", "--smoke", "--no-log"]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0] == f"metaocl/quickstart-smoke: sweep invocation {last}, 2 finished trial runs"
    summary = (in_tmp / "reports" / "quickstart-smoke" / "summary.md").read_text()
    assert f"sweep invocation (parent run) `{last}` only" in summary
    assert "2 trial runs in 1 configuration(s), 2 seed(s) each" in summary
    # The end-of-sweep summary of that second sweep printed the same verdicts, word for word.
    report_verdicts = [line for line in lines if line.startswith(("OCL ", "meta-OCL "))]
    assert len(report_verdicts) == 2 and _verdicts(second) == report_verdicts
    assert f"metaocl/quickstart-smoke: sweep invocation {last}, 2 finished trial runs" in second


def test_two_stage_smoke_summary_equals_report(in_tmp, capsys, monkeypatch):
    monkeypatch.setenv("METAOCL_DATA", str(in_tmp / "data"))
    fast = ["--set", "data.n_entities=40", "--set", "data.entity_attribution=false"]
    assert main(["sweep", "two_stage", "--smoke", *fast]) == 0
    at_end = capsys.readouterr().out
    assert "all trials  (1 seed (2 runs); em, mean [95% CI])" in at_end  # 2 runs share one stage-1 model
    assert main(["report", "two_stage", "--smoke", "--no-log"]) == 0
    printed = capsys.readouterr().out.splitlines()
    verdicts = [line for line in printed if line.startswith(("OCL ", "meta-OCL "))]
    assert len(verdicts) == 2 and all(", 1 seed (2 runs) (need at least 2 seeds" in v for v in verdicts)
    assert _verdicts(at_end) == verdicts
    # The per-split table: the same cells as summary.md's.
    summary = (in_tmp / "reports" / "two_stage-smoke" / "summary.md").read_text()
    block = at_end.split("all trials  (", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    assert len(block) >= 4
    for row in block:
        split, *cells = re.split(r"\s{2,}", row.strip())
        assert f"| `{split}` | " + " | ".join(cells) + " |" in summary, row
