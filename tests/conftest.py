"""Shared test settings: one torch thread (the suite runs on 2 cores), no network, temp stores, and
the rule that decides the quick tier (pyproject.toml, ``slow`` marker), checked on every test."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("METAOCL_TRIAL_CPUS", "1")  # runners called in-process use one thread, like a 1-CPU trial


_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """The last thing pytest does: once the report is out, a process that hosted Ray drivers (the
    in-process sweeps) ends without the C++ teardown that Ray's leftover threads can crash
    (metaocl/sweep/shutdown.py); CI once saw every test pass and then exit 139."""
    from metaocl.sweep.shutdown import exit_process, hosts_ray

    if hosts_ray() and _EXIT_STATUS in config.stash:  # else pytest's own exit (exit_process would sys.exit here)
        capture = config.pluginmanager.getplugin("capturemanager")
        if capture is not None:  # what pytest's own clean-up would do next: give back stdout/stderr
            capture.stop_global_capturing()
        exit_process(config.stash[_EXIT_STATUS])


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty working directory, with no tracking/Ray/results settings from outside."""
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "METAOCL_RESULTS"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


# The `slow` rule (pyproject.toml): a test that starts Ray or trains a model is marked slow (or
# docker/browser), so `-m "not slow and not docker and not browser"` is the quick tier. Checked, not
# trusted: every other test runs with RAY_TMPDIR set to a folder of its own, inherited by every
# process it starts (in-process ray.init, `ray start`, a `metaocl sweep` subprocess all create a Ray
# session there), and with a torch hook that counts optimizer steps with gradients taken in the
# test's process; a test that did either fails, naming the marker it lacks. Not seen: training in a
# subprocess without Ray (`metaocl run` as a command); such tests are marked by hand.
_TIERS = ("slow", "docker", "browser")


@pytest.fixture(autouse=True)
def _slow_rule(request, monkeypatch):
    if any(request.node.get_closest_marker(m) for m in _TIERS):
        yield
        return
    ray_tmp = tempfile.mkdtemp(prefix="rq", dir="/tmp")  # short: Ray's socket paths live under it
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    steps = []
    hook = None
    if "torch" in sys.modules:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        def count(opt, args, kwargs):  # a step that moved parameters by their gradients (not a schedule test's)
            if any(q.grad is not None for group in opt.param_groups for q in group["params"]):
                steps.append(1)

        hook = register_optimizer_step_post_hook(count)
    ray_was_up = _ray_up()
    try:
        yield
    finally:
        if hook is not None:
            hook.remove()
        sessions = sorted(p.name for p in Path(ray_tmp, "ray").glob("session_*"))
        shutil.rmtree(ray_tmp, ignore_errors=True)
    did = []
    if sessions or (_ray_up() and not ray_was_up):
        did.append("started Ray")
    if steps:
        did.append(f"trained a model ({len(steps)} optimizer steps)")
    if did:
        pytest.fail(f"{request.node.nodeid} {' and '.join(did)}: mark it @pytest.mark.slow "
                    "(the rule in pyproject.toml keeps such tests out of the quick tier)", pytrace=False)


def _ray_up() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


# ---------------------------------------------------------------- the image (docker tier)

@pytest.fixture(scope="session")
def image() -> str:
    """The image every Docker test uses, built once per session from this checkout (Docker's layer
    cache makes a rebuild of an unchanged tree seconds), FROM $METAOCL_BASE_IMAGE (.ci/run sets it)
    or the local Debian base of docker/local-base.sh. ``METAOCL_TEST_IMAGE`` names an image to use
    as it is (nothing built). No engine: the test skips, except under CI (the ``CI`` variable),
    where that is a failure. No test depends on another having built it."""
    import subprocess

    from processes import sh

    reachable = bool(shutil.which("docker"))
    if reachable:
        try:
            reachable = subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            reachable = False
    if not reachable:
        if os.environ.get("CI"):
            pytest.fail("CI is set but the Docker engine cannot be reached (.ci/run starts it)")
        pytest.skip("no Docker engine")
    given = os.environ.get("METAOCL_TEST_IMAGE")
    if given:
        if sh("docker", "image", "inspect", given, check=False, timeout=60).returncode != 0:
            pytest.fail(f"METAOCL_TEST_IMAGE={given}: no such image")
        return given
    root = Path(__file__).resolve().parent.parent
    base = os.environ.get("METAOCL_BASE_IMAGE")
    if not base and (shutil.which("debootstrap") or os.path.exists("/usr/sbin/debootstrap")):
        base = sh(str(root / "docker" / "local-base.sh"), timeout=900).stdout.strip()
    build_args = ["--build-arg", f"BASE_IMAGE={base}"] if base else []
    sh("docker", "build", "-q", *build_args, "-t", "metaocl:latest", str(root), timeout=1800)
    return "metaocl:latest"
