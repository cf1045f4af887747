"""Every module of the package imports: nothing dangles."""

import importlib
import pkgutil

import metaocl


def all_modules():
    return sorted(m.name for m in pkgutil.walk_packages(metaocl.__path__, prefix="metaocl."))


def test_every_module_imports():
    names = all_modules()
    assert "metaocl.cli" in names and "metaocl.sweep" in names
    for name in names:
        importlib.import_module(name)
