"""The OCL and meta-OCL gaps: the one definition every runner, the summary and the report use.

A gap is the difference of the headline measure between two eval splits, e.g. ``gap/ocl`` =
``acc/qd1consis - acc/qd2incons``. Which pairs a kind has, and which measure is its headline, is
the kind's knowledge (:class:`metaocl.experiments.base.ExperimentKind`); this module only subtracts.
No heavy imports: the driver and the report read it without torch.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from metaocl.experiments.base import EffectPair


def gaps(metrics: Mapping[str, float], pairs: Iterable[EffectPair], measure: str) -> dict[str, float]:
    """``{pair.metric: metrics[measure/a] - metrics[measure/b]}`` for every pair whose two splits are in ``metrics``.

    >>> from metaocl.experiments.base import EffectPair
    >>> gaps({"acc/qd1consis": 0.9, "acc/qd2incons": 0.6}, [EffectPair("OCL", "qd1consis", "qd2incons", "gap/ocl")], "acc")
    {'gap/ocl': 0.30000000000000004}
    """
    out: dict[str, float] = {}
    for pair in pairs:
        a, b = f"{measure}/{pair.a}", f"{measure}/{pair.b}"
        if a in metrics and b in metrics:
            out[pair.metric] = float(metrics[a]) - float(metrics[b])
    return out
