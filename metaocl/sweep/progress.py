"""What a running sweep shows: one bar for the sweep and one line per running trial, for every kind.

On a terminal: a tqdm bar over all evaluations of the sweep (``n_reports`` of each trial's kind)
with trials done / running / failed and the ETA, and under it one bar per running trial with its
latest epoch (or step) and headline effects. Elsewhere (a ``docker run`` log, KubeRay, CI), no
bars: one line per report, at most one per ``interval`` seconds per trial (a trial's last report,
its end and its failure are always printed), each line self-contained::

    [s0] epoch 3, eval 3/24, stage 1: acc qd1consis 0.912 qd2incons 0.833 d1consis 0.571 d2consis 0.559 (OCL +0.079, meta-OCL +0.012) | quickstart: 1 done, 2 running, 0 failed; 30/144 evals; ETA 4m10s

A sweep whose trials share their stage 1 (stage-1 units, :mod:`metaocl.sweep.stage1`) counts the
units apart from the trials, in the same one line::

    ... | two_stage: stage 1: 2/4 units, 2 running · trials: 7/20 done, 3 running, 0 failed; 30/144 evals; ETA 12m30s

Counts come from the driver's per-trial histories, so an epoch replayed by a retry or a
``--resume`` is counted once, and finished trials of an earlier invocation count as done.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Callable, Mapping, Sequence

from metaocl.experiments.base import ExperimentKind

DEFAULT_INTERVAL_S = 30.0  # non-TTY: at most one line per trial this often


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class SweepProgress:
    """Progress of one sweep invocation. ``expected``: trial id -> evaluations it will report (stage-1
    units included); ``units``: stage-1 unit id -> the trials that start from its model."""

    def __init__(self, name: str, kind: ExperimentKind, expected: Mapping[str, int], *, done: Mapping[str, int] = {},
                 finished: set[str] = frozenset(), stream: IO[str] | None = None, tty: bool | None = None,
                 interval: float | None = None, enabled: bool = True, clock: Callable[[], float] = time.monotonic,
                 units: Mapping[str, Sequence[str]] = {}):
        self.name, self.kind, self.expected = name, kind, dict(expected)
        self.units = {u: list(members) for u, members in units.items()}
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        env = os.environ.get("METAOCL_PROGRESS_INTERVAL")
        self.interval = interval if interval is not None else float(env) if env else DEFAULT_INTERVAL_S
        self.enabled = enabled
        self.reports = dict(done)  # trial -> evaluations logged so far (distinct epochs)
        self.finished, self.failed, self.running = set(finished), set(), set()
        self.clock = clock
        self.marks: dict[str, float] = {}  # trial -> when it started or last reported a new evaluation
        self.eval_seconds: list[tuple[bool, float]] = []  # (of a unit, seconds per evaluation) per report
        self.slots = 0  # most trials seen running at once
        self.last_line: dict[str, float] = {}
        self.bar = None
        self.trial_bars: dict[str, object] = {}
        if enabled and self.tty:
            from tqdm.auto import tqdm

            n = len(self.expected) - len(self.units)
            desc = f"{name}: {n} trial{'s' if n != 1 else ''}" + (f" + {len(self.units)} stage-1 unit"
                                                                  f"{'s' if len(self.units) != 1 else ''}" if self.units else "")
            self.bar = tqdm(total=self.total, initial=self.n_done, desc=desc,
                            unit="eval", file=self.stream, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")  # our ETA, not tqdm's
            self._refresh()

    # ---- counts -------------------------------------------------------------------------------
    @property
    def total(self) -> int:
        return sum(self.expected.values())

    @property
    def n_done(self) -> int:
        return sum(min(n, self.expected.get(t, n)) for t, n in self.reports.items())

    def _per_eval(self, of_units: bool) -> float | None:
        """Seconds per evaluation of units (or of trials): the mean of the latest, each timed within
        its own trial; the other's when none of these has reported yet."""
        for kind in (of_units, not of_units):
            secs = [s for unit, s in self.eval_seconds if unit == kind]
            if secs:
                recent = secs[-max(4, 2 * self.slots):]
                return sum(recent) / len(recent)
        return None

    def eta(self) -> str:
        """Evaluations left x seconds per evaluation / trials run at once; at least the longest chain
        still to run: what a running trial has left, or a stage-1 unit's rest plus then its longest
        trial (which cannot start before it). Units and trials are timed apart (a stage-1 epoch is
        not a stage-2 one). Trials start in waves, so the sweep-wide rate (evaluations so far / time
        so far) is far off at first."""
        if self.total - self.n_done <= 0:
            return "0s"
        if not self.eval_seconds:
            return "?"
        rate = {True: self._per_eval(True), False: self._per_eval(False)}

        def left(t: str) -> float:
            return max(0, self.expected.get(t, 0) - self.reports.get(t, 0)) * rate[t in self.units]

        work = sum(left(t) for t in self.expected)
        chains = [left(t) for t in self.running]
        chains += [left(u) + max((left(m) for m in members), default=0.0)
                   for u, members in self.units.items() if u not in self.finished and u not in self.failed]
        return _duration(max(work / max(1, self.slots), max(chains, default=0.0)))

    def _states(self) -> str:
        """``1 done, 2 running, 0 failed``; with stage-1 units, those counted apart:
        ``stage 1: 2/4 units, 2 running · trials: 7/20 done, 3 running, 0 failed``."""
        if not self.units:
            return f"{len(self.finished)} done, {len(self.running)} running, {len(self.failed)} failed"
        units = set(self.units)
        u_done, u_running, u_failed = (len(s & units) for s in (self.finished, self.running, self.failed))
        extra = "".join(f", {n} {what}" for n, what in ((u_running, "running"), (u_failed, "failed")) if n)
        n_trials = len(set(self.expected) - units)
        return (f"stage 1: {u_done}/{len(units)} units{extra} · trials: {len(self.finished - units)}/{n_trials} done, "
                f"{len(self.running - units)} running, {len(self.failed - units)} failed")

    def counts(self) -> str:
        return f"{self._states()}; {self.n_done}/{self.total} evals"

    # ---- events from the driver --------------------------------------------------------------
    def trial_started(self, tid: str) -> None:
        self.running.add(tid)
        self.failed.discard(tid)
        self.marks[tid] = self.clock()
        self.slots = max(self.slots, len(self.running))
        if self.bar is not None and tid not in self.trial_bars:
            from tqdm.auto import tqdm

            self.trial_bars[tid] = tqdm(total=self.expected.get(tid), initial=self.reports.get(tid, 0),
                                        desc=f"  {tid}", unit="eval", file=self.stream, leave=False,
                                        dynamic_ncols=True)
        self._refresh()

    def report(self, tid: str, n_reports: int, row: Mapping[str, float]) -> None:
        """Trial ``tid`` has now logged ``n_reports`` distinct evaluations, the latest being ``row``."""
        before = self.n_done
        now = self.clock()
        new = n_reports - self.reports.get(tid, 0)
        if new > 0 and tid in self.marks:
            self.eval_seconds.append((tid in self.units, (now - self.marks[tid]) / new))
        if new > 0 or tid not in self.marks:
            self.marks[tid] = now
        self.reports[tid] = n_reports
        self.running.add(tid)
        self.slots = max(self.slots, len(self.running))
        if self.bar is not None:
            self.bar.update(self.n_done - before)
            tbar = self.trial_bars.get(tid)
            if tbar is not None:
                tbar.set_postfix_str(self.describe(tid, row, with_id=False, compact=True), refresh=False)
                tbar.update(n_reports - tbar.n)
            self._refresh()
        elif self.enabled:
            last = n_reports >= self.expected.get(tid, n_reports + 1)
            if last or now - self.last_line.get(tid, -1e9) >= self.interval:
                self.last_line[tid] = now
                self._print(f"{self.describe(tid, row)} | {self.name}: {self.counts()}; ETA {self.eta()}")

    def trial_retried(self, tid: str, failures: int, cause: str) -> None:
        """Attempt ``failures`` of trial ``tid`` failed and Ray retries it: one line, always printed
        (the traceback is in the trial's MLflow run, ``errors/attempt-N.txt``)."""
        self.running.discard(tid)
        if not self.enabled:
            return
        cause = cause if len(cause) <= 160 else cause[:157] + "..."
        line = f"[{tid}] attempt {failures} failed, retrying from its last checkpoint: {cause}"
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
            self._refresh()
        else:
            self._print(f"{line} | {self.name}: {self.counts()}")

    def trial_ended(self, tid: str, ok: bool, error: str = "") -> None:
        self.running.discard(tid)
        (self.finished if ok else self.failed).add(tid)
        tbar = self.trial_bars.pop(tid, None)
        if tbar is not None:
            tbar.close()
        if self.bar is not None:
            self._refresh()
            if not ok:
                self.bar.write(f"[{tid}] FAILED: {error}", file=self.stream)
        elif self.enabled:
            self._print(f"[{tid}] {'done' if ok else 'FAILED: ' + error} | {self.name}: {self.counts()}")

    def close(self) -> None:
        for tbar in self.trial_bars.values():
            tbar.close()
        self.trial_bars.clear()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.enabled:
            self._print(f"{self.name}: {self.counts()}")

    # ---- text ----------------------------------------------------------------------------------
    def describe(self, tid: str, row: Mapping[str, float], with_id: bool = True, compact: bool = False) -> str:
        """``[s0] epoch 3, eval 3/24, stage 1: acc qd1consis 0.912 ... (OCL +0.079, meta-OCL +0.012)``;
        ``compact`` (beside a trial's bar): ``epoch 3, stage 1: acc OCL +0.079, meta-OCL +0.012``."""
        unit = self.kind.progress_unit
        n = self.reports.get(tid, 0)
        where = f"{unit} {int(row.get('epoch', 0))}" + ("" if compact else f", eval {n}/{self.expected.get(tid, '?')}")
        if "stage" in row:
            where += f", stage {int(row['stage'])}"
        pairs = [p for p in self.kind.effect_pairs if p.template is None]
        gaps = self.kind.gaps(row)
        effects = ", ".join(f"{p.effect} {gaps[p.metric]:+.3f}" for p in pairs if p.metric in gaps)
        if compact:
            return f"{where}: {self.kind.measure} {effects}" if effects else where
        shown = [s for p in pairs for s in (p.a, p.b)]
        values = self.kind.headline(row)
        text = " ".join(f"{s} {values[s]:.3f}" for s in shown if s in values)
        out = f"{where}: {self.kind.measure} {text}" if text else where
        if effects:
            out += f" ({effects})"
        return f"[{tid}] {out}" if with_id else out

    def _refresh(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"ETA {self.eta()}; {self._states()}", refresh=True)

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)
