"""Shared test settings: one torch thread (the suite runs on 2 cores), no network, temp stores."""

import os

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
