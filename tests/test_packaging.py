"""A non-editable install (`pip install .`, as from a wheel) ships every sweep file.

The package is built as a wheel from a copy of the source tree by the interpreter running the tests
(from a venv made as the README says, or the system's: no dependence on what a venv's base
interpreter holds) and installed into a folder of its own; `metaocl` then runs from a directory
outside any checkout, with METAOCL_SWEEPS unset, so only the installed package data can answer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_checkout_link_points_at_the_one_sweeps_folder():
    from metaocl.config import sweeps_dir

    link = ROOT / "metaocl" / "sweeps"
    assert link.is_symlink() and os.readlink(link) == "../sweeps"
    env = os.environ.pop("METAOCL_SWEEPS", None)
    try:
        assert sweeps_dir() == (ROOT / "sweeps").resolve()
    finally:
        if env is not None:
            os.environ["METAOCL_SWEEPS"] = env


@pytest.mark.slow
def test_non_editable_install_has_every_sweep(tmp_path):
    assert len(SWEEPS) >= 10 and "quickstart" in SWEEPS
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("metaocl", "sweeps"):  # symlinks stay links, as in a git checkout
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=ignore)

    env = {k: v for k, v in os.environ.items() if k not in ("METAOCL_SWEEPS", "PYTHONPATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # The wheel is built by the interpreter running the tests, with its own setuptools (a venv made as
    # the README says holds the pinned one), never by whatever the base interpreter of a venv holds;
    # it is installed into a folder of its own, and the dependencies are the running environment's.
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
        tmp_path, env)
    (wheel,) = wheels.glob("metaocl-*.whl")
    target = tmp_path / "installed"
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(target), str(wheel)],
        tmp_path, env)
    shutil.rmtree(src)  # nothing may be read from the source tree from here on
    env["PYTHONPATH"] = str(target)  # ahead of any editable install of a checkout

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([sys.executable, "-c", "import metaocl, metaocl.config as c; print(metaocl.__file__); print(c.sweeps_dir())"],
                elsewhere, env).split()
    installed = Path(where[1])
    assert Path(where[0]).is_relative_to(target) and installed.is_relative_to(target)
    assert installed.is_dir() and not installed.is_symlink()
    assert sorted(p.stem for p in installed.glob("*.yaml")) == SWEEPS
    assert (installed / "quickstart.yaml").read_bytes() == (ROOT / "sweeps" / "quickstart.yaml").read_bytes()

    metaocl = str(target / "bin" / "metaocl")  # the wheel's console script
    listed = [line.split()[0] for line in run([metaocl, "list"], elsewhere, env).splitlines()
              if line.strip() and not line.startswith(" ")]  # descriptions are indented under each name
    assert listed == SWEEPS
    out = run([metaocl, "sweep", "quickstart", "--dry-run"], elsewhere, env)
    assert "sweep quickstart" in out and "trials (set_inclusion)" in out
    assert list(elsewhere.iterdir()) == []  # a dry run writes nothing
