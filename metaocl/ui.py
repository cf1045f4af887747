"""``metaocl ui``: the MLflow UI on a sweep store, with a link to the newest sweep's charts.

    metaocl ui                          # ./mlflow.db (or $MLFLOW_TRACKING_URI) on http://127.0.0.1:5000
    metaocl ui --port 5001 --tracking-uri sqlite:////runs/mlflow.db
    metaocl ui --tracking-uri http://mlflow:5000    # a server is its own UI: just print the link

**The link.** MLflow 3.17's UI keeps a page's state in the URL and can load a *shared view*: an
experiment tag ``mlflow.sharedViewState.<key>`` holding JSON of the search facets and UI state, opened
by ``#/experiments/<id>/runs?viewStateShareKey=<key>&compareRunsMode=CHART``. ``metaocl ui`` writes
one such view per sweep invocation: its runs only (the search filter on ``metaocl.sweep_run_id``, see
:mod:`metaocl.mlflow_layout`), sorted by role so that the flat list reads configurations, the sweep's
parent run, then its trials (a search filter with a sort other than "created" shows child runs as
rows of their own instead of folded under the parent), and table columns for the params people
compare (grid keys, seed, model) and the verdicts. The chart view then shows the parent's per-epoch
means and CI bounds beside every trial's curves, one chart per metric.

**The server.** ``mlflow ui`` starts uvicorn, which starts workers, and a job runner (huey
consumers); a signal to ``mlflow ui`` alone does not reliably take them down (the port was seen
still served after ``kill`` and after a SIGTERM to the process group). So the server runs in a
session of its own, and on SIGTERM or SIGINT (Ctrl-C, ``docker stop``) ``metaocl ui`` terminates every
process of that session and every descendant, waits, kills what is left, and only then exits. If
``metaocl ui`` itself is killed with SIGKILL, the kernel sends SIGTERM (``PR_SET_PDEATHSIG`` on Linux)
to the server and to a small guard process, which then terminates the server's whole process group
(SIGTERM, then SIGKILL): MLflow forwards the signal to uvicorn but leaves its job runner's consumers
running when they are still starting up.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass

from metaocl import mlflow_layout as layout
from metaocl.config import ConfigError
from metaocl.mlflow_layout import VIEW_TAG_PREFIX, check_reachable, tracking_uri

STOP_GRACE_S = 5.0
SERVER_LOG = "mlflow-ui.log"  # beside the store: the server's own output, out of the terminal


def register(sub) -> None:
    p = sub.add_parser("ui", help="serve the MLflow UI on the sweep store; prints the link to the newest sweep's charts",
                       description="Serve the MLflow UI on the sweep store (loopback by default) and print the "
                       "link to the newest sweep's runs in chart view. Ctrl-C or SIGTERM stops the server and "
                       "every process it started.")
    p.add_argument("--tracking-uri", help="store to show (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default: 1; MLflow's own default is 4)")
    p.set_defaults(handler=cmd_ui)


# --------------------------------------------------------------------------------------------
# The newest sweep and the link to its charts
# --------------------------------------------------------------------------------------------
@dataclass
class SweepView:
    experiment_id: str
    experiment_name: str
    parent_run_id: str
    run_name: str
    n_trials: int
    key: str  # viewStateShareKey

    def link(self, base_url: str) -> str:
        query = urllib.parse.urlencode({"viewStateShareKey": self.key, "compareRunsMode": "CHART",
                                        "workflowType": "machine_learning"})
        return f"{base_url.rstrip('/')}/#/experiments/{self.experiment_id}/runs?{query}"


def newest_sweep_run(client, experiment):
    """The newest parent run of a ``metaocl sweep`` (not ``metaocl run``) in ``experiment``, or ``None``."""
    runs = layout.sweep_parents(client, experiment.experiment_id)
    return next((r for r in runs if r.data.tags.get(layout.INVOCATION_TAG, "sweep") == "sweep"), None)


def view_state(parent, trials, aggregated: set[str]) -> dict:
    """The shared view of one invocation: its runs, flat; columns people compare; charts of the aggregates.

    ``aggregated``: the metrics the parent or configuration runs hold with CI bounds (``gap/meta_ocl``
    when ``gap/meta_ocl_lo`` is there). Each gets one chart of the mean and its bounds: the gaps in a
    first section, the headline measure per subset in a second. The bounds get no chart of their own
    (a chart marked deleted, which MLflow's UI then does not generate).
    """
    pid = parent.info.run_id
    if parent.data.tags.get(layout.SWEEP_RUN_TAG) == pid:
        search = layout.invocation_filter(pid)
    else:  # a store written before the tag existed: the sweep's runs, every invocation
        search = f"tags.`{layout.SWEEP_TAG}` = '{parent.data.tags.get(layout.SWEEP_TAG, '')}'"
    grid_keys: list[str] = []
    params: set[str] = set()
    for t in trials:
        try:
            grid_keys += [k for k in json.loads(t.data.tags.get(layout.GRID_TAG) or "{}") if k not in grid_keys]
        except json.JSONDecodeError:
            pass
        params |= set(t.data.params)
    columns = [f"params.`{k}`" for k in grid_keys + ["seed", "model.name"] if k in params]
    columns += ["metrics.`gap/meta_ocl`", "metrics.`gap/ocl`", f"tags.`{layout.verdict_tag('gap/meta_ocl')}`"]
    pid8 = pid[:8]
    gaps = [m for m in ("gap/meta_ocl", "gap/ocl") if m in aggregated]
    gaps += sorted(m for m in aggregated if m.startswith("gap/") and m not in gaps)
    subsets = sorted(m for m in aggregated if not m.startswith("gap/"))
    sections, charts = [], []
    for name, metrics in (("OCL and meta-OCL gaps: mean and 95% CI over seeds", gaps),
                          (f"{subsets[0].split('/')[0] if subsets else ''} per subset: mean and 95% CI over seeds", subsets)):
        if not metrics:
            continue
        uuid = f"metaocl-{len(sections)}-{pid8}"
        sections.append({"uuid": uuid, "name": name, "display": True, "isReordered": False, "deleted": False,
                         "isGenerated": False})
        for m in metrics:
            charts.append(_line_chart(f"metaocl-{m}-{pid8}", uuid, m, [m, f"{m}_lo", f"{m}_hi"]))
            for bound in (f"{m}_lo", f"{m}_hi"):
                charts.append(_line_chart(f"metaocl-{bound}-{pid8}", uuid, bound, [bound], deleted=True))
    return {"searchFilter": search, "orderByKey": f"tags.`{layout.ROLE_TAG}`", "orderByAsc": True,
            "selectedColumns": columns, "compareRunSections": sections, "compareRunCharts": charts,
            "isAccordionReordered": True}


def _line_chart(uuid: str, section: str, name: str, keys: list[str], deleted: bool = False) -> dict:
    """A line chart of MLflow's chart view (fields as its ``RunsChartsLineCardConfig``)."""
    return {"type": "LINE", "uuid": uuid, "metricSectionId": section, "isGenerated": False, "deleted": deleted,
            "metricKey": name, "selectedMetricKeys": keys, "displayName": name,
            "lineSmoothness": 0, "xAxisScaleType": "linear", "scaleType": "linear", "range": {},
            "xAxisKey": "step", "selectedXAxisMetricKey": "", "yAxisKey": "metric", "yAxisExpressions": [],
            "ignoreOutliers": False, "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True}


def sweep_views(client) -> list[SweepView]:
    """The view of the newest sweep of every ``metaocl/`` experiment, the newest sweep first."""
    views = []
    for exp in client.search_experiments():
        if exp.name.startswith(layout.EXPERIMENT_PREFIX):
            parent = newest_sweep_run(client, exp)
            if parent is not None:
                views.append((parent.info.start_time or 0, sweep_view(client, exp, parent)))
    return [v for _, v in sorted(views, key=lambda x: -x[0])]


def sweep_view(client, exp, parent) -> SweepView:
    """Write (or refresh) the shared view of one sweep invocation into its experiment."""
    pid = parent.info.run_id
    trials = layout.child_runs(client, exp.experiment_id, pid, layout.TRIAL_ROLE)
    configurations = layout.child_runs(client, exp.experiment_id, pid, layout.CONFIGURATION_ROLE)
    aggregated = {k[: -len("_lo")] for r in [parent, *configurations] for k in r.data.metrics if k.endswith("_lo")}
    key = f"metaocl-{pid}"
    value = json.dumps(view_state(parent, trials, aggregated), separators=(",", ":"))
    if exp.tags.get(VIEW_TAG_PREFIX + key) != value:
        client.set_experiment_tag(exp.experiment_id, VIEW_TAG_PREFIX + key, value)
    return SweepView(exp.experiment_id, exp.name, pid, parent.info.run_name, len(trials), key)


# MLflow 3.17 picks its GenAI or model-training pages per browser, not per experiment: the
# ``workflowType`` URL parameter of the page at hand, else the sidebar's "GenAI | Model training" switch
# (remembered in the browser's local storage), else GenAI. The experiment-kind tag is not read for
# that, no server setting changes the default, and the home page drops the URL parameter on the way to
# an experiment. So the printed links carry ``workflowType=machine_learning``, and the way in from the
# home page is the switch, once per browser.
HOME_HINT = ('from MLflow\'s home page: switch the sidebar to "Model training" (once; the browser remembers it), '
             "open the experiment, then the sweep's run: its description holds the verdicts")


def describe(views: list[SweepView], base_url: str) -> str:
    """What ``metaocl ui`` prints: the newest sweep and the link to its charts, then the other experiments."""
    if not views:
        return f"no sweep in this store yet (run `metaocl sweep NAME`); experiments: {base_url}"
    first = views[0]
    lines = [f"newest sweep: run {first.run_name} in experiment {first.experiment_name} ({first.n_trials} trial runs)",
             "its charts (per epoch: mean and 95% CI over seeds on the sweep's run, every trial beside it):",
             f"  {first.link(base_url)}"]
    if len(views) > 1:
        lines.append("the newest sweep of each other experiment:")
        lines += [f"  {v.experiment_name}: {v.link(base_url)}" for v in views[1:]]
    lines.append(HOME_HINT)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The server and everything it starts
# --------------------------------------------------------------------------------------------
class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop(signum)


def _die_with_parent() -> None:
    """In the server's child before exec: SIGTERM it when ``metaocl ui`` dies (Linux), even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# The guard: started beside the server (not in its session), it gets SIGTERM when `metaocl ui` dies,
# even by SIGKILL, and takes the server's process group down; it exits by itself once that group is gone.
_GUARD = """
import os, signal, sys, time
pgid, parent = int(sys.argv[1]), int(sys.argv[2])
def down(*_):
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                sys.exit(0)
            time.sleep(0.2)
    sys.exit(0)
signal.signal(signal.SIGTERM, down)
if os.getppid() != parent:  # `metaocl ui` died before the parent-death signal was armed
    down()
while True:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        sys.exit(0)
    time.sleep(1)
"""


def server_processes(pid: int) -> list:
    """The server (``pid``, leader of its own session) and every process it started: its descendants
    and whatever else runs in its session (a child whose parent already exited)."""
    import psutil

    found = {}
    try:
        root = psutil.Process(pid)
        found[root.pid] = root
        for child in root.children(recursive=True):
            found[child.pid] = child
    except psutil.NoSuchProcess:
        pass
    for proc in psutil.process_iter():
        try:
            if proc.pid not in found and os.getsid(proc.pid) == pid:
                found[proc.pid] = proc
        except (OSError, psutil.Error):
            continue
    return list(found.values())


def _alive(proc) -> bool:
    """Running and not a zombie (a zombie holds no port; its parent, if any, reaps it)."""
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop_server(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to the server's session and every process it started; SIGKILL what is left after ``grace``."""
    import psutil

    for sig in (signal.SIGTERM, signal.SIGKILL):
        procs = server_processes(proc.pid)
        if not procs:
            break
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        try:
            os.killpg(proc.pid, sig)
        except OSError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()  # reap the server itself
            if not [p for p in procs if _alive(p)]:
                break
            time.sleep(0.1)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass


def _health_url(host: str, port: int) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def _tail(path: str, n: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def serve(cmd: list[str], base_url: str, log_path: str | None = None, ready_text: str = "") -> int:
    """Run the server until it exits or this process gets SIGTERM/SIGINT; always leave nothing behind.

    The server's own output goes to ``log_path`` (so the terminal keeps the link, not the server's
    log lines); once it answers, "MLflow UI is up" and ``ready_text`` (the links) are printed."""
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    proc = guard = None
    log = open(log_path, "a") if log_path else None
    try:
        proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent,
                                stdout=log, stderr=subprocess.STDOUT if log else None)
        guard = subprocess.Popen([sys.executable, "-c", _GUARD, str(proc.pid), str(os.getpid())],
                                 start_new_session=True, preexec_fn=_die_with_parent)
        ready = False
        while proc.poll() is None:
            if not ready:
                try:
                    with urllib.request.urlopen(f"{base_url}/health", timeout=2):
                        ready = True
                        if ready_text:
                            print(ready_text, flush=True)
                        print(f"MLflow UI is up at {base_url} (Ctrl-C stops it)", flush=True)
                except OSError:
                    pass
            time.sleep(0.5)
        if log_path and proc.returncode:
            print(f"metaocl: the MLflow server exited with status {proc.returncode}; the end of {log_path}:\n"
                  f"{_tail(log_path)}", file=sys.stderr)
        return proc.returncode or 0
    except _Stop:
        return 0
    finally:
        if log is not None:
            log.close()
        for s in previous:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
        if proc is not None:
            stop_server(proc)
        if guard is not None:
            guard.terminate()  # the group is gone: it exits at once
            guard.wait(timeout=30)
        for s, handler in previous.items():
            signal.signal(s, handler)


def cmd_ui(args: argparse.Namespace) -> int:
    uri = tracking_uri(args.tracking_uri)
    store = layout.parse_store(uri)
    if store.server:  # a server is its own UI
        check_reachable(uri)  # a server that is down: one line, not MLflow's retries and traceback
        views = sweep_views(layout.client(uri))
        print(f"{store.shown} is an MLflow server: it is its own UI")
        print(describe(views, store.base_url))
        return 0
    layout.require_store(uri)
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: must be at least 1")
    base_url = _health_url(args.host, args.port)
    views = sweep_views(layout.client(uri))
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", str(args.workers), "--uvicorn-opts", "--no-access-log"]
    log_path = os.path.join(layout.log_folder(uri), SERVER_LOG)
    print(f"MLflow UI for {uri} on http://{args.host}:{args.port} (starting; Ctrl-C stops it and every process it "
          f"started; the server's log: {log_path})", flush=True)
    return serve(cmd, base_url, log_path, describe(views, base_url))
