"""The MLflow UI as a person sees it: Debian's Chromium, driven by Playwright, on real sweeps.

A grid sweep (two batch sizes, two seeds) and then `metaocl sweep quickstart --smoke` run into a tmp
store, `metaocl report quickstart --smoke` logs its figures, and `metaocl ui` serves the store on a
free loopback port. The browser opens the link `metaocl ui` printed and checks what a person would:
the sweep's run and its trials are listed, the parent's `gap/meta_ocl` chart has points, a trial's
metrics page shows `acc/d1consis` over epochs, the report's PNG is among the parent's artifacts, and
the grid sweep's link lists one run per configuration with their own `gap/meta_ocl` curves.

A second path starts at MLflow's home page, as a person who did not see the printed link would:
the "Model training" switch, the experiment, the sweep's run, whose description holds the verdicts.

Screenshots of each step go to the test's tmp dir and test-artifacts/ui-browser/ (git-ignored; and,
with METAOCL_UI_SCREENSHOTS=DIR, to DIR too).
METAOCL_UI_QUICKSTART_ARGS (default ``--smoke``) replaces the quickstart's arguments, e.g. ``--seeds 3``
for the full quickstart that took the README's screenshot (docs/figures/mlflow-ui-quickstart.png). The browser
is the system's (`chromium`, as `.ci/run` installs it): no browser is downloaded. Without one the test
skips, except under CI (env CI set), where it fails.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from processes import free_port

pytestmark = [pytest.mark.slow, pytest.mark.browser]

QUICKSTART_ARGS = os.environ.get("METAOCL_UI_QUICKSTART_ARGS", "--smoke").split()
SMOKE = "--smoke" in QUICKSTART_ARGS
QUICKSTART_EXPERIMENT = "metaocl/quickstart" + ("-smoke" if SMOKE else "")
WAIT_MS = 120_000  # a loaded 2-core machine: the UI's first page takes tens of seconds
GRID_YAML = """\
name: uigrid
description: "Two batch sizes of the quickstart's smoke variant, for the browser test of the MLflow UI"
kind: set_inclusion
base:
  device: cpu
  data: {n_variables: 200, max_number: 19, list_length: 4, qd1consis: 0.4, qd2incons: 0.4, d1consis: 0.1, d2consis: 0.1}
  model: {hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 256, tie_embeddings: true}
  train: {joint: true, stage1_epochs: 2, stage2_epochs: 0, optimizer: adamw, lr: 0.002, loss_on: answer}
  eval: {every: 1}
grid: {train.batch_size: [64, 128]}
seeds: 2
resources: {cpu: 1, gpu: 0}
"""


def chromium() -> str:
    path = shutil.which("chromium") or next((p for p in ("/usr/bin/chromium",) if os.path.exists(p)), None)
    if path is None:
        message = "no Chromium: apt-get install -y chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and {message}")
        pytest.skip(message)
    return path


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "METAOCL_RESULTS")}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    return env


def _metaocl(args: list[str], cwd: Path, timeout: int = 900) -> str:
    proc = subprocess.run([sys.executable, "-m", "metaocl.cli", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"metaocl {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with a grid sweep, then the quickstart's smoke sweep (the newest) and its report."""
    chromium()
    folder = tmp_path_factory.mktemp("ui-store")
    (folder / "uigrid.yaml").write_text(GRID_YAML)
    _metaocl(["sweep", "uigrid.yaml"], folder)
    _metaocl(["sweep", "quickstart", *QUICKSTART_ARGS], folder, timeout=3600)
    _metaocl(["report", "quickstart"] + (["--smoke"] if SMOKE else []), folder)
    return folder


@pytest.fixture(scope="module")
def ui(store):
    """`metaocl ui` on the store: yields its printed lines once the server answers; SIGTERM at the end."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "metaocl.cli", "ui", "--port", str(port)], cwd=store, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: [lines.append(line.rstrip("\n")) for line in proc.stdout], daemon=True).start()
    try:
        deadline = time.monotonic() + 300
        while not any("MLflow UI is up" in line for line in lines):
            assert proc.poll() is None, "\n".join(lines)
            assert time.monotonic() < deadline, "metaocl ui did not come up in 300 s:\n" + "\n".join(lines)
            time.sleep(0.5)
        yield lines
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "ui-browser"  # git-ignored


def _shoot(page, tmp_path: Path, name: str) -> Path:
    """A screenshot of each step: in the test's tmp dir, in test-artifacts/ui-browser/ (kept after the
    run, git-ignored) and, with METAOCL_UI_SCREENSHOTS=DIR, in DIR too."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    for extra in (str(ARTIFACTS), os.environ.get("METAOCL_UI_SCREENSHOTS")):
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
    return path


def _card(page, title_prefix: str):
    """The chart card whose title starts with ``title_prefix`` (MLflow's chart view and run pages)."""
    cards = page.locator('[data-testid="experiment-view-compare-runs-card"]')
    return cards.filter(has=page.locator(f'h4[title^="{title_prefix}"]')).first


def _points(card, at_least: int, timeout_s: float = WAIT_MS / 1000) -> int:
    """Plotted points in a chart card, once there are ``at_least`` (plotly draws them as path.point)."""
    card.wait_for(timeout=WAIT_MS)
    deadline = time.monotonic() + timeout_s
    while True:
        n = card.locator("g.scatterlayer path.point").count()
        if n >= at_least or time.monotonic() > deadline:
            return n
        time.sleep(0.5)


def _close_assistant(page) -> None:
    """MLflow 3 opens its 'MLflow Assistant' side panel on a first visit; a person closes it."""
    close = page.get_by_role("button", name="Close", exact=True)  # not "Close alert"
    if close.count():
        close.first.click()
        page.get_by_placeholder("Ask a question...").first.wait_for(state="hidden")  # the panel, not its button


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield b
        b.close()


def _runs(store: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("metaocl.role") == "sweep")
    return parent, [r for r in runs if r.data.tags.get("metaocl.role") == "trial"], \
        [r for r in runs if r.data.tags.get("metaocl.role") == "configuration"]


def test_the_printed_link_shows_the_sweep_its_gaps_trials_and_report(store, ui, browser, tmp_path):
    links = [m.group(0) for line in ui for m in [re.search(r"http://127\.0\.0\.1:\d+/#/experiments/\S+", line)] if m]
    parent, trials, _ = _runs(store, QUICKSTART_EXPERIMENT)
    assert any(f"newest sweep: run {parent.info.run_name} in experiment {QUICKSTART_EXPERIMENT} ({len(trials)} trial runs)"
               in line for line in ui), "\n".join(ui)
    s0 = next(t for t in trials if t.info.run_name == "s0")
    epochs = len({int(h.step) for h in _history(store, s0.info.run_id, "acc/d1consis")})
    assert epochs == (3 if SMOKE else 6)  # smoke: 2 + 1 epochs, each evaluated; quickstart: 24, every 4th
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    page.goto(links[0])  # the first link printed: the newest sweep

    # the sweep's run and its trials are listed, flat (no parent row to expand first)
    for name in [parent.info.run_name] + [t.info.run_name for t in trials]:
        page.get_by_role("link", name=name, exact=True).first.wait_for()
    # the parent's gap/meta_ocl chart, with its CI bounds, has points: every evaluated epoch x (mean, lo,
    # hi) for the parent alone, and the trials' own curves beside it
    gap = _card(page, "gap/meta_ocl")
    wanted = epochs * 3 + epochs * len(trials)
    assert _points(gap, wanted) >= wanted
    legend = gap.inner_text()
    assert f"{parent.info.run_name} (gap/meta_ocl)" in legend and f"{parent.info.run_name} (gap/meta_ocl_lo)" in legend
    _close_assistant(page)
    _shoot(page, tmp_path, "sweep-charts")

    # a trial's metrics page: acc/d1consis over the epochs
    page.get_by_role("link", name="s0", exact=True).first.click()
    page.wait_for_url(re.compile(f"/runs/{s0.info.run_id}"))
    page.get_by_role("tab", name="Model metrics").or_(page.get_by_text("Model metrics", exact=True)).first.click()
    assert _points(_card(page, "acc/d1consis"), epochs) == epochs
    _shoot(page, tmp_path, "trial-metrics")

    # the report's PNG among the parent run's artifacts
    page.go_back()
    page.get_by_role("link", name=parent.info.run_name, exact=True).first.click()
    page.wait_for_url(re.compile(f"/runs/{parent.info.run_id}"))
    page.get_by_role("tab", name="Artifacts").or_(page.get_by_text("Artifacts", exact=True)).first.click()
    page.get_by_text("report", exact=True).first.click()
    page.get_by_text("curves.png", exact=True).first.click()
    page.locator("img[src*='curves.png'], img[alt*='curves.png']").first.wait_for()
    _shoot(page, tmp_path, "report-artifacts")


def test_a_grid_sweep_compares_its_configurations(store, ui, browser, tmp_path):
    grid_link = next(re.search(r"http://\S+", line).group(0) for line in ui if line.strip().startswith("metaocl/uigrid:"))
    parent, trials, configurations = _runs(store, "metaocl/uigrid")
    names = sorted(c.info.run_name for c in configurations)
    assert names == ["train.batch_size=128", "train.batch_size=64"]
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    page.goto(grid_link)
    for name in names + [parent.info.run_name] + [t.info.run_name for t in trials]:
        page.get_by_role("link", name=name, exact=True).first.wait_for()
    gap = _card(page, "gap/meta_ocl")
    assert _points(gap, 2 * 2 * 3) >= 2 * 2 * 3  # two configurations x 2 epochs x (mean, lo, hi)
    legend = gap.inner_text()
    assert all(f"{name} (gap/meta_ocl)" in legend for name in names)
    _close_assistant(page)
    _shoot(page, tmp_path, "grid-charts")


def test_from_the_home_page_to_the_verdict(store, ui, browser, tmp_path):
    """The path a person takes who opens MLflow's home page instead of the printed link: switch the
    sidebar to "Model training" (MLflow 3.17 opens experiments in its GenAI pages otherwise), open the
    experiment, the sweep's run; its description holds the verdicts, the seeds and the report command.
    A screenshot of each step (test-artifacts/ui-browser/home-*.png)."""
    base = next(re.search(r"http://127\.0\.0\.1:\d+", line).group(0) for line in ui if "MLflow UI is up" in line)
    assert any('switch the sidebar to "Model training"' in line for line in ui), "\n".join(ui)
    parent, trials, _ = _runs(store, QUICKSTART_EXPERIMENT)
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()  # a fresh browser: GenAI first
    page.set_default_timeout(WAIT_MS)
    page.goto(base + "/")
    experiment = page.get_by_role("link", name=QUICKSTART_EXPERIMENT, exact=True).first
    experiment.wait_for()
    _close_assistant(page)
    _shoot(page, tmp_path, "home-1-home-page")

    page.get_by_text("Model training", exact=True).first.click()
    page.get_by_role("link", name="Model registry").first.wait_for()  # the model-training sidebar
    _shoot(page, tmp_path, "home-2-model-training")

    experiment.click()
    run_link = page.get_by_role("link", name=parent.info.run_name, exact=True).first
    run_link.wait_for()  # the runs list, not the GenAI overview
    assert "workflowType=machine_learning" in page.url
    _shoot(page, tmp_path, "home-3-runs")

    run_link.click()
    page.wait_for_url(re.compile(f"/runs/{parent.info.run_id}"))
    verdict = parent.data.tags["metaocl.verdict.meta_ocl"]
    page.get_by_text(verdict.split(" (")[0], exact=False).first.wait_for()  # the description: the verdict line
    page.get_by_text(f"{len(trials)} seeds counted", exact=False).first.wait_for()
    page.get_by_text(f"metaocl report quickstart{' --smoke' if SMOKE else ''} --parent {parent.info.run_id}",
                     exact=False).first.wait_for()
    if SMOKE:
        page.get_by_text("SMOKE RUN: a plumbing check", exact=False).first.wait_for()
    page.get_by_text("Metrics (", exact=False).first.wait_for()  # the page laid out in full
    _close_assistant(page)
    _shoot(page, tmp_path, "home-4-verdict")


def _history(store: Path, run_id: str, key: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{store / 'mlflow.db'}").get_metric_history(run_id, key)
