"""Trial checkpoints through the optional reporter interface, shared by every runner.

A runner that checkpoints calls :func:`restore` once at its start and :func:`save` after the
``reporter(metrics)`` of an epoch (or an evaluation), so a retried Ray trial continues where its last
attempt stopped and ends, metric for metric, where an uninterrupted run does. A reporter without
``save_checkpoint`` / ``restore_checkpoint`` (any plain callable) makes both no-ops; in ``metaocl
run`` they are no-ops too (see :mod:`metaocl.experiments` and docs/architecture.md, "Resume,
retries, checkpoints").

What makes a restart exact is not only the weights: the optimizer's moments, the schedule's
position, the data-order generator and the global torch/Python/NumPy(/CUDA) RNG states (dropout,
drop path) must all continue where they were. :func:`save` bundles those; the runner adds its
position (stage, epoch or step, global counters, last metrics) as keyword arguments.

Where a sweep's trial checkpoints live (:class:`TrialCheckpoints`, used by the Ray worker's reporter
for every kind): written once, straight into the sweep's trial storage (a folder every node mounts,
or an object store such as ``s3://``, through pyarrow), never to the worker's disk first and never
handed to Ray (Ray would copy it again and would have to be asked before an old one can go)::

    <experiment>/metaocl/checkpoints/<trial>/
        latest.json                  {"file": "000007-<attempt>.pt", "seq": 7, "bytes": ...}
        000007-<attempt>.pt          the one checkpoint latest.json names

A checkpoint is streamed (``torch.save``) under a new name that nothing reads yet; then
``latest.json`` is replaced in one step (written under a temporary name and moved over it: a rename
on a local filesystem, one whole object in a store); only then is the previous checkpoint deleted.
A worker that dies mid-write leaves a file that ``latest.json`` never named, so a half-written
checkpoint is never read; one that dies after the switch leaves the previous file, also unnamed.
Such leftovers are deleted by the trial's next attempt before it restores (:meth:`TrialCheckpoints.clean`;
one attempt of a trial runs at a time) and, once the trial is finished, by the sweep's pruner
(:mod:`metaocl.sweep.prune`): a finished trial keeps exactly its last checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import sys
import time

import numpy as np
import torch


def restore(reporter) -> dict | None:
    """The last state the reporter kept for this trial, or None (first attempt, or no checkpoints)."""
    load = getattr(reporter, "restore_checkpoint", None)
    return load() if load is not None else None


def enabled(reporter) -> bool:
    return getattr(reporter, "save_checkpoint", None) is not None


def save(reporter, model: torch.nn.Module, optimizer, scheduler, generator: torch.Generator | None,
         **position) -> int | None:
    """Model, optimizer, schedule and RNG states plus ``position`` through the reporter (if it can);
    returns the bytes the reporter says it wrote (None when it does not say)."""
    if not enabled(reporter):
        return None
    return reporter.save_checkpoint({
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_states(generator),
        **position,
    })


def load_training_state(saved: dict, optimizer, scheduler, generator: torch.Generator | None) -> None:
    """Put the optimizer, schedule and RNG states of ``saved`` back. Call it after the stage's own
    ``seed_everything`` and after building the stage's fresh optimizer, so the saved states win."""
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None and saved.get("scheduler") is not None:
        scheduler.load_state_dict(saved["scheduler"])
    set_rng_states(generator, saved["rng"])


def rng_states(generator: torch.Generator | None) -> dict:
    return {
        "generator": generator.get_state() if generator is not None else None,
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_states(generator: torch.Generator | None, rng: dict) -> None:
    if generator is not None and rng.get("generator") is not None:
        generator.set_state(rng["generator"])
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def alignment_pending(monitor) -> list[dict[str, float]]:
    """Gradient-alignment measurements taken since the last evaluation (a GradAlignmentMonitor keeps
    them until ``epoch_metrics``), so a checkpoint between evaluations loses none of them."""
    return monitor.pending()


def set_alignment_pending(monitor, saved: dict) -> None:
    monitor.restore_pending(saved.get("alignment_pending", []))


# ------------------------------------------------------------------------------------------------
# Where a sweep trial's checkpoints live: its folder in the sweep's trial storage
# ------------------------------------------------------------------------------------------------
LATEST = "latest.json"  # the record of a trial's checkpoint: the only way a checkpoint is found
SIZE_KEY = "checkpoint_bytes_written"  # added by load(): the bytes its record says the checkpoint took


def folder(exp_dir: str, trial_id: str) -> str:
    """Where trial ``trial_id`` of the sweep at ``exp_dir`` (a path or a storage URI) checkpoints."""
    from metaocl.sweep.ledger import STATE_DIR, join

    return join(exp_dir, STATE_DIR, "checkpoints", trial_id)


class TrialCheckpoints:
    """One trial's checkpoints in the sweep's trial storage (see the module docstring for the layout
    and why a half-written checkpoint is never read). Runs in Ray workers and in the driver's pruner."""

    def __init__(self, exp_dir: str, trial_id: str):
        from metaocl.sweep.ledger import filesystem

        self.uri = folder(exp_dir, trial_id)
        self.fs, self.path = filesystem(self.uri)
        self.attempt = f"{os.getpid()}-{secrets.token_hex(3)}"  # this attempt's files never collide with another's

    def _file(self, name: str) -> str:
        return f"{self.path}/{name}"

    def _sync(self, path: str) -> None:
        """On a local (or mounted) filesystem, on disk before it is named: a record never outlives its
        data in a node crash. An object store has the object once the upload returned."""
        from pyarrow import fs as pafs

        if isinstance(self.fs, pafs.LocalFileSystem):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def latest(self) -> dict | None:
        """The record of the trial's checkpoint (``file``, ``seq``, ``bytes``, ``time``), or None."""
        from pyarrow import fs as pafs

        if self.fs.get_file_info(self._file(LATEST)).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(self._file(LATEST)) as f:
            return json.loads(f.read().decode())

    def save(self, state: dict) -> int:
        """Write ``state`` as the trial's checkpoint; returns the bytes written. The previous one is
        deleted only once the record names the new one."""
        before = self.latest()
        seq = (before["seq"] + 1) if before else 0
        name = f"{seq:06d}-{self.attempt}.pt"
        self.fs.create_dir(self.path, recursive=True)
        with self.fs.open_output_stream(self._file(name)) as out:  # streamed: no local copy first
            torch.save(state, out)
            size = out.tell()
        self._sync(self._file(name))
        record = {"file": name, "seq": seq, "bytes": size, "time": time.time()}
        temporary = self._file(f"{LATEST}.{self.attempt}.tmp")
        with self.fs.open_output_stream(temporary) as out:
            out.write(json.dumps(record).encode())
        self._sync(temporary)
        self.fs.move(temporary, self._file(LATEST))  # the switch: from here on the new one is restored
        if before and before["file"] != name:
            self._delete(before["file"])
        return size

    def load(self) -> dict | None:
        """The state of the trial's checkpoint, or None (none yet; or its file is gone: then the trial
        starts over, with one warning, rather than failing in every retry)."""
        from pyarrow import fs as pafs

        record = self.latest()
        if record is None:
            return None
        path = self._file(record["file"])
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            print(f"metaocl: warning: {self.uri}/{LATEST} names {record['file']}, which is missing; "
                  "the trial starts over", file=sys.stderr)
            return None
        with self.fs.open_input_file(path) as f:
            state = torch.load(f, map_location="cpu", weights_only=False)
        state[SIZE_KEY] = record["bytes"]
        return state

    def files(self) -> list[str]:
        """Names of the files in the trial's folder (the record included)."""
        from pyarrow import fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)

    def clean(self) -> int:
        """Delete what the record does not name (a half-written checkpoint, the previous one of an
        attempt that died after the switch, a temporary record); returns how many files. Only while
        no attempt of the trial runs: at an attempt's start, or once the trial is finished."""
        record = self.latest()
        keep = {LATEST, record["file"]} if record else set()
        deleted = 0
        for name in self.files():
            if name not in keep:
                self._delete(name)
                deleted += 1
        return deleted

    def _delete(self, name: str) -> None:
        try:
            self.fs.delete_file(self._file(name))
        except FileNotFoundError:
            pass
