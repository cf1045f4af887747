"""Every module of the package imports (nothing dangles), and the import boundaries the architecture
promises hold (docs/architecture.md): validating every sweep never imports torch, and the code Ray
workers run never imports MLflow. Each boundary is checked in a fresh interpreter."""

import importlib
import pkgutil
import subprocess
import sys

import metaocl


def all_modules():
    return sorted(m.name for m in pkgutil.walk_packages(metaocl.__path__, prefix="metaocl."))


def test_every_module_imports():
    names = all_modules()
    assert "metaocl.cli" in names and "metaocl.sweep" in names
    for name in names:
        importlib.import_module(name)


def _imported_after(code: str) -> set[str]:
    probe = code + "\nimport sys; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    return set(out.stdout.split())


def test_validating_every_sweep_and_kind_never_imports_torch():
    loaded = _imported_after(
        "from pathlib import Path\n"
        "import metaocl\n"
        "from metaocl.config import KINDS, kind, load_sweep\n"
        "for k in KINDS: kind(k)\n"
        "names = sorted(p.stem for p in Path(metaocl.__file__).parent.joinpath('sweeps').glob('*.yaml'))\n"
        "assert len(names) > 10, names\n"
        "for n in names: load_sweep(n).trials(); load_sweep(n, smoke=True).trials()\n")
    assert "metaocl" in loaded and "torch" not in loaded


def test_ray_worker_code_never_imports_mlflow():
    loaded = _imported_after("import metaocl.sweep.worker")
    assert "ray" in loaded and "mlflow" not in loaded
