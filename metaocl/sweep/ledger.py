"""The resume ledger: small files in the Ray experiment folder that trials and the driver both read.

``STORAGE/<experiment>-<parent run>/metaocl/`` (a local path or an object-store URI, via pyarrow):

- ``sweep.json``: the MLflow parent run, the tracking URI, the trial-set fingerprint, and the
  arguments needed to resume (``--smoke``, ``--seeds``, ``--set``);
- ``finished/<trial>``: written by the driver before it marks the trial's MLflow run FINISHED;
- ``attempts/<trial>-<ns>-<pid>.json``: written by each attempt of a trial (node, pid, checkpoint,
  the GPU share Ray gave it).

Ray saves its experiment state only every few seconds, so after ``kill -9`` of the driver it may
think a finished trial unfinished; ``finished/`` makes such a trial return at once instead of
training again. Also here: the fingerprint of a trial set, finding the sweep to ``--resume``, and the
exact command that resumes it. Imported by Ray workers: no MLflow, no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING

from metaocl.config import ConfigError

if TYPE_CHECKING:
    from metaocl.config import Sweep, Trial

STATE_DIR = "metaocl"  # our files inside the Ray experiment folder


def default_storage() -> str:
    """Where Ray keeps trial state: ``$METAOCL_RESULTS`` (a folder or a storage URI) or ``./metaocl-results``."""
    value = os.environ.get("METAOCL_RESULTS")
    if value and is_uri(value):
        return value.rstrip("/")
    return str(Path(value or Path.cwd() / "metaocl-results").resolve())


def is_uri(path: str) -> bool:
    return "://" in path


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def filesystem(path: str):
    """``(pyarrow FileSystem, path in it)`` of a local path (made absolute) or a storage URI."""
    from pyarrow import fs as pafs

    return pafs.FileSystem.from_uri(path if is_uri(path) else str(Path(path).resolve()))


class Ledger:
    """Finished-trial markers and per-attempt records under ``EXPERIMENT/metaocl/`` (local path or URI)."""

    def __init__(self, exp_dir: str):
        self.exp_dir = exp_dir
        self.fs, self.root = filesystem(exp_dir)
        self.root = join(self.root, STATE_DIR)

    def _write(self, rel: str, text: str) -> None:
        path = join(self.root, rel)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as f:
            f.write(text.encode())

    def _read(self, rel: str) -> str | None:
        from pyarrow import fs as pafs

        path = join(self.root, rel)
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            return f.read().decode()

    def _list(self, rel: str) -> list[str]:
        from pyarrow import fs as pafs

        sel = pafs.FileSelector(join(self.root, rel), allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(sel) if info.type == pafs.FileType.File)

    def write_state(self, state: dict) -> None:
        self._write("sweep.json", json.dumps(state, indent=1, sort_keys=True))

    def read_state(self) -> dict | None:
        text = self._read("sweep.json")
        return json.loads(text) if text else None

    def mark_finished(self, trial_id: str) -> None:
        self._write(f"finished/{trial_id}", str(time.time()))

    def finished(self) -> set[str]:
        return set(self._list("finished"))

    def is_finished(self, trial_id: str) -> bool:
        return self._read(f"finished/{trial_id}") is not None

    def log_attempt(self, trial_id: str, record: dict) -> None:
        self._write(f"attempts/{trial_id}-{time.time_ns()}-{os.getpid()}.json", json.dumps(record, sort_keys=True))


def fingerprint(trials: dict[str, Trial]) -> str:
    """Identifies the trial set: a resume must run exactly the trials the sweep started with."""
    return hashlib.sha256(json.dumps(trial_configs(trials), sort_keys=True).encode()).hexdigest()[:16]


def trial_configs(trials: dict[str, Trial]) -> dict[str, dict]:
    """Each trial's whole configuration as JSON values (what ``sweep.json`` keeps beside the fingerprint)."""
    return json.loads(json.dumps({tid: t.config_dict() for tid, t in sorted(trials.items())}, default=str))


def same_trials(trials: dict[str, Trial], state: dict) -> tuple[bool, list[str]]:
    """Whether ``trials`` are the ones the sweep of ``state`` started with: the same fingerprint, or
    (a sweep started by an earlier metaocl) the same configurations apart from fields added since,
    each at its default (an added field's default keeps what the code did before it). Returns
    ``(same, added)`` with the added fields' dotted names. A changed value, a removed field or another
    trial set is not the same; nor is anything against a ``sweep.json`` without its configurations."""
    if state.get("fingerprint") == fingerprint(trials):
        return True, []
    stored = state.get("configs")
    if not isinstance(stored, dict) or set(stored) != set(trials):
        return False, []
    from metaocl.config import to_dict

    now = trial_configs(trials)
    added: set[str] = set()
    defaults: dict[type, dict] = {}  # one per config class (a sweep has one kind), not one per trial
    for tid, t in trials.items():
        cls = type(t.config)
        if cls not in defaults:
            defaults[cls] = json.loads(json.dumps(to_dict(cls()), default=str))
        if not _same_but_added(stored[tid], now[tid], defaults[cls], "", added):
            return False, []
    return True, sorted(added)


def _same_but_added(old, new, default, where: str, added: set[str]) -> bool:
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return old == new
    if set(old) - set(new):  # a field that is gone
        return False
    for key, value in new.items():
        name = f"{where}{key}"
        sub_default = default.get(key) if isinstance(default, dict) else None
        if key not in old:
            if value != sub_default:
                return False
            added.add(name)
        elif not _same_but_added(old[key], value, sub_default, name + ".", added):
            return False
    return True


def experiment_prefix(sweep: Sweep) -> str:
    return sweep.experiment_name.replace("/", "-") + "-"


def find_resumable(sweep: Sweep, storage: str) -> tuple[str, dict]:
    """The newest Ray experiment folder of this sweep under ``storage`` and its ``sweep.json``."""
    from pyarrow import fs as pafs
    from ray import tune

    fs, root = filesystem(storage)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    found = []
    for info in infos:
        if info.type == pafs.FileType.Directory and info.base_name.startswith(experiment_prefix(sweep)):
            exp_dir = join(storage, info.base_name) if is_uri(storage) else str(Path(storage).resolve() / info.base_name)
            state = Ledger(exp_dir).read_state()
            if state and state.get("experiment") == sweep.experiment_name:
                found.append((state.get("created", 0), exp_dir, state))
    if not found:
        raise ConfigError(f"--resume: no started sweep {sweep.experiment_name} under {storage} "
                          f"(run it without --resume first, or pass the --storage it used)")
    _, exp_dir, state = max(found)
    if not tune.Tuner.can_restore(exp_dir):
        raise ConfigError(f"--resume: {exp_dir} holds no Ray experiment state to restore (the sweep was stopped "
                          "before its first trial started); run it without --resume")
    return exp_dir, state


def resume_command(sweep: Sweep, storage: str | None, address: str | None, tracking: str | None = None) -> str:
    """The exact command that continues this sweep (copy-paste): same file, --smoke, --seeds, --set,
    and the --storage / --address / --tracking-uri given (None: the default, left out)."""
    from metaocl.config import sweeps_dir

    named = sweep.path.resolve().parent == sweeps_dir().resolve()
    parts = ["metaocl", "sweep", sweep.name if named else str(sweep.path)]
    if sweep.smoke:
        parts.append("--smoke")
    if sweep.seeds_option is not None:
        parts += ["--seeds", str(sweep.seeds_option)]
    for text in sweep.overrides:
        parts += ["--set", text]
    parts.append("--resume")
    if storage:
        parts += ["--storage", storage]
    if address:
        parts += ["--address", address]
    if tracking:
        parts += ["--tracking-uri", tracking]
    return shlex.join(parts)
