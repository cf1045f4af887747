"""`metaocl report` end to end on an MLflow store written by the real MLflow client.

The store follows docs/architecture.md "MLflow layout" exactly (experiment ``metaocl/{sweep}``, a
parent run tagged ``metaocl.role=sweep``, child runs tagged ``metaocl.role=trial`` with
``metaocl.trial_id``, ``metaocl.grid``, ``seed``, ``stage``; per-epoch metrics with step = epoch and a
``stage`` metric). End-of-stage values are planted, so the expected statistics are known.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from scipy import stats as sps

from metaocl.config import ConfigError
from metaocl.report.build import make_report

STAGE1_EPOCHS = 6
STAGE2_EPOCHS = 4
# batch size -> per-seed planted end values: (OCL diff at end of stage 1, meta-OCL diff at end of stage 2)
PLANTED = {
    128: ([0.06, 0.05, 0.07, 0.06, 0.065], [0.02, 0.03, 0.04, 0.025, 0.035]),
    0: ([0.04, 0.06, 0.05, 0.045, 0.055], [0.01, -0.01, 0.005, -0.005, 0.0]),  # 0 = full batch
}
ENT = ["ent_name_qd1consis", "ent_name_qd2incons_defent", "ent_name_d1consis", "ent_name_d2consis"]


def _curve(final: float, epoch: int, last: int, start: float = 0.2) -> float:
    """A saturating curve that hits ``final`` exactly at ``last``."""
    shape = (1 - math.exp(-epoch / 2.0)) / (1 - math.exp(-last / 2.0))
    return start + (final - start) * shape


def trial_metrics(seed: int, ocl: float, meta: float, grad: bool = True, entity: bool = True, config_index: int = 0,
                  templates: tuple[str, ...] = ("name",)) -> list[dict]:
    """Per-epoch metric dicts of one two-stage trial with the planted end-of-stage gaps."""
    rng = np.random.default_rng(seed + 100 * config_index)
    s1_end = {"qd1consis": 0.50 + ocl / 2, "qd2incons": 0.50 - ocl / 2, "q": 0.46, "q_no_replacement_baseline": 0.58,
              "d1consis": 0.25, "d2consis": 0.25, "no_qd_baseline": 0.25}
    s2_end = {"d1consis": 0.29 + meta / 2, "d2consis": 0.29 - meta / 2, "no_qd_baseline": 0.245,
              "qd1consis": s1_end["qd1consis"] - 0.01, "qd2incons": s1_end["qd2incons"] - 0.01, "q": 0.45,
              "q_no_replacement_baseline": 0.57}
    rows = []
    total = STAGE1_EPOCHS + STAGE2_EPOCHS
    for epoch in range(1, total + 1):
        stage = 1 if epoch <= STAGE1_EPOCHS else 2
        row = {"epoch": float(epoch), "stage": float(stage), "train/loss": 2.0 / epoch}
        for subset in s1_end:
            if stage == 1:
                value = _curve(s1_end[subset], epoch, STAGE1_EPOCHS)
            else:
                value = _curve(s2_end[subset] - s1_end[subset], epoch - STAGE1_EPOCHS, STAGE2_EPOCHS, 0.0) + s1_end[subset]
            last_of_stage = epoch in (STAGE1_EPOCHS, total)
            row[f"em/{subset}"] = value if last_of_stage else value + rng.normal(0, 0.01)
        for k, template in enumerate(templates if entity else ()):
            scale = 1.0 / (1 + k)
            row[f"em/ent_{template}_qd1consis"] = scale * (0.18 * epoch / total + 0.005 * rng.normal())
            row[f"em/ent_{template}_qd2incons_defent"] = scale * 0.04 * epoch / total
            row[f"em/ent_{template}_d1consis"] = 0.0 if stage == 1 else scale * (0.18 + 0.01 * rng.normal())
            row[f"em/ent_{template}_d2consis"] = 0.0 if stage == 1 else scale * (0.07 + 0.01 * rng.normal())
        row["gap/ocl"] = row["em/qd1consis"] - row["em/qd2incons"]
        row["gap/meta_ocl"] = row["em/d1consis"] - row["em/d2consis"]
        if grad:
            row["grad/cos_def1_qa"] = 0.1 + 0.02 * epoch / (1 + config_index) + 0.01 * rng.normal()
            row["grad/cos_def2_qa"] = 0.05 + 0.005 * epoch + 0.01 * rng.normal()
        rows.append(row)
    return rows


def build_store(
    tmp_path, sweep: str = "batch_size", grid_key: str | None = "train.batch_size", planted: dict = PLANTED,
    params: dict | None = None, smoke: bool = False, grad: bool = True, entity: bool = True,
    templates: tuple[str, ...] = ("name",),
) -> tuple[str, dict]:
    """Write a sweep into the SQLite MLflow store in ``tmp_path``; returns (tracking URI, {trial_id: run_id})."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    name = f"metaocl/{sweep}" + ("-smoke" if smoke else "")
    exp_id = client.create_experiment(name, artifact_location=str(tmp_path / "artifacts" / name.replace("/", "_")))
    parent = client.create_run(exp_id, run_name=sweep, tags={
        "metaocl.role": "sweep", "metaocl.sweep": sweep, "metaocl.kind": "lm", "metaocl.smoke": str(smoke).lower()})
    base_params = {"model.name": "EleutherAI/pythia-70m", "data.source": "cvdb_sample", "data.stages": "two_stage",
                   "train.lr": "5e-05", "train.batch_size": "128"}
    base_params.update(params or {})
    ids = {}
    now = int(time.time() * 1000)
    for p_index, (value, (ocl, meta)) in enumerate(planted.items()):
        grid = {grid_key: value} if grid_key else {}
        for seed, (o, m) in enumerate(zip(ocl, meta)):
            tid = f"p{p_index:02d}_s{seed}" if grid_key else f"s{seed}"
            run = client.create_run(exp_id, run_name=tid, tags={
                "mlflow.parentRunId": parent.info.run_id, "metaocl.role": "trial", "metaocl.sweep": sweep,
                "metaocl.trial_id": tid, "metaocl.grid": json.dumps(grid), "seed": str(seed), "stage": "2"})
            p = dict(base_params, seed=str(seed))
            if grid_key:
                p[grid_key] = str(value)
            metrics = []
            for i, row in enumerate(trial_metrics(seed, o, m, grad=grad, entity=entity, config_index=p_index, templates=templates)):
                step = int(row.pop("epoch"))
                metrics += [Metric(k, float(v), now + i, step) for k, v in row.items()]
            client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in p.items()],
                             tags=[RunTag("metaocl.kind", "lm")])
            client.set_terminated(run.info.run_id)
            ids[tid] = run.info.run_id
    client.set_terminated(parent.info.run_id)
    return uri, ids


HEADLINE = {None: ([0.06, 0.07, 0.05], [0.03, 0.02, 0.04])}
REPLICATED = {0: ([0.06, 0.06], [0.02, 0.04]), 1: ([0.05, 0.05], [0.01, 0.03]), 2: ([0.07, 0.07], [0.03, 0.03])}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store holding every sweep these tests read (built once: logging is the slow part)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri, _ = build_store(root)
    build_store(root, sweep="headline", grid_key=None, planted=HEADLINE, smoke=True, grad=False,
                params={"model.name": "EleutherAI/pythia-2.8b-deduped", "data.source": "cvdb"}, templates=("who", "name"))
    build_store(root, sweep="s", grid_key=None, planted=HEADLINE, grad=False, entity=False)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("metaocl/s")
    parent = client.search_runs([exp.experiment_id], "tags.`metaocl.role` = 'sweep'")[0]
    # A failed extra seed with absurd values must not count.
    run = client.create_run(exp.experiment_id, tags={
        "mlflow.parentRunId": parent.info.run_id, "metaocl.role": "trial", "metaocl.trial_id": "s9",
        "metaocl.grid": "{}", "seed": "9"})
    client.log_batch(run.info.run_id, metrics=[Metric("stage", 2.0, 0, 10), Metric("em/d1consis", 1.0, 0, 10),
                                               Metric("em/d2consis", 0.0, 0, 10)])
    client.set_terminated(run.info.run_id, status="FAILED")
    client.create_experiment("metaocl/empty", artifact_location=str(root / "artifacts" / "empty"))
    # Two-stage layout: 3 stage-1 seeds (a grid key) x 2 seeds; runs of one stage-1 seed share stage 1.
    build_store(root, sweep="two_stage", grid_key="train.stage1_seed", planted=REPLICATED, grad=False, entity=False)
    return uri


def _expected(diffs):
    d = np.asarray(diffs)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    return d.mean(), 2 * sps.t.sf(abs(t), d.size - 1)


def _expected_ci(diffs):
    """Hand-computed t interval: mean -+ t_{0.975, n-1} * sd / sqrt(n)."""
    d = np.asarray(diffs)
    half = sps.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return d.mean() - half, d.mean() + half


def test_report_grid_sweep_statistics_figures_and_artifacts(store, tmp_path):
    uri = store
    out = tmp_path / "report"
    verdicts, runs = make_report("batch_size", uri, out)
    assert runs.n_trials == 10 and not runs.left_out

    # Headline verdicts: OCL at the end of stage 1, meta-OCL at the end of stage 2, per configuration.
    by_start = {v.split(": ", 1)[0]: v for v in verdicts if "entity" not in v}
    assert len([v for v in verdicts if "entity" not in v]) == 4
    mean, p = _expected(PLANTED[128][1])
    meta_128 = next(v for v in verdicts if v.startswith("train.batch_size=128: meta-OCL "))
    assert meta_128.startswith(f"train.batch_size=128: meta-OCL reproduced: d1consis - d2consis = +{mean:.3f} [")
    assert f"p={p:.3f}, 5 seeds (em, end of stage 2)" in meta_128
    meta_full = next(v for v in verdicts if v.startswith("train.batch_size=0: meta-OCL "))
    assert "meta-OCL not shown: d1consis - d2consis = +0.000 [" in meta_full
    ocl_full = next(v for v in verdicts if v.startswith("train.batch_size=0: OCL "))
    mean, p = _expected(PLANTED[0][0])
    assert f"OCL reproduced: qd1consis - qd2incons = +{mean:.3f}" in ocl_full and "end of stage 1" in ocl_full
    assert by_start  # configuration prefixes present
    assert any("meta-OCL (entity attribution, name) reproduced" in v for v in verdicts)

    # The CI printed is the paired-t CI of the planted differences.
    lo, hi = _expected_ci(PLANTED[128][1])
    assert f"[{lo:.3f}, {hi:.3f}]" in meta_128

    names = {p.name for p in out.iterdir()}
    for stem in ("gaps_batch_size-128", "gaps_batch_size-0", "curves_batch_size-128", "curves_batch_size-0",
                 "entity_batch_size-128", "summary_batch_size", "grad_alignment"):
        for ext in ("png", "pdf"):
            assert f"{stem}.{ext}" in names, f"missing {stem}.{ext}; have {sorted(names)}"
            assert (out / f"{stem}.{ext}").stat().st_size > 1000
    summary = (out / "summary.md").read_text()
    assert "## Verdicts" in summary and meta_128 in summary
    assert "| train.batch_size=128 | meta-OCL | em/d1consis - em/d2consis | 2 |" in summary
    assert "![summary_batch_size](summary_batch_size.png)" in summary
    # the paired gaps, per configuration, are the summary's first figures (right under the verdicts)
    images = [line for line in summary.splitlines() if line.startswith("![")]
    assert sorted(images[:2]) == ["![gaps_batch_size-0](gaps_batch_size-0.png)",
                                  "![gaps_batch_size-128](gaps_batch_size-128.png)"]
    assert summary.index(images[0]) < summary.index("## Effects at the end of each stage")
    assert "SMOKE RUN" not in summary
    assert [p.name for p in tmp_path.iterdir()] == ["report"], "temporary folder left behind"

    # Logged as artifacts of the parent run.
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("metaocl/batch_size")
    parent = client.search_runs([exp.experiment_id], "tags.`metaocl.role` = 'sweep'")[0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/summary.md" in logged and "report/summary_batch_size.png" in logged


def test_report_single_configuration_matches_paper_values(store, tmp_path):
    uri = store
    out = tmp_path / "out"
    verdicts, _ = make_report("headline", uri, out, smoke=True)
    assert verdicts[0].startswith("OCL reproduced: qd1consis - qd2incons = +0.060 [")
    assert verdicts[1].startswith("meta-OCL reproduced: d1consis - d2consis = +0.030 [")
    summary = (out / "summary.md").read_text()
    assert "paper (approx.)" in summary and "Pythia-2.8B, CVDB" in summary
    assert "(paper ~0.51)" in summary  # qd1consis at the end of stage 1, beside ours
    # a smoke run says what it is, first thing, with the command that gives real results
    assert summary.splitlines()[2].startswith("> **SMOKE RUN: a plumbing check") and "metaocl sweep headline" in summary
    for stem in ("gaps", "curves", "entity", "stage_ends"):
        assert (out / f"{stem}.png").stat().st_size > 1000 and (out / f"{stem}.pdf").stat().st_size > 1000
    assert not (out / "grad_alignment.png").exists()


def test_report_failed_runs_are_left_out_and_named(store, tmp_path):
    uri = store
    verdicts, runs = make_report("s", uri, tmp_path / "out", log_to_mlflow=False)
    assert "3 seeds" in verdicts[1] and "+0.030" in verdicts[1]
    assert list(runs.left_out) == ["FAILED"] and runs.left_out["FAILED"][0].startswith("s9 (run ")
    assert f"left out: 1 failed run ({runs.left_out['FAILED'][0]})" in (tmp_path / "out" / "summary.md").read_text()


def test_report_unknown_sweep_and_empty_experiment_are_one_line_config_errors(store, tmp_path):
    uri = store
    with pytest.raises(ConfigError) as e:
        make_report("batch_sise", uri, tmp_path / "x")
    assert "metaocl/batch_sise" in str(e.value) and "metaocl/batch_size" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="has no sweep \\(parent\\) run"):
        make_report("empty", uri, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_report_prints_verdicts_and_one_line_errors(store, tmp_path, capsys):
    from metaocl.cli import main

    out = tmp_path / "cli"
    rc = main(["report", "s", "--tracking-uri", store, "--out", str(out), "--no-log"])
    printed = capsys.readouterr().out
    assert rc == 0 and printed.splitlines()[0].startswith("metaocl/s: sweep invocation ")
    assert "3 finished trial runs" in printed.splitlines()[0]
    assert printed.splitlines()[1].startswith("left out: 1 failed run (s9 (run ")
    assert printed.splitlines()[2].startswith("OCL reproduced: qd1consis - qd2incons = +0.060 [")
    assert f"report: {out}/summary.md" in printed and (out / "summary.md").is_file()

    assert main(["report", "nosuch", "--tracking-uri", store, "--out", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("metaocl: error: report nosuch: no MLflow experiment 'metaocl/nosuch'") and "\n" not in err
    missing = f"sqlite:///{tmp_path}/absent.db"
    assert main(["report", "headline", "--tracking-uri", missing]) == 2
    assert "no MLflow store at" in capsys.readouterr().err and not (tmp_path / "absent.db").exists()


def test_seed_grid_keys_are_replicates_and_each_value_is_one_unit(store, tmp_path):
    verdicts, _ = make_report("two_stage", store, tmp_path / "out", log_to_mlflow=False)
    # One configuration (stage1_seed is not a configuration); units = stage-1 seeds, runs averaged inside.
    assert [v.split(" ", 1)[0] for v in verdicts] == ["OCL", "meta-OCL"]
    ocl_units = [0.06, 0.05, 0.07]
    meta_units = [0.03, 0.02, 0.03]
    mean, p = _expected(meta_units)
    assert verdicts[1].startswith(f"meta-OCL ")
    assert f"d1consis - d2consis = +{mean:.3f} [" in verdicts[1] and f"p={p:.3f}, 3 seeds (6 runs)" in verdicts[1]
    mean, p = _expected(ocl_units)
    assert f"qd1consis - qd2incons = +{mean:.3f} [" in verdicts[0] and f"p={p:.3f}, 3 seeds (6 runs)" in verdicts[0]
    assert "replicate axes" in (tmp_path / "out" / "summary.md").read_text()


def test_paired_gaps_are_each_seeds_gap_with_the_verdicts_mean_and_ci(store):
    """The gaps figure draws what the verdict computes: per seed a - b at each stage end (known
    planted values), the effect's mean and CI, the verdict's stage; per epoch the same differences."""
    from metaocl.report.build import ConfigurationReport, _paired_gaps
    from metaocl.report.effects import analyse
    from metaocl.report.runs import load_sweep_runs

    runs = load_sweep_runs("headline", store, smoke=True)
    r = analyse(runs)[0]
    gaps = _paired_gaps(ConfigurationReport(r.configuration, r.stages, r.effects, r.headline), runs)
    assert [g.name for g in gaps] == ["OCL", "meta-OCL"]
    ocl, meta = gaps
    assert (ocl.verdict_stage, meta.verdict_stage) == (1, 2)
    end2 = next(e for e in meta.ends if e.stage == 2)
    assert end2.diffs == pytest.approx(HEADLINE[None][1])  # each seed's planted meta-OCL gap
    assert end2.mean == pytest.approx(np.mean(HEADLINE[None][1]))
    assert (end2.lo, end2.hi) == pytest.approx(_expected_ci(HEADLINE[None][1]))
    last = meta.steps.index(STAGE1_EPOCHS + STAGE2_EPOCHS)
    assert meta.matrix[:, last] == pytest.approx(HEADLINE[None][1])
    first_end = ocl.steps.index(STAGE1_EPOCHS)
    assert ocl.matrix[:, first_end] == pytest.approx(HEADLINE[None][0])


def test_report_takes_a_sweep_file_as_sweep_does(store, tmp_path, capsys):
    from metaocl.cli import main

    (tmp_path / "mine.yaml").write_text("name: s\ndescription: d\nkind: lm\n")
    out = tmp_path / "r"
    for form in (str(tmp_path / "mine.yaml"), "./mine.yaml"):
        rc = main(["report", form, "--tracking-uri", store, "--out", str(out), "--no-log"]) if form.startswith("/") \
            else _in(tmp_path, lambda: main(["report", form, "--tracking-uri", store, "--out", str(out), "--no-log"]))
        printed = capsys.readouterr().out
        assert rc == 0 and printed.startswith("metaocl/s: sweep invocation "), printed
    assert main(["report", str(tmp_path / "nope.yaml"), "--tracking-uri", store]) == 2
    assert "nope.yaml: no such sweep file" in capsys.readouterr().err


def _in(folder, fn):
    import os

    old = os.getcwd()
    os.chdir(folder)
    try:
        return fn()
    finally:
        os.chdir(old)
