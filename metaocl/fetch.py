"""Fetch a sweep's inputs once, before any trial: the data sources and the hub models (driver side).

``metaocl sweep`` and ``metaocl run`` call :func:`fetch_for` before the first trial starts. It works
out what the trials read from outside (:func:`needs`: the CVDB / T-REx files, MNIST, every distinct
Hugging Face model and tokenizer of the sweep), fetches what is missing, and returns the environment
the trials then run with: ``HF_HUB_OFFLINE=1``, so that no trial downloads anything (a trial that
still needed the hub would fail at once, and the pre-flight's input check has already said so).

- Data: the checksummed downloaders of :mod:`metaocl.data.download` (``$METAOCL_CVDB_URL`` etc.
  name a mirror), into ``$METAOCL_DATA``.
- Models: :func:`huggingface_hub.snapshot_download` from ``$HF_ENDPOINT`` (default the public hub)
  into the hub cache of ``$HF_HOME`` (``$HF_HUB_CACHE``), limited to what ``from_pretrained`` reads:
  configs, tokenizer files and one weight format (safetensors where the model has them, else
  PyTorch ``.bin``). A snapshot is downloaded into a private folder beside the cache and moved into
  place only when every file has arrived, so a failed or interrupted fetch (hub gone, disk full,
  Ctrl-C) leaves nothing half-written in the cache.
- Progress: a bar per download on a terminal; without one (logs, ``docker run`` without ``-t``) a
  line every 30 s.
- A name the hub does not know, a hub that does not answer (a few seconds at most), a checksum that
  does not match, a full disk: one line (:class:`~metaocl.config.ConfigError`, exit 2), before the
  MLflow run or any trial folder exists.

``--no-fetch`` (or ``HF_HUB_OFFLINE=1``) skips all of this: the pre-flight then only looks at what is
already here, and anything missing is one line, exit 2.

On a Ray cluster the fetch runs once, as a Ray task on one node, into the cache every node mounts
(docker/compose.yaml: the ``cache`` volume on every container; docker/kuberay/: the ReadWriteMany
claim at ``/runs/cache``); the input check is then asked of every node, so a node that does not see
that cache is named before anything starts (:func:`metaocl.sweep.preflight.check_inputs`).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from metaocl.config import ConfigError

TIMEOUT_S = 5.0  # each hub question before anything is downloaded
LINE_EVERY_S = 30.0  # progress without a terminal
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1"}
# What from_pretrained reads besides the weights (configs, tokenizers, generation config, vocabularies).
SMALL_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]
PARTIAL_PREFIX = ".metaocl-partial-"


def _true(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set: nothing is asked of the hub."""
    return _true(os.environ.get("HF_HUB_OFFLINE")) or _true(os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_cache() -> Path:
    """The hub cache (read from the environment now, not when huggingface_hub was imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
    return Path(home).expanduser() / "hub"


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


# ------------------------------------------------------------------------------------------------
# What a sweep needs
# ------------------------------------------------------------------------------------------------
@dataclass
class Needs:
    """The inputs of a set of trials: data sources (``cvdb``, ``trex``, ``mnist``) and hub names."""

    data: list[str] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)  # hub name -> "model" | "tokenizer" (model wins)
    fields: dict[str, str] = field(default_factory=dict)  # hub name -> the config field that names it

    def add_model(self, fieldname: str, name: str, what: str) -> None:
        if self.models.get(name) != "model":
            self.models[name] = what
        self.fields.setdefault(name, fieldname)

    def empty(self) -> bool:
        return not self.data and not self.models


def needs(kind: str, configs: Iterable) -> Needs:
    """What trial configs of ``kind`` read from outside and could be fetched (local paths excluded)."""
    out = Needs()
    for config in configs:
        if kind == "lm":
            from metaocl.experiments.lm import hub_names

            data = config.data
            if data.source in ("cvdb", "trex") and not data.path and data.source not in out.data:
                out.data.append(data.source)
            for fieldname, name, what in hub_names(config):
                if not Path(name).expanduser().is_dir() and not name.startswith(("/", "./", "../", "~")) \
                        and name.count("/") <= 1:
                    out.add_model(fieldname, name, what)
        elif kind == "mnist":
            if config.data.digits == "mnist" and "mnist" not in out.data:
                out.data.append("mnist")
            if config.model.pretrained:  # timm loads pretrained weights from its hub repo
                hub_id = _timm_hub_id(config.model.name)
                if hub_id:
                    out.add_model("model.pretrained", hub_id, "model")
    return out


def _timm_hub_id(name: str) -> str | None:
    """The hub repo timm reads ``name``'s pretrained weights from (``timm/convnextv2_tiny...``), if any."""
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
        return (getattr(cfg, "hf_hub_id", None) or None) if cfg is not None else None
    except Exception:  # noqa: BLE001 (an unknown name: required_inputs says so)
        return None


def sweep_needs(sweeps) -> Needs:
    """The union of :func:`needs` over every trial of ``sweeps`` (each distinct config once)."""
    total = Needs()
    for sweep in sweeps:
        seen, configs = set(), []
        for t in sweep.trials():
            key = repr(sorted((k, repr(v)) for k, v in t.config_dict().items() if k != "seed"))
            if key not in seen:
                seen.add(key)
                configs.append(t.config)
        part = needs(sweep.kind, configs)
        total.data += [d for d in part.data if d not in total.data]
        for name, what in part.models.items():
            total.add_model(part.fields[name], name, what)
    return total


# ------------------------------------------------------------------------------------------------
# The hub cache
# ------------------------------------------------------------------------------------------------
def _repo_folder(name: str) -> str:
    return "models--" + name.replace("/", "--")


def _snapshot(name: str, cache: Path | None = None) -> Path | None:
    repo = (cache or hub_cache()) / _repo_folder(name)
    try:
        commit = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    folder = repo / "snapshots" / commit
    return folder if folder.is_dir() else None


def _has_weights(folder: Path) -> bool:
    import json

    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            try:
                shards = set(json.loads((folder / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError):
                return False
            return all((folder / s).is_file() for s in shards)
    return any((folder / f).is_file() for f in ("model.safetensors", "pytorch_model.bin"))


def in_cache(name: str, what: str = "model") -> bool:
    """Whether ``name`` can be loaded from the hub cache alone: its config and weights (``model``), or
    its tokenizer files (``tokenizer``)."""
    folder = _snapshot(name)
    if folder is None:
        return False
    has_tokenizer = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    if what == "tokenizer":
        return has_tokenizer
    return (folder / "config.json").is_file() and _has_weights(folder)


def _hub_error(name: str, error: BaseException) -> str:
    """One line for a failed hub question about ``name``."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    where = hub_endpoint()
    if isinstance(error, GatedRepoError):
        return f"{name!r} is gated on the hub ({where}): accept its licence there and set HF_TOKEN"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, (RepositoryNotFoundError, RevisionNotFoundError)) or status == 404:
        return f"{name!r} is not a model on the hub ({where}; misspelled? private models need HF_TOKEN)"
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (f"the hub ({where}) does not answer for {name!r}, which is not in the local cache "
            f"{hub_cache()} ({type(error).__name__}: {text[:200]}; offline? set HF_ENDPOINT to a mirror, "
            f"or put the model in the cache)")


@functools.lru_cache(maxsize=None)
def _model_info(name: str, endpoint: str):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint).model_info(name, timeout=TIMEOUT_S, files_metadata=True)


def hub_problem(name: str) -> str | None:
    """None when the hub knows ``name``; else one line saying why not (unknown, gated, no answer)."""
    try:
        _model_info(name, hub_endpoint())
    except Exception as e:  # noqa: BLE001 (every failure is a line: 404, timeout, refused, 5xx)
        return _hub_error(name, e)
    return None


def _patterns(info, what: str) -> list[str]:
    files = [s.rfilename for s in (info.siblings or [])]
    if what == "tokenizer":
        return list(SMALL_FILES)
    if any(f.endswith(".safetensors") for f in files):
        return SMALL_FILES + ["*.safetensors"]
    return SMALL_FILES + ["*.bin"]


def _size(info, patterns: list[str]) -> int:
    import fnmatch

    return sum(int(s.size or 0) for s in (info.siblings or [])
               if any(fnmatch.fnmatch(s.rfilename, p) for p in patterns))


def _verify(snapshot: Path, info, patterns: list[str], name: str, fieldname: str) -> None:
    """Every downloaded file against the hub's listing: the sha256 of LFS files (the weights), the git
    blob id of the others. huggingface_hub itself does not check what it wrote."""
    import fnmatch
    import hashlib

    for s in info.siblings or []:
        if not any(fnmatch.fnmatch(s.rfilename, p) for p in patterns):
            continue
        path = snapshot / s.rfilename
        if s.lfs is not None:
            algorithm, expected = "sha256", s.lfs.sha256
            digest = hashlib.sha256()
        elif s.blob_id:
            algorithm, expected = "git blob sha1", s.blob_id
            digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
        else:
            continue
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != expected:
            raise ConfigError(f"{fieldname}: {name}/{s.rfilename} from {hub_endpoint()}: checksum mismatch "
                              f"({algorithm} {digest.hexdigest()} != listed {expected}); nothing was kept")


def _folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, names in os.walk(folder):
        for n in names:
            try:
                total += os.lstat(os.path.join(root, n)).st_size
            except OSError:
                pass
    return total


class _Lines:
    """Without a terminal: one line per :data:`LINE_EVERY_S` on stderr, from a timer thread."""

    def __init__(self, label: str, total: int, measure):
        self.label, self.total, self.measure = label, total, measure
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(LINE_EVERY_S):
            done = self.measure()
            share = f" ({100 * done / self.total:.0f} %)" if self.total else ""
            print(f"metaocl: fetching {self.label}: {done / 1e6:,.0f} of {self.total / 1e6:,.0f} MB{share}, "
                  f"{time.monotonic() - self.started:.0f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def _move_into_place(src: Path, dest: Path) -> None:
    """Move the finished repo folder ``src`` (blobs, snapshots, refs, trees) into the cache at ``dest``;
    files already there are kept; ``refs`` last, so the cache names a snapshot only once it is whole."""
    if not dest.exists():
        os.replace(src, dest)
        return
    for sub in ("blobs", "trees", "snapshots"):
        for path in sorted((src / sub).rglob("*")) if (src / sub).is_dir() else []:
            target = dest / path.relative_to(src)
            if path.is_dir() and not path.is_symlink():
                target.mkdir(parents=True, exist_ok=True)
            elif not os.path.lexists(target):
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    for ref in (src / "refs").rglob("*") if (src / "refs").is_dir() else []:
        if ref.is_file():
            target = dest / ref.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(ref, target)


def fetch_model(name: str, what: str = "model", progress: bool | None = None, fieldname: str = "model.name") -> Path:
    """Download ``name``'s snapshot (``what``: ``model`` or ``tokenizer`` files) into the hub cache,
    unless it is there; returns the snapshot folder. Raises a one-line ``ConfigError``."""
    if in_cache(name, what):
        return _snapshot(name)
    from huggingface_hub import snapshot_download

    endpoint = hub_endpoint()
    try:
        info = _model_info(name, endpoint)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{fieldname}: {_hub_error(name, e)}") from None
    patterns = _patterns(info, what)
    total = _size(info, patterns)
    cache = hub_cache()
    work = cache / f"{PARTIAL_PREFIX}{uuid.uuid4().hex[:8]}"
    terminal = sys.stderr.isatty() if progress is None else progress
    print(f"metaocl: fetching {what} {name} from {endpoint} ({total / 1e6:,.1f} MB) into {cache}",
          file=sys.stderr, flush=True)
    lines = None if terminal else _Lines(name, total, lambda: _folder_bytes(work))
    try:
        work.mkdir(parents=True, exist_ok=True)
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        was_disabled = are_progress_bars_disabled()
        if not terminal:
            disable_progress_bars()
        try:
            folder = snapshot_download(name, allow_patterns=patterns, cache_dir=str(work), endpoint=endpoint,
                                       etag_timeout=TIMEOUT_S)
        finally:
            if not terminal and not was_disabled:
                enable_progress_bars()
        _verify(Path(folder), info, patterns, name, fieldname)
        _move_into_place(work / _repo_folder(name), cache / _repo_folder(name))
    except ConfigError:
        raise
    except OSError as e:
        raise ConfigError(f"{fieldname}: fetching {name!r} into {cache} failed ({e.strerror or e}); "
                          "nothing was kept") from None
    except Exception as e:  # noqa: BLE001 (the hub went away mid-way, a bad file, ...)
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"{fieldname}: fetching {name!r} from {endpoint} failed ({type(e).__name__}: "
                          f"{text[:200]}); nothing was kept") from None
    finally:
        if lines is not None:
            lines.close()
        shutil.rmtree(work, ignore_errors=True)
    if not in_cache(name, what):
        raise ConfigError(f"{fieldname}: {name!r} on {endpoint} has no "
                          f"{'config.json and weights' if what == 'model' else 'tokenizer files'} "
                          "that transformers can load")
    return _snapshot(name)


def fetch(wanted: Needs, progress: bool | None = None) -> list[str]:
    """Fetch every missing input of ``wanted``; returns one line per thing fetched (empty: all here)."""
    from metaocl.data import download

    done = []
    terminal = sys.stderr.isatty() if progress is None else progress
    for source in wanted.data:
        if download.present(source):
            continue
        print(f"metaocl: fetching {source} data into {download.data_home()}", file=sys.stderr, flush=True)
        where = download.download(source, progress=terminal)
        done.append(f"{source}: {where}")
    for name, what in wanted.models.items():
        if in_cache(name, what):
            continue
        folder = fetch_model(name, what, progress=terminal, fieldname=wanted.fields.get(name, "model.name"))
        done.append(f"{name}: {folder}")
    return done


def _fetch_remote(wanted: Needs) -> list[str]:
    """The fetch as it runs in a Ray task on a node of the cluster (its own cache and endpoint)."""
    return fetch(wanted, progress=False)


def fetch_for(sweeps, address_is_cluster: bool = False, no_fetch: bool = False) -> dict[str, str]:
    """Fetch what ``sweeps`` need, here or (``address_is_cluster``, after ``ray.init``) as one Ray task
    on a node, into the cache the nodes share. Returns the environment the trials run with."""
    if no_fetch or hub_offline():
        return dict(OFFLINE_ENV)
    return fetch_needs(sweep_needs(sweeps), address_is_cluster)


def fetch_needs(wanted: Needs, address_is_cluster: bool = False, no_fetch: bool = False) -> dict[str, str]:
    """:func:`fetch_for` for what :func:`needs` found."""
    if no_fetch or hub_offline() or wanted.empty():
        return dict(OFFLINE_ENV)
    if not address_is_cluster:
        fetch(wanted)
        return dict(OFFLINE_ENV)
    import ray

    task = ray.remote(num_cpus=0, max_retries=0)(_fetch_remote).options(
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "0"}})
    ref = task.remote(wanted)
    started = time.monotonic()
    print("metaocl: fetching the sweep's inputs on a node of the cluster, into the cache every node mounts",
          file=sys.stderr, flush=True)
    while True:
        ready, _ = ray.wait([ref], timeout=LINE_EVERY_S)
        if ready:
            break
        print(f"metaocl: still fetching on the cluster, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    try:
        for line in ray.get(ref):
            print(f"metaocl: fetched {line}", file=sys.stderr, flush=True)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if isinstance(getattr(e, "cause", None), ConfigError) else None
        if cause is not None:
            raise ConfigError(str(cause)) from None
        raise ConfigError(f"fetching on the cluster failed: {str(e).strip().splitlines()[-1]}") from None
    return dict(OFFLINE_ENV)


def use_trial_env(env: dict[str, str]) -> Callable[[], None]:
    """Put the trials' environment in place in this process (``metaocl run``, and the local Ray
    instance a sweep starts, whose workers inherit it), also where huggingface_hub read it at import;
    returns the function that restores what was there."""
    import huggingface_hub.constants as c

    before = {k: os.environ.get(k) for k in env}
    offline_before = c.HF_HUB_OFFLINE
    os.environ.update(env)
    c.HF_HUB_OFFLINE = hub_offline()

    def restore() -> None:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        c.HF_HUB_OFFLINE = offline_before

    return restore
