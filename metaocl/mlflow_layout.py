"""The MLflow layout, in one place: store URIs, experiment names, tag keys, roles, and the queries that find runs.

Everything that writes MLflow (:mod:`metaocl.tracking`, :mod:`metaocl.report.publish`), reads it
(:mod:`metaocl.report.runs`, :mod:`metaocl.ui`) or names its parts (the sweep driver, stage-1 units,
``metaocl run``) takes the names from here, so the layout described in ``docs/architecture.md``
("MLflow layout") has one owner:

- **Store URIs**: ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the
  working directory (MLflow's own default, so ``mlflow ui`` there shows it). :func:`parse_store`
  reads a URI once (a local SQLite file or file store, or a server address with its credentials).
- **Experiments**: ``metaocl/{sweep}`` (``metaocl/{sweep}-smoke``; ``-run`` appended for ``metaocl run``).
- **Runs**: one parent run per invocation (``metaocl.role=sweep``); one child per trial
  (``trial``), per stage-1 unit (``stage1``) and, after the sweep, per grid configuration
  (``configuration``); the child carries ``mlflow.parentRunId`` and every run of the invocation
  ``metaocl.sweep_run_id``. A look of a group-sequential sweep names the look before it in
  ``metaocl.previous_invocation``.

This module imports no MLflow at import time (only :func:`client` does), so configuration code can
use its names; code that runs in Ray workers (``metaocl/sweep/worker.py``) still never imports it.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

# --------------------------------------------------------------------------------------------
# Experiments
# --------------------------------------------------------------------------------------------
EXPERIMENT_PREFIX = "metaocl/"
# MLflow 3's UI reads this experiment tag to open an experiment on its model-training pages (runs,
# charts) instead of the GenAI overview (traces, latency, token usage).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow UI: experiment tag of a shared view (metaocl ui)


def experiment_name(sweep: str, smoke: bool = False, run: bool = False) -> str:
    """``metaocl/{sweep}``, ``-smoke`` for the smoke variant, ``-run`` for ``metaocl run`` (kept apart)."""
    return f"{EXPERIMENT_PREFIX}{sweep}" + ("-smoke" if smoke else "") + ("-run" if run else "")


def sweep_of_experiment(name: str) -> str:
    """``metaocl/quickstart-smoke`` -> ``quickstart`` (when a parent run lacks ``metaocl.sweep``)."""
    return name.removeprefix(EXPERIMENT_PREFIX).removesuffix("-smoke")


# --------------------------------------------------------------------------------------------
# Tags and roles
# --------------------------------------------------------------------------------------------
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: a child run's parent
NOTE_TAG = "mlflow.note.content"  # MLflow's UI shows this run (and experiment) tag as the Markdown "Description"
ROLE_TAG = "metaocl.role"
SWEEP_TAG = "metaocl.sweep"
KIND_TAG = "metaocl.kind"
SMOKE_TAG = "metaocl.smoke"  # "true" / "false"
INVOCATION_TAG = "metaocl.invocation"  # on a parent: "sweep" (metaocl sweep) or "run" (metaocl run)
FINGERPRINT_TAG = "metaocl.fingerprint"
RAY_EXPERIMENT_TAG = "metaocl.ray_experiment"
# Every run of one sweep invocation (parent, configurations, trials) carries its parent's run id, so
# one search filter lists the whole invocation (``metaocl ui`` links to it).
SWEEP_RUN_TAG = "metaocl.sweep_run_id"
SEQUENTIAL_TAG = "metaocl.sequential"  # a look's parent: "pocock:6,12"
LOOK_TAG = "metaocl.look"  # a look's parent: "2"
PREVIOUS_INVOCATION_TAG = "metaocl.previous_invocation"  # a look's parent: the run id of the look before
TRIAL_ID_TAG = "metaocl.trial_id"
GRID_TAG = "metaocl.grid"  # JSON of the trial's (or configuration's) grid values
SEED_TAG = "seed"
STAGE_TAG = "stage"
STAGE1_RUN_TAG = "metaocl.stage1_run"  # on a trial run: the run of the stage-1 unit it branched from
CONFIG_TAG = "metaocl.config"  # the trial's resolved config artifact
ERROR_TAG = "metaocl.error"
RETRIES_TAG = "metaocl.retries"
REPLAYED_TAG = "metaocl.replayed"
SEEDS_TAG = "metaocl.seeds"
TRIALS_TAG = "metaocl.trials"
VERDICT_TAG_PREFIX = "metaocl.verdict."

SWEEP_ROLE = "sweep"  # a parent run: one invocation (also of metaocl run, with metaocl.invocation=run)
TRIAL_ROLE = "trial"
STAGE1_ROLE = "stage1"  # a stage-1 unit's run (its curves once; trials branch from it)
CONFIGURATION_ROLE = "configuration"  # a grid point's aggregates, written when the sweep ends

MAX_PARAM_LENGTH = 500  # MLflow's limit on a param value
MAX_TAG_LENGTH = 5000


def verdict_tag(metric: str) -> str:
    """``gap/meta_ocl`` -> ``metaocl.verdict.meta_ocl`` (the tag holding that effect's verdict line)."""
    return VERDICT_TAG_PREFIX + metric.split("/", 1)[1]


def parent_tags(sweep: str, kind: str, smoke: bool) -> dict[str, str]:
    """The tags a parent run is created with (``metaocl sweep`` and ``metaocl run`` alike)."""
    return {ROLE_TAG: SWEEP_ROLE, SWEEP_TAG: sweep, KIND_TAG: kind, SMOKE_TAG: str(smoke).lower()}


# --------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------
def role_filter(role: str, parent_id: str | None = None) -> str:
    """The search filter of the runs with ``role`` (children of ``parent_id`` when given)."""
    text = f"tags.`{ROLE_TAG}` = '{role}'"
    return f"tags.{PARENT_TAG} = '{parent_id}' and {text}" if parent_id else text


def children_filter(parent_id: str) -> str:
    """Every child run of ``parent_id``, whatever its role."""
    return f"tags.{PARENT_TAG} = '{parent_id}'"


def invocation_filter(parent_id: str) -> str:
    """Every run of one invocation: parent, configurations, trials, units (tag ``metaocl.sweep_run_id``)."""
    return f"tags.`{SWEEP_RUN_TAG}` = '{parent_id}'"


def search_all(client, experiment_id: str, filter_string: str) -> list:
    """Every run of ``experiment_id`` matching ``filter_string``, newest first (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def sweep_parents(client, experiment_id: str) -> list:
    """The parent runs (``metaocl.role=sweep``) of an experiment, newest first."""
    return search_all(client, experiment_id, role_filter(SWEEP_ROLE))


def child_runs(client, experiment_id: str, parent_id: str, role: str | None = None) -> list:
    """The child runs of ``parent_id`` (only those with ``role`` when given), newest first."""
    return search_all(client, experiment_id, role_filter(role, parent_id) if role else children_filter(parent_id))


# --------------------------------------------------------------------------------------------
# Store URIs
# --------------------------------------------------------------------------------------------
DEFAULT_STORE = "mlflow.db"


@dataclass(frozen=True)
class Store:
    """One MLflow tracking URI, read once. ``path``: the local SQLite file or file-store folder (as the
    URI gives it: ``sqlite:///mlflow.db`` -> ``mlflow.db``, ``sqlite:////runs/m.db`` -> ``/runs/m.db``);
    ``base_url``: a server's address without credentials (``http://user:pw@host:5000`` ->
    ``http://host:5000``, user and password apart)."""

    uri: str
    scheme: str  # sqlite, file, http, https, postgresql, ...
    path: str | None = None
    base_url: str | None = None
    username: str | None = None
    password: str | None = None

    @property
    def server(self) -> bool:
        """An MLflow tracking server (its own UI)."""
        return self.scheme in ("http", "https")

    @property
    def sqlite(self) -> bool:
        return self.scheme == "sqlite"

    @property
    def shown(self) -> str:
        """The URI with any password masked (for messages)."""
        if not self.password:
            return self.uri
        parts = urllib.parse.urlsplit(self.uri)
        host = parts.netloc.rsplit("@", 1)[1]
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def parse_store(uri: str) -> Store:
    """Read a tracking URI: ``sqlite:///rel.db``, ``sqlite:////abs.db``, ``file:///abs/mlruns``,
    ``file:rel``, a bare path (MLflow's file store), ``http(s)://[user:password@]host[:port][/prefix]``,
    or another database URI (``postgresql://...``: neither a local path nor a server address)."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):].split("?", 1)[0]
        return Store(uri, "sqlite", path=path if path and path != ":memory:" else None)
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):
        path = urllib.parse.unquote(parts.path) if scheme == "file" else uri
        return Store(uri, "file", path=path or None)
    if scheme in ("http", "https"):
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        netloc = host + (f":{parts.port}" if parts.port else "")
        base = urllib.parse.urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))
        user = urllib.parse.unquote(parts.username) if parts.username else None
        password = urllib.parse.unquote(parts.password) if parts.password else None
        return Store(uri, scheme, base_url=base, username=user, password=password)
    return Store(uri, scheme, password=parts.password if "@" in parts.netloc else None)


def sqlite_uri(path: str | os.PathLike) -> str:
    """The URI of the SQLite store file ``path`` (``/runs/m.db`` -> ``sqlite:////runs/m.db``; relative stays relative)."""
    return f"sqlite:///{path}"


def tracking_uri(explicit: str | None = None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite store in the working directory."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return sqlite_uri(Path.cwd() / DEFAULT_STORE)


def describe_store(uri: str) -> str:
    """How a user opens ``uri`` in the MLflow UI."""
    store = parse_store(uri)
    if store.sqlite and store.path:
        return f"{store.path} (open it with: metaocl ui, or mlflow ui --backend-store-uri {uri})"
    if store.scheme == "file" and store.path:
        return f"{store.path} (open it with: mlflow ui --backend-store-uri {uri})"
    return f"{store.shown} (open that address in a browser)"


def log_folder(uri: str) -> str:
    """Where a local process serving ``uri`` keeps its log: beside a SQLite store, else the working directory."""
    store = parse_store(uri)
    if store.sqlite and store.path:
        return os.path.dirname(store.path) or "."
    return os.getcwd()


def client(uri: str, what: str | None = None):
    """An ``MlflowClient`` on ``uri``. With ``what`` (the command, for the message), a local SQLite
    store must exist already: MLflow would create an empty one as a side effect of reading."""
    from mlflow.tracking import MlflowClient

    if what is not None:
        require_store(uri, what)
    return MlflowClient(tracking_uri=uri)


def require_store(uri: str, what: str = "") -> None:
    """One line (:class:`~metaocl.config.ConfigError`) when ``uri`` names a SQLite file that is not there."""
    store = parse_store(uri)
    if store.sqlite and store.path and not os.path.isfile(store.path):
        from metaocl.config import ConfigError

        where = f"{what}: " if what else ""
        raise ConfigError(f"{where}no MLflow store at {store.path}: run a sweep here first, or pass --tracking-uri")


def check_reachable(uri: str) -> None:
    """Fail early, with one line, when an MLflow store cannot be reached (before any trial starts)."""
    from metaocl.config import ConfigError

    store = parse_store(uri)
    if store.sqlite and store.path:
        folder = Path(store.path).parent
        if not folder.is_dir():
            raise ConfigError(f"MLflow tracking URI {uri} is unreachable (no folder {folder})")
        return
    if not store.server:
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(_request(store, "/health"), timeout=5).close()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(f"MLflow tracking URI {store.shown} is unreachable ({reason})") from None
    check_credentials(uri)


def _request(store: Store, path: str, user: str | None = None, password: str | None = None, token: str | None = None):
    import base64
    import urllib.request

    request = urllib.request.Request(store.base_url + path)
    if user and password:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    elif token:
        request.add_header("Authorization", f"Bearer {token}")
    return request


def check_credentials(uri: str) -> None:
    """An MLflow server with authentication (``mlflow server --app-name basic-auth``) must accept the
    credentials in ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (or
    ``MLFLOW_TRACKING_TOKEN``; or a ``user:password@`` in the URI), as every MLflow client here sends
    them; else one line. One read request."""
    import urllib.error
    import urllib.request

    from metaocl.config import ConfigError

    store = parse_store(uri)
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if store.username and store.password:
        user, password = store.username, store.password
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    request = _request(store, "/api/2.0/mlflow/experiments/search?max_results=1", user, password, token)
    shown = store.shown
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as e:
        if e.code == 401 and not (user and password) and not token:
            raise ConfigError(f"MLflow server {shown} asks for credentials: set MLFLOW_TRACKING_USERNAME and "
                              "MLFLOW_TRACKING_PASSWORD") from None
        if e.code == 401:
            who = f"user {user!r}" if user and password else "MLFLOW_TRACKING_TOKEN"
            raise ConfigError(f"MLflow server {shown} refused the credentials of {who} (MLFLOW_TRACKING_USERNAME / "
                              "MLFLOW_TRACKING_PASSWORD)") from None
        if e.code == 403:
            raise ConfigError(f"MLflow server {shown}: user {user!r} may not read experiments there") from None
    except OSError:  # reachable a moment ago (/health): MLflow's own client reports what follows
        pass
