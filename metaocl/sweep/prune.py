"""Delete a sweep's old trial checkpoints, but never the one a ``--resume`` would restore (driver only).

Ray's ``CheckpointConfig(num_to_keep=1)`` deletes a trial's previous checkpoint the moment the driver
registers the next one, while the experiment state that ``Tuner.restore`` reads is written only at
the end of the controller step and copied to storage in the background. A driver killed in between
(``kill -9``, the OOM killer, a lost node) leaves a state that names a deleted checkpoint, and
``--resume`` then fails that trial for good ("Could not recover from checkpoint as it does not exist
on storage anymore"). So the sweep asks Ray to keep every checkpoint, and :class:`CheckpointPruner`
deletes, per trial, only the checkpoints *older* than the one named by the newest experiment state
on storage: whenever the driver dies, what a resume restores is still there. It runs every few
seconds from the driver's callback and once after the sweep (which leaves each trial its last one).

Reading the state uses Ray's own decoder of a trial's run metadata (``_TrainingRunMetadata``, Ray
pinned in requirements.lock); it unpickles the state's trial metadata, as ``Tuner.restore`` does with
the same file, so it trusts the storage no more than a resume does. Should decoding ever fail,
nothing is deleted and one warning says so.

    python -c "from metaocl.sweep.prune import CheckpointPruner; print(CheckpointPruner('metaocl-results/metaocl-quickstart-1a2b3c4d').prune())"
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
import time

from metaocl.sweep.ledger import filesystem

STATE_PATTERN = "experiment_state-*.json"  # Ray's TuneController.CKPT_FILE_TMPL
CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")  # Ray's trial checkpoint folders


def checkpoint_index(path: str) -> int | None:
    """The number of a Ray checkpoint folder (``.../checkpoint_000012`` -> 12), else None."""
    match = CHECKPOINT_DIR.match(path.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def restorable_checkpoints(state_text: str) -> list[str]:
    """The checkpoint each trial of a Ray experiment state (``experiment_state-*.json``) restores from.

    Trials that have not checkpointed yet are left out. Raises if the state cannot be decoded."""
    from ray.tune.experiment.trial import _TrainingRunMetadata

    paths = []
    for _trial_json, run_metadata_json in json.loads(state_text)["trial_data"]:
        latest = _TrainingRunMetadata.from_json_state(run_metadata_json).checkpoint_manager.latest_checkpoint_result
        if latest is not None and latest.checkpoint is not None:
            paths.append(latest.checkpoint.path)
    return paths


class CheckpointPruner:
    """Prunes the trial checkpoints of one Ray experiment folder (a local path or a storage URI)."""

    def __init__(self, exp_dir: str, every_s: float = 5.0):
        self.fs, self.root = filesystem(exp_dir)
        self.every_s = every_s
        self._last = 0.0
        self._done_for = None  # (name, mtime, size) of the state file last pruned after
        self._warned = False

    def maybe_prune(self) -> None:
        """:meth:`prune`, at most once per ``every_s`` seconds (called at every controller step)."""
        if time.monotonic() - self._last >= self.every_s:
            self.prune()

    def _newest_state(self):
        """The newest ``experiment_state-*.json`` (as ``Tuner.restore`` picks it), or None."""
        from pyarrow import fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        states = [i for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.base_name, STATE_PATTERN)]
        return max(states, key=lambda i: i.base_name, default=None)

    def prune(self) -> int:
        """Delete, per trial, the checkpoints older than the one the stored experiment state restores.

        Returns how many folders were deleted now. A state unchanged since the last pass is not read
        again; one still being copied (not yet valid JSON) is skipped until the next call; one Ray's
        decoder rejects deletes nothing and warns once."""
        self._last = time.monotonic()
        try:
            state = self._newest_state()
            if state is None:
                return 0
            seen = (state.base_name, state.mtime_ns, state.size)
            if state.mtime_ns is not None and seen == self._done_for:  # newer checkpoints are all kept anyway
                return 0
            with self.fs.open_input_stream(state.path) as f:
                keep = restorable_checkpoints(f.read().decode())
        except json.JSONDecodeError:  # caught mid-copy: next time
            return 0
        except Exception as e:  # a Ray whose state this code cannot read: keep everything
            self._warn(f"cannot read Ray's experiment state: {type(e).__name__}: {e}")
            return 0
        try:
            deleted = self._delete_older(keep)
        except Exception as e:  # housekeeping only (pyarrow raises OSError or ArrowInvalid): the sweep goes on
            self._warn(f"{type(e).__name__}: {e}")
            return 0
        self._done_for = seen
        return deleted

    def _warn(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            print(f"metaocl: old trial checkpoints are kept ({why})", file=sys.stderr)

    def _delete_older(self, keep: list[str]) -> int:
        from pyarrow import fs as pafs

        deleted = 0
        for path in keep:
            newest = checkpoint_index(path)
            trial_dir = path.rstrip("/").rsplit("/", 1)[0]
            if newest is None:
                continue
            infos = self.fs.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True))
            for info in infos:
                index = checkpoint_index(info.path)
                if info.type == pafs.FileType.Directory and index is not None and index < newest:
                    self.fs.delete_dir(info.path)
                    deleted += 1
        return deleted
