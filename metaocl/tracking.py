"""MLflow tracking: one experiment per sweep, a parent run per invocation, a child run per trial.

When a sweep ends, :func:`log_sweep_aggregates` writes what a person opening the MLflow UI looks for
first onto the parent run (and, for a grid, onto one ``metaocl.role=configuration`` child run per
grid point): per epoch the mean over seeds of each subset's headline measure and of every gap, with
t-based 95% CI bounds (``gap/meta_ocl``, ``gap/meta_ocl_lo``, ``gap/meta_ocl_hi``), and the verdicts
as tags (``metaocl.verdict.meta_ocl``). Grouping and statistics are the report's own
(:mod:`metaocl.report.runs`, :mod:`metaocl.report.stats`, :mod:`metaocl.report.effects`).

Only the process that drives a sweep writes to MLflow; trials hand their metrics to it through
``tune.report``. That keeps the embedded SQLite store (``sqlite:///mlflow.db`` in the working
directory, MLflow's own default, so ``mlflow ui`` there shows it) free of concurrent writers, and
means a trial never needs to reach the tracking server. The layout is specified in
``docs/architecture.md`` and read back by ``metaocl report``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

import yaml

from metaocl.config import ConfigError, Sweep, Trial, flatten

DEFAULT_STORE = "mlflow.db"
MAX_PARAM_LENGTH = 500  # MLflow's limit on a param value
MAX_TAG_LENGTH = 5000
# MLflow 3's UI reads this experiment tag to open an experiment on its model-training pages (runs,
# charts) instead of the GenAI overview (traces, latency, token usage).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# Every run of one sweep invocation (parent, configurations, trials) carries its parent's run id, so
# one search filter lists the whole invocation (``metaocl ui`` links to it).
SWEEP_RUN_TAG = "metaocl.sweep_run_id"
STAGE1_RUN_TAG = "metaocl.stage1_run"  # on a trial run: the run of the stage-1 unit it branched from
CONFIGURATION_ROLE = "configuration"
# MLflow's UI shows this run (and experiment) tag as the page's Markdown "Description".
NOTE_TAG = "mlflow.note.content"


def tracking_uri(explicit: str | None = None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite store in the working directory."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / DEFAULT_STORE}"


def describe_store(uri: str) -> str:
    """How a user opens ``uri`` in the MLflow UI."""
    if uri.startswith("sqlite:///"):
        return f"{uri[len('sqlite:///'):]} (open it with: metaocl ui, or mlflow ui --backend-store-uri {uri})"
    return f"{uri} (open that address in a browser)"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def metric_items(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics a runner reported (``a/b`` names, ``epoch``, ``stage``), without Ray's bookkeeping."""
    out = {}
    for k, v in metrics.items():
        if ("/" in k or k in ("epoch", "stage")) and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


class SweepTracker:
    """Writes one sweep invocation into MLflow. All calls come from the driver process."""

    def __init__(self, uri: str, experiment_name: str, run_name: str, tags: Mapping[str, str]):
        self.uri = uri
        self.client = _client(uri)
        exp = self.client.get_experiment_by_name(experiment_name)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment_name)
        if exp is None or EXPERIMENT_KIND_TAG not in exp.tags:  # a kind chosen in the UI is kept
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        self.parent_id: str | None = None
        self._parent_tags = dict(tags)
        self._run_name = run_name
        self.trial_runs: dict[str, str] = {}
        self.trial_status: dict[str, str] = {}  # status of reattached child runs (``--resume``)
        self.trial_tags: dict[str, dict[str, str]] = {}

    @classmethod
    def reattach(cls, uri: str, parent_id: str) -> "SweepTracker":
        """The tracker of an earlier invocation (``--resume``): same parent run, same child runs.

        Child runs are found by their ``mlflow.parentRunId`` tag, so a child created just before the
        old driver died is found too and never duplicated.
        """
        client = _client(uri)
        try:
            parent = client.get_run(parent_id)
        except Exception as e:  # MlflowException for an unknown run id
            raise ConfigError(f"cannot resume: parent run {parent_id} is not in the MLflow store {uri} "
                              f"({str(e).splitlines()[0]})") from None
        exp = client.get_experiment(parent.info.experiment_id)
        tracker = cls.__new__(cls)
        tracker.uri, tracker.client, tracker.experiment_id = uri, client, exp.experiment_id
        tracker.parent_id, tracker._parent_tags, tracker._run_name = parent_id, dict(parent.data.tags), parent.info.run_name
        tracker.trial_runs = {}
        tracker.trial_status: dict[str, str] = {}
        tracker.trial_tags: dict[str, dict[str, str]] = {}
        children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'",
                                      max_results=50000)
        for run in sorted(children, key=lambda r: r.info.start_time or 0):
            tid = run.data.tags.get("metaocl.trial_id")
            if tid and tid not in tracker.trial_runs:
                tracker.trial_runs[tid] = run.info.run_id
                tracker.trial_status[tid] = run.info.status
                tracker.trial_tags[tid] = dict(run.data.tags)
        client.update_run(parent_id, status="RUNNING")
        return tracker

    def last_step(self, run_id: str) -> int:
        """The last ``epoch`` logged to a run (0 when none): a resumed trial logs only later epochs."""
        history = self.client.get_metric_history(run_id, "epoch")
        return max((m.step for m in history), default=0)

    def load_history(self, run_id: str) -> list[dict[str, float]]:
        """The per-epoch metrics of a run as the runner reported them, one dict per step."""
        rows: dict[int, dict[str, float]] = {}
        for key in self.client.get_run(run_id).data.metrics:
            for m in self.client.get_metric_history(run_id, key):
                rows.setdefault(m.step, {})[key] = m.value
        return [rows[s] for s in sorted(rows)]

    def set_status(self, run_id: str, status: str) -> None:
        self.client.update_run(run_id, status=status)

    @classmethod
    def for_sweep(cls, sweep: Sweep, uri: str) -> "SweepTracker":
        tracker = cls(uri, sweep.experiment_name, f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                      {"metaocl.role": "sweep", "metaocl.sweep": sweep.name, "metaocl.kind": sweep.kind,
                       "metaocl.smoke": str(sweep.smoke).lower()})
        if sweep.description:  # the experiment page's description: what the sweep is
            tracker.client.set_experiment_tag(tracker.experiment_id, NOTE_TAG, sweep.description)
        tracker.start_parent()
        if sweep.smoke:  # until the sweep ends, its page says at least what a smoke run is
            from metaocl.report.summary import smoke_note

            tracker.client.set_tag(tracker.parent_id, NOTE_TAG, f"**{smoke_note(sweep.name)}**")
        tracker.client.log_text(tracker.parent_id, sweep.path.read_text(), f"sweep/{sweep.path.name}")
        tracker.client.log_text(tracker.parent_id, yaml.safe_dump(
            {"base": sweep.base, "grid": sweep.grid, "seeds": sweep.seeds}, sort_keys=False), "sweep/resolved.yaml")
        return tracker

    def start_parent(self) -> str:
        run = self.client.create_run(self.experiment_id, run_name=self._run_name, tags=self._parent_tags)
        self.parent_id = run.info.run_id
        self.client.set_tag(self.parent_id, SWEEP_RUN_TAG, self.parent_id)
        return self.parent_id

    def start_trial(self, trial: Trial, sweep_name: str, kind: str, role: str = "trial",
                    extra_tags: Mapping[str, str] | None = None) -> str:
        """A child run of the parent for ``trial``. ``role``: ``trial``, or ``stage1`` for a stage-1 unit
        (its curves once; the trials branching from it carry ``metaocl.stage1_run`` in ``extra_tags``)."""
        from mlflow.entities import Param

        tags = {"metaocl.role": role, "metaocl.sweep": sweep_name, "metaocl.kind": kind,
                "metaocl.trial_id": trial.trial_id, "metaocl.grid": json.dumps(trial.grid_values, sort_keys=True),
                "seed": str(trial.seed), "stage": "1", **(extra_tags or {})}
        if self.parent_id:
            tags["mlflow.parentRunId"] = self.parent_id
            tags[SWEEP_RUN_TAG] = self.parent_id
        run = self.client.create_run(self.experiment_id, run_name=trial.trial_id, tags=tags)
        run_id = run.info.run_id
        params = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in flatten(trial.config_dict()).items()]
        for i in range(0, len(params), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(run_id, params=params[i : i + 100])
        self.client.log_text(run_id, yaml.safe_dump(trial.config_dict(), sort_keys=False), "config.yaml")
        self.client.set_tag(run_id, "metaocl.config", "config.yaml")
        self.trial_runs[trial.trial_id] = run_id
        return run_id

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        values = metric_items(metrics)
        step = int(values.get("epoch", 0))
        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(run_id, metrics=batch[i : i + 1000])
        if "stage" in values:
            self.client.set_tag(run_id, "stage", str(int(values["stage"])))

    def end_trial(self, run_id: str, ok: bool, error: str | None = None) -> None:
        if error:
            self.client.set_tag(run_id, "metaocl.error", error[:5000])
            self.client.log_text(run_id, error, "error.txt")
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    def end(self, ok: bool, status: str | None = None) -> None:
        if self.parent_id:
            self.client.set_terminated(self.parent_id, status or ("FINISHED" if ok else "FAILED"))


# --------------------------------------------------------------------------------------------
# Aggregates for the MLflow UI: the sweep's result on its parent run
# --------------------------------------------------------------------------------------------
def verdict_tag(metric: str) -> str:
    """``gap/meta_ocl`` -> ``metaocl.verdict.meta_ocl`` (the tag holding that effect's verdict line)."""
    return "metaocl.verdict." + metric.split("/", 1)[1]


def aggregate_metrics(configuration, kind) -> list[tuple[str, int, float]]:
    """``(name, step, value)`` per epoch: mean over independent units (seeds) and t-based 95% CI
    bounds (``name_lo``, ``name_hi``) of each in-distribution subset's headline measure and of each
    gap of ``kind.effect_pairs``. Bounds need 2 units; a step where no unit has a value is skipped."""
    from metaocl.report.runs import split_family
    from metaocl.report.stats import DIFFERENCE, PROPORTION, mean_ci

    names = configuration.metric_names()
    prefix = kind.measure + "/"
    subsets = sorted(m for m in names if m.startswith(prefix)
                     and split_family(m[len(prefix):], kind.entity_templates)[0] == "in-distribution")
    gaps = [pair.metric for pair in kind.effect_pairs if pair.metric in names]
    steps = configuration.steps()
    out = []
    for name in subsets + [g for g in gaps if g not in subsets]:
        matrix = configuration.unit_matrix(name, steps)
        for j, step in enumerate(steps):
            mean, lo, hi = mean_ci(matrix[:, j], bounds=DIFFERENCE if name in gaps else PROPORTION)
            if math.isfinite(mean):
                out.append((name, step, mean))
            if math.isfinite(lo) and math.isfinite(hi):
                out += [(f"{name}_lo", step, lo), (f"{name}_hi", step, hi)]
    return out


def _common_params(trials, ignore: set[str]) -> dict[str, str]:
    """Params with one value in every trial (the resolved config they share), minus ``ignore``."""
    if not trials:
        return {}
    common = {k: v for k, v in trials[0].params.items() if k not in ignore}
    for t in trials[1:]:
        common = {k: v for k, v in common.items() if t.params.get(k) == v}
    return common


def _log_batch(client, run_id: str, metrics=(), params=()) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, step) for k, step, v in metrics]
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i : i + 1000])
    plist = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params]
    for i in range(0, len(plist), 100):
        client.log_batch(run_id, params=plist[i : i + 100])


def _verdicts(analysed, kind) -> dict[str, list[str]]:
    """Verdict tag -> its lines (one per configuration), from :func:`metaocl.report.effects.analyse`."""
    from metaocl.report.stats import verdict_line

    metric_of = {pair.name: pair.metric for pair in kind.effect_pairs}
    verdicts: dict[str, list[str]] = {}
    for r in analysed:
        for e in r.headline:
            verdicts.setdefault(verdict_tag(metric_of.get(e.name, "gap/" + e.name)), []).append(verdict_line(e))
    return verdicts


def run_description(runs, analysed, parent_run_id: str, so_far: str = "") -> str:
    """The Markdown description (``mlflow.note.content``) of a sweep's parent run or of one
    configuration run (``analysed`` = its configurations): the verdict lines, the seeds they count,
    the ``metaocl report`` command that draws the figures, then the verdicts as a table (MLflow shows
    the first lines and folds the rest). ``so_far`` marks interim verdicts."""
    from metaocl.report.stats import format_p, verdict_line

    headline = [e for r in analysed for e in r.headline]
    lines = []
    if getattr(runs, "smoke", False):
        from metaocl.report.summary import smoke_note

        lines += [f"**{smoke_note(runs.sweep)}**", ""]
    summary = "; ".join(verdict_line(e, with_context=False).split(":", 1)[0] for e in headline)
    lines += [f"### {summary or 'no verdict'}{so_far}", ""]
    lines += [f"- {verdict_line(e)}" for e in headline]
    for r in analysed:
        c = r.configuration
        seeds = sorted({t.seed for t in c.trials})
        where = f"{c.label}: " if c.label and len(analysed) > 1 else ""
        lines.append(f"- {where}{len(c.clusters())} seed{'s' if len(c.clusters()) != 1 else ''} counted "
                     f"({len(c.trials)} finished trial run{'s' if len(c.trials) != 1 else ''}; seeds "
                     f"{', '.join(map(str, seeds))}); {runs.measure} at the end of each stage, paired over seeds")
    if runs.left_out:
        lines.append(f"- {runs.left_out_text()}")
    smoke = " --smoke" if getattr(runs, "smoke", False) else ""
    lines += ["", f"Figures and statistics: `metaocl report {runs.sweep}{smoke} --parent {parent_run_id}`"]
    if headline:
        lines += ["", "| configuration | effect | stage | gap | 95% CI | p | seeds | verdict |", "|---" * 8 + "|"]
        for e in headline:
            ci = f"[{e.lo:.3f}, {e.hi:.3f}]" if math.isfinite(e.lo) and math.isfinite(e.hi) else "n/a"
            lines.append(f"| {e.configuration or '(all)'} | {e.name}: {e.a} - {e.b} | {e.stage} | {e.mean:+.3f} | {ci} "
                         f"| {format_p(e.p).removeprefix('p=')} | {e.n} | {e.outcome} |")
    return "\n".join(lines)


def log_interim_verdicts(uri: str, parent_run_id: str, finished: int, total: int) -> None:
    """While a sweep runs: the verdicts over its trials finished so far, in the parent's verdict tags,
    each line ending ``(so far: 2 of 6 trials)``, so the MLflow UI's runs table shows the result
    building up during an hours-long sweep. :func:`log_sweep_aggregates` overwrites them at the end;
    after Ctrl-C they stay, saying how many trials they count."""
    from metaocl.report.effects import analyse
    from metaocl.report.runs import load_invocation

    runs = load_invocation(uri, None, parent_run_id, allow_empty=True)
    if not runs.configurations:
        return
    client = _client(uri)
    note = f" (so far: {finished} of {total} trials)"
    analysed = analyse(runs)
    for key, lines in _verdicts(analysed, runs.kind_spec).items():
        client.set_tag(parent_run_id, key, "\n".join(line + note for line in lines)[:MAX_TAG_LENGTH])
    client.set_tag(parent_run_id, NOTE_TAG, run_description(runs, analysed, parent_run_id, note))


def log_sweep_aggregates(uri: str, parent_run_id: str) -> list[str]:
    """Write the invocation's result where the MLflow UI shows it first; returns the verdict lines.

    Reads the FINISHED trials of the invocation with the report's loader. A sweep without a grid
    gets, on the parent run, per-epoch means and t-based 95% CI bounds over seeds
    (:func:`aggregate_metrics`), the params its trials share and the verdicts as tags
    (``metaocl.verdict.ocl``, ``metaocl.verdict.meta_ocl``, ...). A grid sweep gets one child run per
    configuration (``metaocl.role=configuration``, named by its grid values, its params including the
    grid keys) holding that configuration's aggregates and verdicts; the parent gets the params all
    trials share and every configuration's verdict line, one per line, in the same tags.

    Metrics are appended, never replaced (MLflow cannot delete a metric), so the parent's per-epoch
    aggregates are written once: a later call (``--resume`` of an ended sweep) updates tags and
    re-creates the configuration runs, but leaves the parent's metric curves as first written.
    """
    from metaocl.report.effects import analyse
    from metaocl.report.runs import SEED_PARAM, load_invocation

    runs = load_invocation(uri, None, parent_run_id, allow_empty=True)
    if not runs.configurations:
        return []
    client = _client(uri)
    parent = client.get_run(parent_run_id)
    kind = runs.kind_spec
    analysed = analyse(runs)
    grid = len(runs.configurations) > 1 or bool(runs.configurations[0].grid)
    replicate = set(runs.replicate_keys)
    all_trials = [t for c in runs.configurations for t in c.trials]

    # The parent: what every trial shares, and the verdicts.
    parent_params = _common_params(all_trials, {SEED_PARAM, *replicate, *runs.grid_keys})
    parent_params = {k: v for k, v in parent_params.items() if parent.data.params.get(k, v) == v}
    verdicts = _verdicts(analysed, kind)
    already = bool(parent.data.metrics) and any(k.endswith("_lo") for k in parent.data.metrics)
    metrics = [] if grid or already else aggregate_metrics(runs.configurations[0], kind)
    _log_batch(client, parent_run_id, metrics, [(k, v) for k, v in parent_params.items()
                                                 if k not in parent.data.params])
    for key, lines in verdicts.items():
        client.set_tag(parent_run_id, key, "\n".join(lines)[:MAX_TAG_LENGTH])
    seeds = sorted({t.seed for t in all_trials})
    client.set_tag(parent_run_id, "metaocl.seeds", ",".join(map(str, seeds)))
    client.set_tag(parent_run_id, NOTE_TAG, run_description(runs, analysed, parent_run_id))

    # One run per configuration of a grid (made afresh on every call, so it never holds stale curves).
    old = client.search_runs([parent.info.experiment_id],
                             f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`metaocl.role` = '{CONFIGURATION_ROLE}'",
                             max_results=50000)
    for run in old:
        client.delete_run(run.info.run_id)
    if grid:
        for r in analysed:
            c = r.configuration
            tags = {"mlflow.parentRunId": parent_run_id, SWEEP_RUN_TAG: parent_run_id,
                    "metaocl.role": CONFIGURATION_ROLE, "metaocl.sweep": runs.sweep, "metaocl.kind": runs.kind,
                    "metaocl.grid": json.dumps(c.grid, sort_keys=True),
                    "metaocl.seeds": ",".join(str(t.seed) for t in c.trials),
                    "metaocl.trials": ",".join(t.trial_id for t in c.trials)}
            tags.update({key: "\n".join(lines)[:MAX_TAG_LENGTH] for key, lines in _verdicts([r], kind).items()})
            tags[NOTE_TAG] = run_description(runs, [r], parent_run_id)
            run = client.create_run(parent.info.experiment_id, run_name=c.label, tags=tags)
            params = _common_params(c.trials, {SEED_PARAM, *replicate})
            _log_batch(client, run.info.run_id, aggregate_metrics(c, kind), params.items())
            client.set_terminated(run.info.run_id, "FINISHED")
    return [line for lines in verdicts.values() for line in lines]


def check_reachable(uri: str) -> None:
    """Fail early, with one line, when an MLflow store cannot be reached (before any trial starts)."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise ConfigError(f"MLflow tracking URI {uri} is unreachable (no folder {folder})")
        return
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(f"MLflow tracking URI {uri} is unreachable ({reason})") from None
    check_credentials(uri)


def check_credentials(uri: str) -> None:
    """An MLflow server with authentication (``mlflow server --app-name basic-auth``) must accept the
    credentials in ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (or
    ``MLFLOW_TRACKING_TOKEN``), as every MLflow client here sends them; else one line. One read request."""
    import base64
    import urllib.error
    import urllib.request

    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    if user and password:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    elif token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as e:
        if e.code == 401 and not (user and password) and not token:
            raise ConfigError(f"MLflow server {uri} asks for credentials: set MLFLOW_TRACKING_USERNAME and "
                              "MLFLOW_TRACKING_PASSWORD") from None
        if e.code == 401:
            who = f"user {user!r}" if user and password else "MLFLOW_TRACKING_TOKEN"
            raise ConfigError(f"MLflow server {uri} refused the credentials of {who} (MLFLOW_TRACKING_USERNAME / "
                              "MLFLOW_TRACKING_PASSWORD)") from None
        if e.code == 403:
            raise ConfigError(f"MLflow server {uri}: user {user!r} may not read experiments there") from None
    except OSError:  # reachable a moment ago (/health): MLflow's own client reports what follows
        pass
