"""The LM stage-1 cache: later stages of several trials branch from one end-of-stage-1 model.

With ``train.stage1_cache`` set, the first trial whose *stage-1 key* (a hash of everything that
determines the end-of-stage-1 model and its reported history: data, model, eval, stage-1 seed and
epochs, the optimisation settings) is new trains stage 1 and saves model, tokenizer and its reports
under ``<stage1_cache>/<key>/``; every other trial with that key waits on the key's lock file, then
loads the folder and replays the reports. This reproduces the paper's 3-5 stage-2 seeds per stage-1
seed. The folder is written to a temporary name and renamed, so a folder that exists is complete;
the lock is ``fcntl.flock`` (one machine, or a filesystem that supports it, e.g. NFSv4).

In a sweep the driver schedules the shared stages as a unit of their own instead (one per key,
:mod:`metaocl.sweep.stage1`): the unit writes its model into the sweep's trial storage
(:func:`publish`, a local path or an object-store URI every node sees) and the trials that branch
from it load it from there (:func:`fetch`); no trial waits on a lock. The shared stages are all but
the last (:func:`shared_stages`: two_stage stage 1; three_stage stages 1 and 2, the X1-QA stage
that the authors ran once per stage-1 seed). Set-inclusion units store their model as a torch state
dict (:func:`publish_state` / :func:`fetch_state`) beside the same ``complete.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from metaocl.config import to_dict
from metaocl.configs.lm import LMConfig

if TYPE_CHECKING:
    from metaocl.engine.lm_models import LoadedModel

# What this process did with shared stages (read by bench/cluster_sim.py through the worker's
# METAOCL_BENCH_TIMES record): stage-1 trainings, and seconds spent waiting on a cache lock.
STATS = {"stage1_trainings": 0, "waited_s": 0.0}

# The training settings that shape stage 1 (the rest of TrainConfig only touches later stages or speed).
STAGE1_TRAIN_KEYS = ("batch_size", "optimizer", "lr", "lr_schedule", "warmup_steps", "weight_decay",
                     "max_grad_norm", "faithful_padding", "block_size")


def shared_stages(config: LMConfig) -> int:
    """The leading stages that trials with one stage-1 seed share: all but the last (0 for one stage)."""
    return config.data.n_stages - 1


def key(config: LMConfig) -> str:
    """Hash of everything that determines the shared stages' model and their reported history."""
    t = config.train
    what = {
        "data": to_dict(config.data), "model": to_dict(config.model), "eval": to_dict(config.eval),
        "stage1_seed": config.stage1_seed, "epochs": config.epochs[0],
        "train": {k: getattr(t, k) for k in STAGE1_TRAIN_KEYS},
    }
    if shared_stages(config) > 1:  # three_stage: the X1-QA stage too
        what["epochs"] = config.epochs[: shared_stages(config)]
    if t.stage2_from_epoch is not None:
        what["stage2_from_epoch"] = t.stage2_from_epoch
    if t.grad_accumulation != 1:  # (only when set, so the keys of earlier caches stay valid)
        what["train"]["grad_accumulation"] = t.grad_accumulation
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def folder(config: LMConfig) -> Path | None:
    """``train.stage1_cache`` / key (relative paths under the data cache), or None when unset."""
    if not config.train.stage1_cache:
        return None
    from metaocl.data import data_home

    root = Path(config.train.stage1_cache).expanduser()
    if not root.is_absolute():
        root = data_home() / root
    return root / key(config)


@contextlib.contextmanager
def locked(cache: Path) -> Iterator[None]:
    """Hold the exclusive lock of one cache entry (``<key>.lock``), so concurrent trials train it once."""
    import fcntl

    import time

    path = cache.with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        t0 = time.monotonic()
        fcntl.flock(fh, fcntl.LOCK_EX)
        STATS["waited_s"] += time.monotonic() - t0
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def save(cache: Path, loaded: LoadedModel, history: list[dict]) -> None:
    """Model, tokenizer and the stage-1 reports, written under a temporary name and renamed (atomic)."""
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    loaded.model.save_pretrained(tmp)
    loaded.tokenizer.save_pretrained(tmp)
    (tmp / "history.json").write_text(json.dumps(history))
    tmp.rename(cache)


def load(cache: Path, config: LMConfig, with_history: bool = True) -> tuple[LoadedModel, list[dict]]:
    """The cached end-of-stage-1 model and the reports stage 1 made."""
    from metaocl.engine.lm_models import load_pretrained

    loaded = load_pretrained(str(cache), kind="seq2seq" if config.data.seq2seq else "causal",
                             dtype="bfloat16" if config.model.dtype == "bfloat16" else "float32")
    return loaded, json.loads((cache / "history.json").read_text()) if with_history else []


# ------------------------------------------------------------------------------------------------
# In the sweep's trial storage (pyarrow: a local path every node sees, or s3:// gs:// ...)
# ------------------------------------------------------------------------------------------------
COMPLETE = "complete.json"  # written last, with the reports: a folder with it holds a whole model


def _fs(uri: str):
    from metaocl.sweep.ledger import filesystem

    return filesystem(uri)


def complete(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = _fs(uri)
    return fs.get_file_info(f"{path}/{COMPLETE}").type == pafs.FileType.File


def publish_model(uri: str, loaded: LoadedModel) -> int:
    """Model and tokenizer into ``uri`` (a retried unit overwrites a partial one); returns the bytes.
    A folder (every node mounts it) is written once, in place; an object store gets them from a local
    temporary folder (``save_pretrained`` writes files)."""
    import tempfile

    import pyarrow.fs as pafs

    fs, path = _fs(uri)
    if isinstance(fs, pafs.LocalFileSystem):  # complete.json, written after, says when it is whole
        Path(path).mkdir(parents=True, exist_ok=True)
        loaded.model.save_pretrained(path)
        loaded.tokenizer.save_pretrained(path)
        return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and f.name != COMPLETE)
    with tempfile.TemporaryDirectory(prefix="metaocl-stage1-") as tmp:
        loaded.model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
        fs.create_dir(path, recursive=True)
        pafs.copy_files(tmp, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return size


def publish_complete(uri: str, history: list[dict]) -> None:
    """Mark ``uri`` complete, with the reports its model's stages made (after :func:`publish_model`)."""
    fs, path = _fs(uri)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{COMPLETE}") as out:
        out.write(json.dumps({"history": history}).encode())


def fetch(uri: str, config: LMConfig) -> tuple[LoadedModel, list[dict]]:
    """The model a unit published at ``uri`` and its reports (from an object store through a local
    temporary folder)."""
    import tempfile

    import pyarrow.fs as pafs

    fs, path = _fs(uri)
    with fs.open_input_stream(f"{path}/{COMPLETE}") as f:
        history = json.loads(f.read().decode())["history"]
    if isinstance(fs, pafs.LocalFileSystem):  # a folder: loaded from where it is, no local copy
        loaded, _ = load(Path(path), config, with_history=False)
        return loaded, history
    with tempfile.TemporaryDirectory(prefix="metaocl-stage1-") as tmp:
        pafs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        (Path(tmp) / COMPLETE).unlink(missing_ok=True)
        loaded, _ = load(Path(tmp), config, with_history=False)
    return loaded, history


# A model that is a plain torch module (set inclusion): its state dict as one file.
STATE_FILE = "model_state.pt"


def publish_state(uri: str, state: dict) -> int:
    """A torch state dict into ``uri`` (a retried unit overwrites a partial one); returns the bytes."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
    fs, path = _fs(uri)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{STATE_FILE}") as out:
        out.write(buf.getvalue())
    return buf.tell()


def fetch_state(uri: str) -> dict:
    """The state dict :func:`publish_state` wrote at ``uri`` (on the CPU)."""
    import io

    import torch

    fs, path = _fs(uri)
    with fs.open_input_stream(f"{path}/{STATE_FILE}") as f:
        return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)


def fetch_history(uri: str) -> list[dict]:
    """The reports a complete unit at ``uri`` made (:func:`publish_complete`)."""
    fs, path = _fs(uri)
    with fs.open_input_stream(f"{path}/{COMPLETE}") as f:
        return json.loads(f.read().decode())["history"]
