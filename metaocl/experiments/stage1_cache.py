"""The LM stage-1 cache: later stages of several trials branch from one end-of-stage-1 model.

With ``train.stage1_cache`` set, the first trial whose *stage-1 key* (a hash of everything that
determines the end-of-stage-1 model and its reported history: data, model, eval, stage-1 seed and
epochs, the optimisation settings) is new trains stage 1 and saves model, tokenizer and its reports
under ``<stage1_cache>/<key>/``; every other trial with that key waits on the key's lock file, then
loads the folder and replays the reports. This reproduces the paper's 3-5 stage-2 seeds per stage-1
seed. The folder is written to a temporary name and renamed, so a folder that exists is complete;
the lock is ``fcntl.flock`` (one machine, or a filesystem that supports it, e.g. NFSv4).
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

# The training settings that shape stage 1 (the rest of TrainConfig only touches later stages or speed).
STAGE1_TRAIN_KEYS = ("batch_size", "optimizer", "lr", "lr_schedule", "warmup_steps", "weight_decay",
                     "max_grad_norm", "faithful_padding", "block_size")


def key(config: LMConfig) -> str:
    """Hash of everything that determines the end-of-stage-1 model and its reported history."""
    t = config.train
    what = {
        "data": to_dict(config.data), "model": to_dict(config.model), "eval": to_dict(config.eval),
        "stage1_seed": config.stage1_seed, "epochs": config.epochs[0],
        "train": {k: getattr(t, k) for k in STAGE1_TRAIN_KEYS},
    }
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

    path = cache.with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
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


def load(cache: Path, config: LMConfig) -> tuple[LoadedModel, list[dict]]:
    """The cached end-of-stage-1 model and the reports stage 1 made."""
    from metaocl.engine.lm_models import load_pretrained

    loaded = load_pretrained(str(cache), kind="seq2seq" if config.data.seq2seq else "causal",
                             dtype="bfloat16" if config.model.dtype == "bfloat16" else "float32")
    return loaded, json.loads((cache / "history.json").read_text())
