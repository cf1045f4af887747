"""Dataset builders (no training code here).

Source files that live on the internet (CVDB, T-REx, MNIST) are cached under :func:`data_home`.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    """The data cache: ``$METAOCL_DATA``, else ``$XDG_CACHE_HOME/metaocl`` (``~/.cache/metaocl``)."""
    env = os.environ.get("METAOCL_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "metaocl"
