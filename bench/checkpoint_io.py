"""Trial checkpoints written through Ray (before) vs written once into trial storage (now), one trial.

    nice -n 10 python bench/checkpoint_io.py                 # the quickstart model, 4 checkpoints per trial
    nice -n 10 python bench/checkpoint_io.py --width 256 --repeats 3
    nice -n 10 python bench/checkpoint_io.py --tiny          # the small version (tests)
    nice -n 10 python bench/checkpoint_io.py --tiny --width 512 --repeats 2   # small data, a 3 MB-weights model

One set-inclusion trial (``metaocl.experiments.set_inclusion.run``, the staged skeleton, checkpoints
after every epoch: ``train.checkpoint_minutes=0``) runs twice on the same config, alternating, with
the trial storage a folder on this machine's disk:

- **before**: the worker's reporter of the previous version: ``torch.save`` into a temporary folder on
  the worker's disk, then Ray's own copy of that folder into storage (``tune.report(checkpoint=
  Checkpoint.from_directory(...))`` ends in ``ray.train._internal.storage._pyarrow_fs_copy_files``,
  called here as Ray calls it), a new ``checkpoint_N`` folder per checkpoint, kept until the pruner
  deleted the old ones;
- **now**: :class:`metaocl.experiments.checkpoints.TrialCheckpoints`, the reporter's store in a sweep:
  ``torch.save`` streamed straight into ``metaocl/checkpoints/<trial>/``, the record switched, the
  previous checkpoint deleted.

Per trial: checkpoints, bytes the checkpoint code wrote (worker disk + storage), bytes written to
storage, files left in storage at the end, seconds writing checkpoints (``perf/checkpoint_s``), and
the process's writes as the kernel counts them while the trial ran (``/proc/self/io``:
``write_bytes``, what it dirtied towards the disk; ``cancelled_write_bytes``, of that, what was
deleted before it reached the disk: the temporary copy, when the page cache held it). Both sides restore the same
way; the results must be identical metric for metric (checked).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def io_counts() -> dict[str, int] | None:
    """``/proc/self/io``: ``write_bytes`` (bytes this process dirtied towards the disk) and
    ``cancelled_write_bytes`` (of those, dropped before reaching it: a file deleted first)."""
    try:
        return {k: int(v) for k, v in (line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())}
    except (OSError, ValueError):
        return None


class Reporter:
    interactive = False

    def __init__(self):
        self.rows: list[dict] = []
        self.local_bytes = self.storage_bytes = 0

    def __call__(self, metrics):
        self.rows.append(dict(metrics))


class RayWayReporter(Reporter):
    """The previous version's ``TuneReporter.save_checkpoint``, with Ray's persisting step spelled out."""

    def __init__(self, storage: Path):
        super().__init__()
        self.storage, self.index = storage, 0

    def save_checkpoint(self, state):
        import pyarrow.fs as pafs
        import torch
        from ray.train._internal.storage import _pyarrow_fs_copy_files

        with tempfile.TemporaryDirectory(prefix="metaocl-ckpt-") as d:  # the worker's local disk
            torch.save(state, Path(d) / "state.pt")
            size = (Path(d) / "state.pt").stat().st_size
            destination = self.storage / f"checkpoint_{self.index:06d}"  # Ray: StorageContext.checkpoint_fs_path
            fs = pafs.LocalFileSystem()
            fs.create_dir(str(destination))
            _pyarrow_fs_copy_files(d, str(destination), source_filesystem=fs, destination_filesystem=fs)
        self.index += 1
        self.local_bytes += size
        self.storage_bytes += size
        return size


class StoreReporter(Reporter):
    """What a sweep's worker does now (``TuneReporter(TrialCheckpoints(...))``), reports kept here."""

    def __init__(self, exp_dir: Path, trial_id: str):
        super().__init__()
        from metaocl.sweep.worker import TuneReporter

        from metaocl.experiments.checkpoints import TrialCheckpoints

        self.tune = TuneReporter(TrialCheckpoints(str(exp_dir), trial_id))

    def save_checkpoint(self, state):
        size = self.tune.save_checkpoint(state)
        self.storage_bytes += size
        return size


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def one_side(side: str, config, folder: Path) -> dict:
    from metaocl.experiments import set_inclusion

    storage = folder / side / "storage"
    storage.mkdir(parents=True)
    reporter = RayWayReporter(storage / "trainable_00000") if side == "before" else StoreReporter(storage, "s0")
    io0, t0 = io_counts(), time.perf_counter()
    final = set_inclusion.run(config, reporter)
    seconds, io1 = time.perf_counter() - t0, io_counts()
    left = files_under(storage)
    return {
        "side": side, "checkpoints": int(final["perf/checkpoints"]), "checkpoint_s": final["perf/checkpoint_s"],
        "checkpoint_mb": final["perf/checkpoint_bytes"] / 1e6,
        "written_mb": (reporter.local_bytes + reporter.storage_bytes) / 1e6,
        "storage_written_mb": reporter.storage_bytes / 1e6,
        "storage_files_left": len(left), "storage_mb_left": sum(p.stat().st_size for p in left) / 1e6,
        "process_write_mb": None if not (io0 and io1) else (io1["write_bytes"] - io0["write_bytes"]) / 1e6,
        "process_cancelled_mb": None if not (io0 and io1) else
        (io1["cancelled_write_bytes"] - io0["cancelled_write_bytes"]) / 1e6,
        "trial_s": seconds, "final": {k: v for k, v in final.items() if not k.startswith("perf/")},
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=None, help="model.hidden_size (intermediate 4x); default: 64 (quickstart), --tiny 32")
    ap.add_argument("--epochs", type=int, default=5, help="stage-1 epochs (a checkpoint after each but the last)")
    ap.add_argument("--repeats", type=int, default=1, help="alternate before/now this many times")
    ap.add_argument("--tiny", action="store_true", help="a 100-variable dataset, one layer (tests; a wider model with --width)")
    ap.add_argument("--folder", type=Path, default=None, help="where the storage folders go (default: a temporary one)")
    args = ap.parse_args(argv)

    import ray.train._internal.storage  # noqa: F401  (imported before any timing)
    import torch

    from metaocl.config import load_sweep

    torch.set_num_threads(1)
    width = args.width or (32 if args.tiny else 64)
    overrides = ["train.checkpoint_minutes=0", f"train.stage1_epochs={args.epochs}", "eval.every=1",
                 f"model.hidden_size={width}", f"model.intermediate_size={4 * width}"]
    if args.tiny:
        overrides += ["data.n_variables=100", "data.test_questions=4", "model.num_hidden_layers=1"]
    config = load_sweep("quickstart", overrides=overrides).trials()[0].config
    root = args.folder or Path(tempfile.mkdtemp(prefix="metaocl-bench-ckpt-"))
    rows = []
    for r in range(args.repeats):
        for side in ("before", "now"):
            rows.append(one_side(side, config, root / f"r{r}"))
    before = [r for r in rows if r["side"] == "before"]
    now = [r for r in rows if r["side"] == "now"]
    assert all(r["final"] == rows[0]["final"] for r in rows), "the two ways ended differently"
    def best(side_rows, key):
        return min(r[key] for r in side_rows)

    out = {"folder": str(root), "rows": rows}
    print(f"date: {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; cpu: {platform.processor() or platform.machine()}; "
          f"load average: {os.getloadavg()[0]:.1f}")
    print(f"model: set inclusion, hidden {width}, {config.model.num_hidden_layers} layers; {args.epochs} epochs; "
          f"repeats {args.repeats} (per side: the smallest over repeats)")
    keys = ("checkpoints", "checkpoint_mb", "written_mb", "storage_written_mb", "storage_files_left", "storage_mb_left",
            "process_write_mb", "process_cancelled_mb", "checkpoint_s")
    print(f"{'per trial':22s} {'before':>12s} {'now':>12s} {'now/before':>11s}")
    for key in keys:
        b, n = best(before, key), best(now, key)
        if b is None or n is None:
            continue
        ratio = f"{n / b:.2f}" if b else "-"
        out[f"ratio_{key}"] = n / b if b else None
        print(f"{key:22s} {b:12.3f} {n:12.3f} {ratio:>11s}")
    print("same results, metric for metric: yes")
    return out


if __name__ == "__main__":
    main()
