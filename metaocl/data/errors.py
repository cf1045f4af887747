"""The data-side user-mistake exception (a :class:`~metaocl.config.ConfigError`: one line, exit 2)."""

from __future__ import annotations

from metaocl.config import ConfigError


class DataError(ConfigError):
    """A bad source file or a data config the source cannot satisfy. One line naming file and field."""
