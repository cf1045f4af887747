"""The test tiers' rule (pyproject.toml): tests/conftest.py fails a test that trains a model or starts Ray
unless it is marked slow. Checked on a throwaway suite run by pytest in a subprocess with our conftest."""

import shutil
import subprocess
import sys
from pathlib import Path

SUITE = '''
import os
from pathlib import Path

import pytest
import torch


def _one_step(with_grad):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if with_grad:
        model(torch.ones(1, 2)).sum().backward()
    opt.step()


def test_trains_unmarked():
    _one_step(True)


@pytest.mark.slow
def test_trains_marked():
    _one_step(True)


def test_steps_an_optimizer_without_gradients():  # e.g. a learning-rate schedule test: not training
    _one_step(False)


def test_ray_session_unmarked():  # what ray.init / `ray start` leave in the Ray temp folder
    Path(os.environ["RAY_TMPDIR"], "ray", "session_2026-12-02_00-00-00_000000_1").mkdir(parents=True)


def test_plain():
    assert True
'''


def test_conftest_fails_unmarked_tests_that_train_or_start_ray(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: x\n    docker: x\n    browser: x\n")
    (tmp_path / "test_suite.py").write_text(SUITE)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rE", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    errors = sorted(line.split("::")[1].split()[0] for line in text.splitlines() if line.startswith("ERROR "))
    assert errors == ["test_ray_session_unmarked", "test_trains_unmarked"], text
    assert "test_trains_unmarked trained a model (1 optimizer steps): mark it @pytest.mark.slow" in text
    assert "test_ray_session_unmarked started Ray: mark it @pytest.mark.slow" in text
    assert "5 passed, 2 errors" in text  # the two offenders pass as tests, and error at teardown
