"""How much of a set-inclusion sweep's seed-to-seed spread in the meta-OCL gap is test sampling.

    metaocl sweep quickstart                                     # leaves metaocl-results/metaocl-quickstart-*/
    python scripts/gap_noise.py quickstart metaocl-results/metaocl-quickstart-*/

For every trial of the sweep that has a checkpoint under RESULTS (the experiment folder of one sweep
invocation: its metaocl/checkpoints/, or Ray's trial folders of older versions), the trial's last checkpoint is loaded into the model, the trial's dataset regenerated
from its seed, and every test question of the four subsets answered again (the engine's argmax at
'=', or true vs false if the trial was scored so). Per trial it prints the accuracies, the meta-OCL
gap (d1consis - d2consis) and the gap's *within-seed* standard error: the sampling error from the
finite set of definition-only variables and their test questions (variance of per-variable accuracy
/ number of variables, per subset), and of that the part from the finite number of questions per
variable (binomial). At the end it sets the
root-mean-square within-seed SE against the between-seed SD of the gap: their squared ratio is the
share of the spread over seeds that more test questions or more definition-only variables would
remove; the rest is the training itself (docs/cpu-meta-ocl.md, issue 16).
"""

from __future__ import annotations

import argparse
import glob
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from metaocl.config import ConfigError, load_sweep

SUBSETS = ("qd1consis", "qd2incons", "d1consis", "d2consis")


def per_variable_accuracy(model, tok, questions, scoring: str = "argmax",
                          batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, number of test questions) per variable, scored by the engine as the trial's ``eval.scoring``."""
    from metaocl.engine import set_inclusion as engine

    es = engine.EvalSet.from_questions(tok, questions)
    correct, _ = engine.score(model, es, tok, scoring, batch_size, "cpu")
    by_var: dict[str, list[bool]] = defaultdict(list)
    for q, c in zip(questions, correct.tolist()):
        by_var[q.words[0]].append(bool(c))
    return np.array([np.mean(v) for v in by_var.values()]), np.array([len(v) for v in by_var.values()])


def gap_with_se(acc1: np.ndarray, n1: np.ndarray, acc2: np.ndarray, n2: np.ndarray) -> tuple[float, float, float]:
    """(gap, within-seed SE, the SE's binomial part) of mean(acc1) - mean(acc2) over variables."""
    se = np.sqrt(acc1.var(ddof=1) / len(acc1) + acc2.var(ddof=1) / len(acc2))
    binom = np.sqrt((acc1 * (1 - acc1) / np.maximum(n1 - 1, 1)).mean() / len(acc1)
                    + (acc2 * (1 - acc2) / np.maximum(n2 - 1, 1)).mean() / len(acc2))
    return float(acc1.mean() - acc2.mean()), float(se), float(binom)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", help="the sweep (name or YAML path) the results belong to")
    ap.add_argument("results", type=Path, help="Ray Tune's folder of one invocation (metaocl-results/metaocl-NAME-*)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="the --set overrides the sweep ran with")
    args = ap.parse_args(argv)
    try:
        sweep = load_sweep(args.sweep, overrides=args.overrides)
    except ConfigError as e:
        print(f"gap_noise: error: {e}", file=sys.stderr)
        return 2
    if sweep.kind != "set_inclusion":
        print(f"gap_noise: error: {args.sweep}: a {sweep.kind} sweep; this reads set_inclusion trials", file=sys.stderr)
        return 2
    trials = {t.trial_id: t for t in sweep.trials()}
    import torch

    from metaocl.experiments.checkpoints import TrialCheckpoints

    found = {}  # trial id -> what loads its last checkpoint
    for tid in trials:  # the sweep's own checkpoint store (metaocl/checkpoints/<trial>/)
        store = TrialCheckpoints(str(args.results.resolve()), tid)
        if store.latest() is not None:
            found[tid] = store.load
    for d in sorted(glob.glob(str(args.results / "trainable_*"))):  # folders of older versions: Ray's checkpoints
        m = re.search(r"trial_id_(\w+?)_kind", d)
        ckpts = sorted(glob.glob(f"{d}/checkpoint_*/state.pt"))
        if m and m.group(1) in trials and m.group(1) not in found and ckpts:
            found[m.group(1)] = lambda path=ckpts[-1]: torch.load(path, map_location="cpu", weights_only=False)
    if len(found) < 2:
        print(f"gap_noise: error: {args.results}: checkpoints of fewer than 2 trials of {sweep.name}", file=sys.stderr)
        return 2

    from metaocl.data.set_inclusion import generate
    from metaocl.engine import set_inclusion as engine

    torch.set_num_threads(1)
    gaps, ses, binoms = [], [], []
    for tid, load in found.items():
        cfg = trials[tid].config
        state = load()
        ds = generate(cfg.data, cfg.seed)
        tok = engine.build_tokenizer(ds.vocab)
        model = engine.build_model(cfg.model, tok.get_vocab_size())
        model.load_state_dict(state["model"])
        acc = {s: per_variable_accuracy(model, tok, ds.test_qa[s], cfg.eval.scoring) for s in SUBSETS}
        gap, se, binom = gap_with_se(*acc["d1consis"], *acc["d2consis"])
        gaps.append(gap), ses.append(se), binoms.append(binom)
        print(f"{tid} (seed {cfg.seed}, epoch {state.get('epoch_global', state.get('epoch'))}): acc "
              + " / ".join(f"{acc[s][0].mean():.3f}" for s in SUBSETS)
              + f"; meta-OCL {gap:+.3f}, within-seed SE {se:.3f} (questions per variable: {binom:.3f})")
    sd = float(np.std(gaps, ddof=1))
    rms_se = float(np.sqrt(np.mean(np.square(ses))))
    print(f"{len(gaps)} trials: meta-OCL mean {np.mean(gaps):+.3f}, between-seed SD {sd:.3f}; "
          f"RMS within-seed SE {rms_se:.3f} (questions: {np.sqrt(np.mean(np.square(binoms))):.3f})")
    share = f"{min(1.0, rms_se ** 2 / sd ** 2):.2f}" if sd > 0 else "n/a (the gap is the same in every trial)"
    print(f"share of the seed-to-seed variance that is test sampling: {share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
