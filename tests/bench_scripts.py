"""Load a script of bench/ as a module (bench/ holds scripts, not a package) for its tests."""

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_bench(name: str):
    """``bench/{name}.py`` as module ``bench_{name}`` (re-executed on every call)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
