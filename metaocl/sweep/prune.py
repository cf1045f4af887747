"""Leave every finished trial of a sweep exactly one checkpoint: its last (driver only).

A trial's checkpoints live in ``<experiment>/metaocl/checkpoints/<trial>/``
(:class:`metaocl.experiments.checkpoints.TrialCheckpoints`). The worker itself removes a trial's
previous checkpoint, and only after ``latest.json`` names the new one, so whenever a worker or the
driver dies, what a retry or a ``--resume`` restores is there. What a dead worker can leave behind (a
checkpoint half-written, or the previous one when it died right after the switch) is named by no
record; the trial's next attempt deletes it before restoring. A trial that *finished* has no next
attempt: :class:`CheckpointPruner` deletes those leftovers once the sweep's ledger records the trial
finished (``finished/<trial>``, written by the driver when Ray completes it; after a ``kill -9`` of
the driver, by the resumed driver), so a finished trial keeps exactly its last checkpoint, whether or
not the driver that saw it finish lived to save Ray's experiment state. A trial that has not finished
is never touched here: one of its attempts may be writing.

It runs every few seconds from the driver's callback and once after the sweep.

    python -c "from metaocl.sweep.prune import CheckpointPruner; print(CheckpointPruner('metaocl-results/metaocl-quickstart-1a2b3c4d').prune())"
"""

from __future__ import annotations

import sys
import time

from metaocl.sweep.ledger import Ledger


class CheckpointPruner:
    """Prunes the checkpoint folders of the finished trials of one sweep (a local path or a storage URI)."""

    def __init__(self, exp_dir: str, every_s: float = 5.0):
        self.exp_dir = exp_dir
        self.ledger = Ledger(exp_dir)
        self.every_s = every_s
        self._last = 0.0
        self._pruned: set[str] = set()  # finished trials already left one checkpoint (they write no more)
        self._warned = False

    def maybe_prune(self) -> None:
        """:meth:`prune`, at most once per ``every_s`` seconds (called at every controller step)."""
        if time.monotonic() - self._last >= self.every_s:
            self.prune()

    def prune(self) -> int:
        """Delete, per finished trial not pruned yet, every file its checkpoint record does not name.

        Returns how many files were deleted now. A storage error deletes nothing more, warns once, and
        is tried again at the next call (housekeeping only: the sweep goes on)."""
        from metaocl.experiments.checkpoints import TrialCheckpoints

        self._last = time.monotonic()
        deleted = 0
        try:
            for tid in sorted(self.ledger.finished() - self._pruned):
                deleted += TrialCheckpoints(self.exp_dir, tid).clean()
                self._pruned.add(tid)
        except Exception as e:  # pyarrow raises OSError or ArrowInvalid
            if not self._warned:
                self._warned = True
                print(f"metaocl: old trial checkpoints are kept for now ({type(e).__name__}: {e})", file=sys.stderr)
        return deleted
