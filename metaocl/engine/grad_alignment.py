"""Gradient-alignment diagnostics (paper section 4, "gradient alignment hypothesis").

The hypothesis: stage-1 training moves the model into a region where the gradient on tag-1
(consistent) definitions points the same way as the gradient on QA pairs, while the gradient on
tag-2 (inconsistent) definitions does not; SGD's implicit bias towards aligned minibatch gradients
then makes the model internalize tag-1 definitions more. We measure it directly: every K optimizer
steps, the cosine similarity between the *mean* gradient (gradient of the mean loss) on a batch of
tag-1 definitions and on a batch of QA pairs, and the same for tag-2 definitions. They are logged as
``grad/cos_def1_qa`` and ``grad/cos_def2_qa`` and plotted by ``metaocl report`` over training and
against batch size.

Two statistics. ``mean_gradient`` (ours, an option): the cosine of the mean gradients above.
``authors`` (the default of the LM runner, ``train.grad_alignment_statistic``): the authors'
``GradientVarianceCallback`` (src/callbacks.py): for every variable of d1consis (d2consis), the cosine
between the gradient of its definition and the gradient of each of its own questions, one datapoint
each, averaged over all those pairs (:class:`PairedProbes`, :func:`paired_cosine`).

A measurement must not change the training it observes. So it

- uses ``torch.autograd.grad`` (never ``backward``): no ``.grad`` of any parameter is read or written,
  so it is safe even in the middle of gradient accumulation;
- runs inside ``torch.random.fork_rng`` (CPU and the model's CUDA device): the training RNG stream is
  the same with and without the diagnostic;
- by default switches the model to ``eval()`` for the measurement and restores the previous mode:
  no dropout noise and no BatchNorm running-statistics updates (``train_mode=True`` measures with
  dropout instead, still without touching the RNG stream of training);
- keeps at most two gradient copies in memory (QA, and one definition batch at a time), accumulating
  dot products and squared norms in float64.

Wiring into an engine (the exact call)::

    from metaocl.engine.grad_alignment import GradAlignmentMonitor

    monitor = GradAlignmentMonitor(every_steps=cfg.train.grad_alignment_every)   # 0 = off
    ...
    # after optimizer.step(), with global_step counting optimizer steps from 1:
    if monitor.due(global_step):
        monitor.measure(model, loss_fn, def1_batch, def2_batch, qa_batch)
    ...
    # once per epoch, before reporter(metrics):
    metrics.update(monitor.epoch_metrics())   # {"grad/cos_def1_qa": ..., "grad/cos_def2_qa": ...} or {}

``loss_fn(model, batch) -> torch.Tensor`` returns the scalar *mean* training loss of ``batch`` exactly
as the training step computes it (autocast included, if training uses it); a batch is whatever
``loss_fn`` accepts (a dict of tensors, a tuple, an engine ``Batch``), already on the model's
device. Pass a ``list`` of such batches to average over micro-batches (for probe batches larger
than fit in memory at once). Draw the probe batches with a generator of their own (ideally once, as
fixed probe sets, so curves compare like with like), never from the training sampler's generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]
METRIC_DEF1 = "grad/cos_def1_qa"
METRIC_DEF2 = "grad/cos_def2_qa"


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def mean_gradient(model: torch.nn.Module, loss_fn: LossFn, batch: Any,
                  params: Sequence[torch.nn.Parameter] | None = None) -> list[torch.Tensor]:
    """Gradient of the mean loss of ``batch`` w.r.t. ``params`` (a list of batches: the mean of theirs).

    Parameters that the loss does not reach get zeros. Uses ``torch.autograd.grad``; ``.grad`` is
    untouched. Call it under :func:`torch.random.fork_rng` if the model draws random numbers.
    """
    params = list(params) if params is not None else _trainable(model)
    batches = batch if isinstance(batch, list) else [batch]
    if not batches:
        raise ValueError("mean_gradient: empty list of batches")
    total: list[torch.Tensor] | None = None
    for b in batches:
        loss = loss_fn(model, b)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar (the mean loss of the batch), got shape {tuple(loss.shape)}")
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, params)]
        if total is None:
            total = grads
        else:
            for t, g in zip(total, grads):
                t.add_(g)
    if len(batches) > 1:
        for t in total:
            t.div_(len(batches))
    return total


def _dot_and_norms(a: Iterable[torch.Tensor], b: Iterable[torch.Tensor]) -> tuple[float, float, float]:
    dot = na = nb = 0.0
    for x, y in zip(a, b):
        x64, y64 = x.double(), y.double()
        dot += float((x64 * y64).sum())
        na += float((x64 * x64).sum())
        nb += float((y64 * y64).sum())
    return dot, na, nb


def cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Cosine similarity of two gradients given as lists of tensors; NaN if either is exactly zero."""
    dot, na, nb = _dot_and_norms(a, b)
    if na == 0.0 or nb == 0.0:
        return math.nan
    return max(-1.0, min(1.0, dot / math.sqrt(na * nb)))


def _rng_devices(model: torch.nn.Module) -> list[int]:
    devices = {p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"}
    return sorted(devices)


@dataclass
class PairedProbes:
    """The authors' probe set for one tag (their ``GradientVarianceCallback``, src/callbacks.py): per
    variable its definition and its own questions, each a one-datapoint batch for ``loss_fn``."""

    pairs: list[tuple[Any, list[Any]]]


def paired_cosine(model: torch.nn.Module, loss_fn: LossFn, probes: PairedProbes,
                  params: Sequence[torch.nn.Parameter] | None = None) -> float:
    """The authors' statistic: the mean, over every (definition, one of its own questions) pair, of
    the cosine between the definition's gradient and the question's gradient (one datapoint each).
    NaN when there is no pair with two non-zero gradients."""
    params = list(params) if params is not None else _trainable(model)
    sims = []
    for definition, questions in probes.pairs:
        g_def = mean_gradient(model, loss_fn, definition, params)
        for q in questions:
            sims.append(cosine(g_def, mean_gradient(model, loss_fn, q, params)))
    finite = [x for x in sims if math.isfinite(x)]
    return sum(finite) / len(finite) if finite else math.nan


def gradient_alignment(
    model: torch.nn.Module,
    loss_fn: LossFn,
    def1_batch: Any,
    def2_batch: Any,
    qa_batch: Any,
    train_mode: bool = False,
) -> dict[str, float]:
    """Cosines between the mean gradient on QA pairs and on tag-1 / tag-2 definitions; or, when
    ``def1_batch`` is a :class:`PairedProbes` (the authors' statistic, the default of the LM runner),
    :func:`paired_cosine` of each tag's probes (``qa_batch`` unused).

    Returns ``{"grad/cos_def1_qa": c1, "grad/cos_def2_qa": c2}`` with each value in [-1, 1] (NaN
    only if a gradient is exactly zero). ``def2_batch`` may be ``None`` (then only the first key).
    Leaves every parameter's ``.grad``, the RNG state and the model's train/eval mode as they were.
    """
    params = _trainable(model)
    if not params:
        raise ValueError("gradient_alignment: the model has no trainable parameters")
    was_training = model.training
    model.train(train_mode)
    try:
        with torch.random.fork_rng(devices=_rng_devices(model)), torch.enable_grad():
            if isinstance(def1_batch, PairedProbes):
                out = {METRIC_DEF1: paired_cosine(model, loss_fn, def1_batch, params)}
                if def2_batch is not None:
                    out[METRIC_DEF2] = paired_cosine(model, loss_fn, def2_batch, params)
                return out
            g_qa = mean_gradient(model, loss_fn, qa_batch, params)
            out = {METRIC_DEF1: cosine(mean_gradient(model, loss_fn, def1_batch, params), g_qa)}
            if def2_batch is not None:
                out[METRIC_DEF2] = cosine(mean_gradient(model, loss_fn, def2_batch, params), g_qa)
    finally:
        model.train(was_training)
    return out


class GradAlignmentMonitor:
    """Every ``every_steps`` optimizer steps, measure :func:`gradient_alignment`; report epoch means.

    ``every_steps = 0`` switches it off (``due`` is always False, ``epoch_metrics`` returns ``{}``).
    ``history`` keeps every measurement as ``(step, metrics)`` for engines that want them all.
    """

    def __init__(self, every_steps: int, train_mode: bool = False):
        if every_steps < 0:
            raise ValueError(f"every_steps must be >= 0, got {every_steps}")
        self.every_steps = every_steps
        self.train_mode = train_mode
        self.history: list[tuple[int, dict[str, float]]] = []
        self._epoch: list[dict[str, float]] = []

    @property
    def enabled(self) -> bool:
        return self.every_steps > 0

    def due(self, step: int) -> bool:
        """True when optimizer step ``step`` (counted from 1) should be followed by a measurement."""
        return self.enabled and step > 0 and step % self.every_steps == 0

    def measure(self, model, loss_fn: LossFn, def1_batch, def2_batch, qa_batch, step: int | None = None) -> dict[str, float]:
        values = gradient_alignment(model, loss_fn, def1_batch, def2_batch, qa_batch, train_mode=self.train_mode)
        self._epoch.append(values)
        self.history.append((step if step is not None else len(self.history), values))
        return values

    def epoch_metrics(self) -> dict[str, float]:
        """Mean of each cosine over the measurements since the last call (NaNs skipped); then reset."""
        out: dict[str, float] = {}
        for key in (METRIC_DEF1, METRIC_DEF2):
            vals = [m[key] for m in self._epoch if key in m and math.isfinite(m[key])]
            if vals:
                out[key] = sum(vals) / len(vals)
        self._epoch = []
        return out

    def pending(self) -> list[dict[str, float]]:
        """Measurements not yet averaged by :meth:`epoch_metrics` (a checkpoint keeps them)."""
        return [dict(m) for m in self._epoch]

    def restore_pending(self, measurements: list[dict[str, float]]) -> None:
        """Put back measurements saved with :meth:`pending` (a trial resumed from a checkpoint)."""
        self._epoch = [dict(m) for m in measurements]
