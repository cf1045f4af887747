"""The MLflow layout's one owner (metaocl/mlflow_layout.py): store URIs read with known answers, the
run queries on a real SQLite store this test writes, and the import graph that keeps writers,
readers and Ray workers apart (tracking never imports the report, the report never the driver)."""

from __future__ import annotations

import ast
import re
import time
from pathlib import Path

import pytest

from metaocl import mlflow_layout as layout
from metaocl.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# Store URIs
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("uri, scheme, path", [
    ("sqlite:///mlflow.db", "sqlite", "mlflow.db"),  # relative to the working directory
    ("sqlite:///runs/sub/mlflow.db", "sqlite", "runs/sub/mlflow.db"),
    ("sqlite:////abs/runs/mlflow.db", "sqlite", "/abs/runs/mlflow.db"),
    ("sqlite:////abs/m.db?timeout=30", "sqlite", "/abs/m.db"),
    ("sqlite:///:memory:", "sqlite", None),
    ("file:///abs/mlruns", "file", "/abs/mlruns"),
    ("file:mlruns", "file", "mlruns"),
    ("file:///abs/with%20space", "file", "/abs/with space"),
    ("/abs/mlruns", "file", "/abs/mlruns"),  # a bare path: MLflow's file store
    ("mlruns", "file", "mlruns"),
])
def test_local_store_uris(uri, scheme, path):
    store = layout.parse_store(uri)
    assert (store.scheme, store.path, store.server, store.base_url) == (scheme, path, False, None)
    assert store.shown == uri


@pytest.mark.parametrize("uri, base, user, password, shown", [
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000", None, None, "http://127.0.0.1:5000"),
    ("http://mlflow:5000/", "http://mlflow:5000", None, None, "http://mlflow:5000/"),
    ("https://user:s3cret@mlflow.example.org/prefix/", "https://mlflow.example.org/prefix", "user", "s3cret",
     "https://user:***@mlflow.example.org/prefix/"),
    ("http://ann:p%40ss%3Aword@10.0.0.5:8080", "http://10.0.0.5:8080", "ann", "p@ss:word",
     "http://ann:***@10.0.0.5:8080"),
    ("http://[::1]:5000", "http://[::1]:5000", None, None, "http://[::1]:5000"),
])
def test_server_uris_keep_credentials_apart(uri, base, user, password, shown):
    store = layout.parse_store(uri)
    assert store.server and store.path is None
    assert (store.base_url, store.username, store.password, store.shown) == (base, user, password, shown)
    assert layout.describe_store(uri) == f"{shown} (open that address in a browser)"


def test_database_uri_is_neither_local_nor_a_server():
    store = layout.parse_store("postgresql://mlflow:pw@db:5432/mlflow")
    assert (store.scheme, store.path, store.server, store.shown) == (
        "postgresql", None, False, "postgresql://mlflow:***@db:5432/mlflow")


def test_default_uri_describe_and_log_folder(in_tmp, monkeypatch):
    assert layout.tracking_uri() == f"sqlite:///{in_tmp / 'mlflow.db'}" == layout.sqlite_uri(in_tmp / "mlflow.db")
    assert layout.tracking_uri("http://x:1") == "http://x:1"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/m.db")
    assert layout.tracking_uri() == "sqlite:////elsewhere/m.db"
    assert layout.tracking_uri("sqlite:///given.db") == "sqlite:///given.db"  # --tracking-uri wins
    assert layout.describe_store("sqlite:////runs/m.db") == (
        "/runs/m.db (open it with: metaocl ui, or mlflow ui --backend-store-uri sqlite:////runs/m.db)")
    assert layout.describe_store("file:///runs/mlruns") == (
        "/runs/mlruns (open it with: mlflow ui --backend-store-uri file:///runs/mlruns)")
    assert layout.log_folder("sqlite:////runs/m.db") == "/runs"
    assert layout.log_folder("sqlite:///m.db") == "."
    assert layout.log_folder("http://x:1") == str(in_tmp)


def test_missing_stores_are_one_line_and_nothing_is_created(in_tmp):
    with pytest.raises(ConfigError, match=r"^report x: no MLflow store at absent.db: run a sweep here first"):
        layout.client("sqlite:///absent.db", "report x")
    with pytest.raises(ConfigError, match=r"is unreachable \(no folder /nonexistent-dir\)$"):
        layout.check_reachable("sqlite:////nonexistent-dir/m.db")
    layout.check_reachable("sqlite:///absent.db")  # its folder is there: a sweep would create it
    layout.check_reachable("file:///nonexistent/mlruns")  # nothing to check before MLflow
    assert list(in_tmp.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Names and queries, on a real store
# --------------------------------------------------------------------------------------------
def test_names():
    assert layout.experiment_name("quickstart") == "metaocl/quickstart"
    assert layout.experiment_name("quickstart", smoke=True) == "metaocl/quickstart-smoke"
    assert layout.experiment_name("quickstart", smoke=True, run=True) == "metaocl/quickstart-smoke-run"
    assert layout.sweep_of_experiment("metaocl/quickstart-smoke") == "quickstart"
    assert layout.verdict_tag("gap/meta_ocl") == "metaocl.verdict.meta_ocl"
    assert layout.parent_tags("q", "lm", True) == {"metaocl.role": "sweep", "metaocl.sweep": "q",
                                                   "metaocl.kind": "lm", "metaocl.smoke": "true"}
    assert layout.role_filter("trial", "abc") == "tags.mlflow.parentRunId = 'abc' and tags.`metaocl.role` = 'trial'"


def test_role_queries_on_a_store(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(layout.sqlite_uri(tmp_path / "mlflow.db"))
    exp = client.create_experiment("metaocl/q", artifact_location=str(tmp_path / "artifacts"))
    now = int(time.time() * 1000)

    def run(name, role, parent=None, start=0):
        tags = {layout.ROLE_TAG: role}
        if parent:
            tags.update({layout.PARENT_TAG: parent, layout.SWEEP_RUN_TAG: parent})
        return client.create_run(exp, run_name=name, tags=tags, start_time=now + start).info.run_id

    old = run("old", "sweep", start=0)
    new = run("new", "sweep", start=10)
    old_trial = run("o-s0", "trial", old, start=1)
    trials = [run(f"s{i}", "trial", new, start=11 + i) for i in range(3)]
    unit = run("stage1", "stage1", new, start=11)
    config = run("p00", "configuration", new, start=20)
    run("loose", "trial", start=30)  # no parent: never part of an invocation

    ids = lambda runs: [r.info.run_id for r in runs]  # noqa: E731
    assert ids(layout.sweep_parents(client, exp)) == [new, old]  # newest first
    assert ids(layout.child_runs(client, exp, new, layout.TRIAL_ROLE)) == trials[::-1]
    assert ids(layout.child_runs(client, exp, new, layout.CONFIGURATION_ROLE)) == [config]
    assert ids(layout.child_runs(client, exp, old, layout.TRIAL_ROLE)) == [old_trial]
    assert set(ids(layout.child_runs(client, exp, new))) == {*trials, unit, config}
    assert set(ids(layout.search_all(client, exp, layout.invocation_filter(new)))) == {*trials, unit, config}


# --------------------------------------------------------------------------------------------
# The import graph and the literals
# --------------------------------------------------------------------------------------------
def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (``from a import b`` gives
    ``a`` and ``a.b``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _under(names: set[str], prefix: str) -> set[str]:
    return {n for n in names if n == prefix or n.startswith(prefix + ".")}


def test_imports_walk_one_way():
    pkg = ROOT / "metaocl"
    tracking = imports_of(pkg / "tracking.py")
    assert not _under(tracking, "metaocl.report") and not _under(tracking, "metaocl.sweep")
    for path in sorted((pkg / "report").glob("*.py")):
        names = imports_of(path)
        assert not (_under(names, "metaocl.sweep") | _under(names, "metaocl.tracking") | _under(names, "metaocl.ui")), path
    ui = imports_of(pkg / "ui.py")
    assert not (_under(ui, "metaocl.tracking") | _under(ui, "metaocl.sweep") | _under(ui, "metaocl.report")), ui
    owner = {n for n in imports_of(pkg / "mlflow_layout.py") if n.startswith("metaocl")}
    assert owner <= {"metaocl.config", "metaocl.config.ConfigError"}, owner
    worker = imports_of(pkg / "sweep" / "worker.py")
    assert not (_under(worker, "mlflow") | _under(worker, "metaocl.mlflow_layout") | _under(worker, "metaocl.tracking")
                | _under(worker, "metaocl.report") | _under(worker, "metaocl.sweep.driver")), worker


def test_imports_of_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\ndef f():\n    from metaocl.report.runs import load_invocation\n")
    assert imports_of(module) == {"os", "metaocl.report.runs", "metaocl.report.runs.load_invocation"}


# The layout's own strings: a tag key (metaocl.role, mlflow.parentRunId, ...) or a store URI scheme
# written as a literal anywhere else would be a second owner. Keys that are also the names of our
# modules (metaocl.sweep, metaocl.config) are left out: a literal naming the module is no tag.
def _is_module(name: str) -> bool:
    return (ROOT / name.replace(".", "/")).is_dir() or (ROOT / (name.replace(".", "/") + ".py")).is_file()


KEYS = sorted({v for k, v in vars(layout).items() if isinstance(v, str) and (k.endswith("_TAG") or k.endswith("_PREFIX"))
               and v.startswith(("metaocl.", "mlflow.")) and not _is_module(v.rstrip("."))}
              | {"sqlite:"}, key=len, reverse=True)
LITERAL = re.compile(r"(?<![\w.])(" + "|".join(re.escape(k) + ("" if k[-1] in ".:" else r"(?!\w)(?!\.[a-z_])")
                                               for k in KEYS) + ")")


def layout_literals(path: Path) -> list[str]:
    """String literals (docstrings aside) in ``path`` that spell a key of the layout."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            out += [f"{path.relative_to(ROOT)}:{node.lineno}: {m.group(1)}" for m in LITERAL.finditer(node.value)]
    return out


def test_layout_strings_have_one_owner():
    assert "metaocl.role" in KEYS and "mlflow.parentRunId" in KEYS and "metaocl.previous_invocation" in KEYS
    owner = ROOT / "metaocl" / "mlflow_layout.py"
    assert layout_literals(owner)  # the scan sees them where they are defined
    files = [p for p in sorted((ROOT / "metaocl").rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py")) if p != owner]
    found = [hit for p in files for hit in layout_literals(p)]
    assert found == []
