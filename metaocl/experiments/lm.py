"""One language-model finetuning trial: build the dataset, finetune stage by stage, evaluate every epoch.

Run one trial in the foreground (no Ray)::

    metaocl run two_stage --smoke                      # tiny model, generated CVDB-shaped sample
    metaocl run two_stage --set model.name=EleutherAI/pythia-410m

Stages follow ``data.stages`` (single: everything; two_stage: X1 then X2 definitions;
three_stage: X1 definitions, X1 QA, X2 definitions), with ``train.epochs[k]`` epochs each and a
fresh optimizer and schedule per stage; stage k+1 continues from the weights at the end of stage k.

Reported after every evaluated epoch (docs/architecture.md): ``em/{split}`` and ``loss/{split}`` for
every eval split, ``train/loss``, ``perf/tokens_per_s``, ``perf/examples_per_s``, ``epoch`` (global,
across stages), ``stage``, and the gaps

- ``gap/ocl`` = em/qd1consis - em/qd2incons, ``gap/meta_ocl`` = em/d1consis - em/d2consis;
- per entity-attribution template T: ``gap/ocl_ent_T`` = em/ent_T_qd1consis - em/ent_T_qd2incons_defent
  (the entity its definition named, the paper's Fig. 2b comparison) and
  ``gap/meta_ocl_ent_T`` = em/ent_T_d1consis - em/ent_T_d2consis.

Seeds: the dataset, the initial weights and stage 1 use ``train.stage1_seed`` (default: the trial
seed); later stages shuffle with the trial seed and, with ``data.resplit_x2_per_seed``, see the X2
entities split into d1/d2/d3/no-definition by it (:func:`engine_dataset`). With
``train.stage1_cache`` the end-of-stage-1 model (and its reported history) is saved under a key of
everything that determines it, so trials that differ only in ``seed`` branch their later stages from
one stage-1 run, as the paper's 3-5 stage-2 seeds per stage-1 seed did.

Stages, evaluation cadence and checkpoints are :mod:`metaocl.experiments.staged`'s (``train.checkpoint_minutes``:
inside a stage every N minutes, and at every stage boundary); :class:`LMTrial` supplies the data,
model, optimizer, one epoch and the evaluation. A checkpoint from stage 2 on bypasses the stage-1
cache (it holds the weights already); one from stage 1 continues stage 1, which is then saved to the
cache as usual.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from metaocl.config import ConfigError
from metaocl.configs.lm import BUILTIN_MODEL_NAMES, LMConfig
from metaocl.configs.lm_data import ENTITY_TEMPLATES
from metaocl.experiments import Reporter, staged
from metaocl.experiments.base import IN_DISTRIBUTION_PAIRS, ExperimentKind, SharedStages, entity_pairs
from metaocl.experiments.staged import Stage

if TYPE_CHECKING:
    import torch

    from metaocl.engine import lm as engine
    from metaocl.engine.lm_models import LoadedModel


def required_inputs(config: LMConfig) -> list[str]:
    """What a trial reads from outside: the CVDB / T-REx files, and the model (and tokenizer) name.

    A model name is fine when it is a builtin tiny model, a local folder, a Pythia architecture
    trained from scratch (embedded), or a Hugging Face name that is in the local cache. A hub name
    not in the cache is refused with ``HF_HUB_OFFLINE=1`` (the trial could not load it); online it is
    asked of the hub (``$HF_ENDPOINT``, a few seconds at most): a name the hub does not know, or a hub
    that does not answer, is refused here, before anything is written (:mod:`metaocl.fetch` fetches
    what the hub has).
    """
    out = []
    data = config.data
    if data.source in ("cvdb", "trex"):
        from metaocl.data import cvdb, trex

        path = Path(data.path) if data.path else (cvdb.default_path() if data.source == "cvdb" else trex.default_path())
        if not path.exists():
            out.append(f"data.path: {data.source} data not found at {path} "
                       f"(run `metaocl data download {data.source}` or set data.path)")
    elif data.path:  # the *_sample sources generate their own file
        out.append(f"data.path: source {data.source!r} generates its own file; leave data.path empty")
    names = hub_names(config)
    for field, name, what in names:
        out += _name_problems(field, name, what)
    if config.model.name not in BUILTIN_MODEL_NAMES and not out:
        out += _architecture_problems(config)
    return out


def hub_names(config: LMConfig) -> list[tuple[str, str, str]]:
    """``(field, name, what)`` for each model / tokenizer name the trial loads by name (hub or local
    folder); ``what`` is ``model`` (weights, config and tokenizer) or ``tokenizer`` (its files only).
    Builtin tiny models and the weights of an embedded Pythia architecture trained from scratch need none."""
    from metaocl.engine.lm_models import pythia_key

    m = config.model
    if m.name in BUILTIN_MODEL_NAMES:
        return []
    out = []
    embedded = m.from_scratch and pythia_key(m.name)
    if not embedded:
        out.append(("model.name", m.name, "model"))
    if m.tokenizer:
        out.append(("model.tokenizer", m.tokenizer, "tokenizer"))
    elif embedded:
        out.append(("model.name", m.name, "tokenizer"))
    return out


def _architecture_problems(config: LMConfig) -> list[str]:
    """Decoder-only or encoder-decoder, from the model's config when it is here (a local folder, the
    local Hugging Face cache, an embedded Pythia architecture), against ``model.kind`` and ``data.seq2seq``."""
    from metaocl.engine.lm_models import pythia_key

    m = config.model
    if m.from_scratch and pythia_key(m.name):
        is_seq2seq = False
    else:
        try:
            from transformers import AutoConfig

            is_seq2seq = bool(getattr(AutoConfig.from_pretrained(m.name, local_files_only=True), "is_encoder_decoder", False))
        except Exception:  # not here (the hub is asked by the trial), or not a model config: the trial says
            return []
    what = "an encoder-decoder" if is_seq2seq else "a decoder-only model"
    if m.kind != "auto" and (m.kind == "seq2seq") != is_seq2seq:
        return [f"model.kind: {m.kind!r} does not match {m.name!r}, which is {what}"]
    if config.data.seq2seq != is_seq2seq:
        return [f"data.seq2seq: must be {str(is_seq2seq).lower()} for {m.name!r} ({what})"]
    return []


def _hf_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _name_problems(field: str, name: str, what: str = "model") -> list[str]:
    """``[]`` when ``name`` can be loaded here: a local folder, or a hub name (cached, or known to the
    hub when online: see :func:`metaocl.fetch.hub_problem`)."""
    local = Path(name).expanduser()
    if local.is_dir():
        return []
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        return [f"{field}: {name!r} is neither a local folder nor a Hugging Face model name"]
    from metaocl.fetch import hub_problem, in_cache

    if in_cache(name, what):
        return []
    if not _hf_offline():
        problem = hub_problem(name)
        return [f"{field}: {problem}"] if problem else []
    return [f"{field}: {what} {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
            f"(a local folder, a builtin ({', '.join(BUILTIN_MODEL_NAMES)}), or a cached hub name)"]


def _stage_generator(seed: int, stage: int) -> torch.Generator:
    """Shuffling RNG of one stage, independent of what earlier stages consumed (so a stage-2 branch
    from a cached stage-1 model shuffles exactly as an uninterrupted run)."""
    import torch

    return torch.Generator().manual_seed(seed * 1009 + stage)


# ------------------------------------------------------------------------------------------------
# The trial
# ------------------------------------------------------------------------------------------------
def stages(config: LMConfig, branch: bool = True) -> list[Stage]:
    """One :class:`Stage` per ``data.stages`` entry: ``train.epochs[k]`` epochs, evaluated every
    ``eval.every``; seeded from the stage-1 seed (the shared stages, :func:`stage1_cache.shared_stages`)
    or the trial seed (the last stage), each stage independently of what earlier stages consumed (so a
    branch from a stored stage-1 model continues exactly as an uninterrupted run). ``branch``: what a
    trial's own reports follow, stage 1 cut at ``train.stage2_from_epoch``; ``False``: stage 1 whole
    (what a stage-1 unit trains)."""
    from metaocl.experiments.stage1_cache import shared_stages

    shared, cut = shared_stages(config), config.stage2_start()  # cptN: resolved in the trial
    return [Stage(number=k, units=cut if (k == 1 and branch and cut is not None) else n, eval_every=config.eval.every,
                  seed=(config.stage1_seed if k <= shared else config.seed) * 1009 + k)
            for k, n in enumerate(config.epochs, start=1)]


def n_reports(config: LMConfig) -> int:
    """Evaluations of one trial run whole: every ``eval.every`` epochs and at the end of each stage."""
    return staged.n_reports(stages(config))


def _setup(config: LMConfig):
    """Threads, device, the stage-1 seed's global RNG, and the dataset of the shared stages and (when
    the trial seed re-splits X2) of the last stage."""
    from transformers.utils import logging as hf_logging

    from metaocl.runtime import resolve_device, seed_everything, set_threads

    hf_logging.disable_progress_bar()  # no "Loading weights" bars in trial logs
    set_threads()
    device = resolve_device(config.device)
    seed_everything(config.stage1_seed)
    dataset = engine_dataset(config)
    resplit = config.data.n_stages > 1 and config.data.resplit_x2_per_seed and config.seed != config.stage1_seed
    later = engine_dataset(config, stage=2) if resplit else None  # what the last stage sees, when it differs
    return device, dataset, later


def resolve_stage2_start(config: LMConfig, dataset) -> LMConfig:
    """``config`` with ``train.stage2_from_epoch: cptN`` replaced by the stage-1 epoch it names, from
    the built stage-1 training split (:meth:`LMConfig.stage2_start`); said once in the trial's log."""
    label = config.train.stage2_from_epoch
    if not isinstance(label, str):
        return config
    import dataclasses

    rows = len(dataset["train_1"])
    epoch = config.stage2_start(rows)
    print(f"stage 2 starts from stage-1 epoch {epoch or config.epochs[0]}: the authors' {label} run "
          f"({rows:,} stage-1 rows, batch {config.train.batch_size} with accumulation {config.train.grad_accumulation}, "
          f"their checkpoints every {config.train.authors_save_each_epochs} epochs sorted as strings)",
          flush=True)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, stage2_from_epoch=epoch))


def run(config: LMConfig, reporter: Reporter) -> dict[str, float]:
    """The whole trial in this process; with ``train.stage1_cache``, the shared stages come from (or
    go into) the cache, under its lock (see :mod:`metaocl.experiments.stage1_cache`)."""
    from metaocl.experiments import checkpoints, stage1_cache

    device, dataset, later = _setup(config)
    config = resolve_stage2_start(config, dataset)
    shared = stage1_cache.shared_stages(config)
    cache = stage1_cache.folder(config) if shared else None
    history: list[dict] = []
    saved = checkpoints.restore(reporter)  # a retried Ray trial: where its last attempt stopped
    if cache is None or (saved is not None and saved["stage"] > shared):
        loaded = _load(config, dataset)  # with a checkpoint, its weights replace these
        stage1_cache.STATS["stage1_trainings"] += int(saved is None and shared > 0)
        return train_stages(config, reporter, dataset, loaded, device, history=history, saved=saved, later=later)
    with stage1_cache.locked(cache):  # the first trial with this key trains the shared stages; the rest wait
        if cache.is_dir():  # (a checkpoint of ours from those stages is superseded: the cache is the same model)
            loaded, history = stage1_cache.load(cache, config)
            for row in history:
                reporter(row)
        else:
            loaded = _load(config, dataset)
            stage1_cache.STATS["stage1_trainings"] += 1
            train_stages(config, reporter, dataset, loaded, device, history=history, saved=saved, last=shared)
            stage1_cache.save(cache, loaded, history)
    return train_stages(config, reporter, dataset if later is None else later, loaded, device, history=history,
                        first=shared + 1)


def run_stage1(config: LMConfig, reporter: Reporter, store: str) -> dict[str, float]:
    """A stage-1 unit of a sweep: the shared stages once for every trial of this stage-1 seed, each
    evaluation reported once; the model (at ``train.stage2_from_epoch``, else at the end) and the
    reports up to it go to ``store`` in the sweep's trial storage, where the branching trials find it."""
    from metaocl.experiments import checkpoints, stage1_cache

    device, dataset, _ = _setup(config)
    config = resolve_stage2_start(config, dataset)
    shared = stage1_cache.shared_stages(config)
    loaded = _load(config, dataset)
    stage1_cache.STATS["stage1_trainings"] += 1
    cut = config.stage2_start()
    trial = LMTrial(config, reporter, dataset, loaded, device, publish=(store, cut) if cut is not None else None)
    history: list[dict] = []
    final = staged.run(trial, stages(config, branch=False), reporter,
                       staged.CheckpointPolicy(config.train.checkpoint_minutes),
                       saved=checkpoints.restore(reporter), history=history, last=shared)
    if cut is None:
        stage1_cache.publish_model(store, loaded)
    stage1_cache.publish_complete(store, [r for r in history if cut is None or r["epoch"] <= cut])
    return final


def run_branch(config: LMConfig, reporter: Reporter, store: str) -> dict[str, float]:
    """A trial that branches from the stage-1 unit at ``store``: only its own (last) stage is trained
    and reported; its ``epoch`` continues after the unit's (MLflow joins the two histories). Without a
    complete unit at ``store`` (it failed for good) the trial trains everything itself (:func:`run`)."""
    from metaocl.experiments import checkpoints, stage1_cache

    if not stage1_cache.complete(store):
        return run(config, reporter)
    device, dataset, later = _setup(config)
    config = resolve_stage2_start(config, dataset)
    shared = stage1_cache.shared_stages(config)
    loaded, history = stage1_cache.fetch(store, config)  # a checkpoint of this trial replaces its weights
    return train_stages(config, reporter, dataset if later is None else later, loaded, device, history=history,
                        first=shared + 1, saved=checkpoints.restore(reporter))


def train_stages(config: LMConfig, reporter: Reporter, dataset, loaded: LoadedModel, device: str, *,
                 first: int = 1, last: int | None = None, history: list[dict] | None = None,
                 saved: dict | None = None, later=None) -> dict[str, float]:
    """Train ``loaded`` through stages ``first..last`` (:func:`metaocl.experiments.staged.run`);
    ``history`` gets every report; returns the last. ``dataset``: what stage ``first`` sees;
    ``later``: the dataset of the last stage when it differs (X2 re-split per seed)."""
    plan = stages(config)
    trial = LMTrial(config, reporter, dataset, loaded, device, later=later,
                    epochs_before=[s.units for s in plan if s.number < first])
    return staged.run(trial, plan, reporter, staged.CheckpointPolicy(config.train.checkpoint_minutes),
                      saved=saved, history=history, first=first, last=last)


def _load(config: LMConfig, dataset) -> LoadedModel:
    """The configured model; builtin tiny models train their tokenizer on every split's text."""
    from metaocl.engine.lm_models import load_model

    texts = [t for name in dataset for t in dataset[name]["text"]]
    loaded = load_model(config.model, texts)
    if loaded.is_seq2seq != config.data.seq2seq:
        raise ConfigError(f"data.seq2seq: must be {str(loaded.is_seq2seq).lower()} for {config.model.name!r} "
                          f"({'an encoder-decoder' if loaded.is_seq2seq else 'a causal'} model)")
    return loaded


def engine_dataset(config: LMConfig, stage: int = 1):
    """The trial's dataset as ``stage`` sees it. Everything but the X2 split comes from
    ``stage1_seed``; the X2 split (``data.resplit_x2_per_seed``) from the trial seed, except in stage 1
    of a multi-stage run: it trains on X1 only and is shared by the stage-2 seeds (stage-1 cache), so
    it sees the stage-1 seed's split, as the authors' stage 1 sees seed_stage2 = 0."""
    from metaocl.data.qa import build_lm_dataset

    shared = stage == 1 and config.data.n_stages > 1
    return build_lm_dataset(config.data, config.stage1_seed, x2_seed=config.stage1_seed if shared else config.seed)


class LMTrial(staged.StagedTrial):
    """The LM kind's part of a staged trial (:mod:`metaocl.experiments.staged` runs the stages).

    ``dataset``: what the first stage run here sees; ``later``: the dataset of the last stage when it
    differs (X2 re-split per seed); ``epochs_before``: epochs of the stages trained elsewhere before
    the first one here (the global optimizer-step count starts after them); ``publish``: ``(store,
    epoch)``: write the model as it is at the end of stage-1 epoch ``epoch`` to ``store`` (a stage-1
    unit with ``train.stage2_from_epoch``).
    """

    def __init__(self, config: LMConfig, reporter: Reporter, dataset, loaded: LoadedModel, device: str, *,
                 later=None, epochs_before: list[int] = (), publish: tuple[str, int] | None = None):
        from metaocl.engine import lm as engine
        from metaocl.engine.grad_alignment import GradAlignmentMonitor

        self.config, self.reporter, self.loaded, self.device, self.later = config, reporter, loaded, device, later
        t = config.train
        self.model = loaded.model.to(device)
        if config.model.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
            self.model.config.use_cache = False
        self.use_autocast = device.startswith("cuda") and config.model.dtype == "auto"
        self._use_dataset(dataset)
        self.monitor = GradAlignmentMonitor(every_steps=t.grad_alignment_every)
        self.probes = (_alignment_probes(config, dataset, loaded, device, self.use_autocast)
                       if self.monitor.enabled else None)
        self.step_global = sum(  # optimizer steps of the stages before (a stage 1 trained elsewhere)
            engine.stage_steps(len(dataset[f"train_{s}"]), t.batch_size or len(dataset[f"train_{s}"]),
                               t.grad_accumulation, n)
            for s, n in enumerate(epochs_before, start=1))
        self.micro = t.micro_batch_size or t.batch_size
        self.publish = publish

    def _use_dataset(self, dataset) -> None:
        from metaocl.engine import lm as engine

        tok, seq2seq = self.loaded.tokenizer, self.loaded.is_seq2seq
        self.dataset = dataset
        self.eval_sets = {name: engine.encode(dataset[name], tok, seq2seq, with_prompts=True)
                          for name in dataset if not name.startswith("train_") and len(dataset[name])}

    def start_stage(self, stage: Stage) -> None:
        from metaocl.engine import lm as engine

        from metaocl.experiments.stage1_cache import shared_stages

        if stage.number > shared_stages(self.config) and self.later is not None and self.dataset is not self.later:
            # the trial seed's X2 split
            self._use_dataset(self.later)
        t, loaded = self.config.train, self.loaded
        self.train_set = engine.encode(self.dataset[f"train_{stage.number}"], loaded.tokenizer, loaded.is_seq2seq)
        batch_size = t.batch_size or len(self.train_set)  # 0 = full batch
        # the schedule spans the stage's configured epochs, also where a trial's stage 1 stops early at
        # train.stage2_from_epoch: the model there is the one a stage-1 unit hands on from its whole stage 1
        total_steps = engine.stage_steps(len(self.train_set), batch_size, t.grad_accumulation,
                                         self.config.epochs[stage.number - 1])
        self.slice_size = batch_size // t.grad_accumulation  # the authors' per-device batch
        self.optimizer, self.scheduler = engine.make_optimizer(self.model, t, total_steps)
        self.generator = _stage_generator(self.config.stage1_seed if stage.number == 1 else self.config.seed,
                                          stage.number)
        self.ctx = engine.StepContext(
            model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, device=self.device,
            pad_id=loaded.pad_id, decoder_start_id=getattr(self.model.config, "decoder_start_token_id", None),
            batch_size=batch_size, micro_batch_size=min(self.micro or self.slice_size, self.slice_size),
            auto_micro=t.micro_batch_size == 0 and self.device.startswith("cuda"), max_grad_norm=t.max_grad_norm,
            faithful_padding=t.faithful_padding, block_size=t.block_size, use_autocast=self.use_autocast,
            accumulation=engine.Accumulation(every=t.grad_accumulation, max_steps=total_steps),
            label_block_size=self.config.resolved_label_block_size() if loaded.is_seq2seq else 0)

    def _after_step(self, _: int) -> None:
        self.step_global += 1
        p = self.probes
        if p is not None and self.monitor.due(self.step_global):
            self.monitor.measure(self.model, p.loss_fn, p.def1, p.def2, p.qa, step=self.step_global)

    def train_unit(self, stage: Stage, unit: int) -> dict[str, float]:
        from metaocl.engine import lm as engine

        stats = engine.train_one_epoch(self.ctx, self.train_set, self.generator,
                                       _progress(self.reporter, stage.number, unit), self._after_step)
        self.micro = self.ctx.micro_batch_size  # keep what auto found
        return {"train/loss": stats.loss, "perf/tokens_per_s": stats.tokens_per_s,
                "perf/examples_per_s": stats.examples_per_s}

    def evaluate(self, stage: Stage) -> dict[str, float]:
        from metaocl.engine import lm_evaluate as ev

        c, loaded = self.config, self.loaded
        kwargs = dict(max_new_tokens=c.eval.resolved_max_new_tokens(c.data.source), device=self.device,
                      is_seq2seq=loaded.is_seq2seq, batch_size=c.eval.batch_size, use_autocast=self.use_autocast)
        if c.eval.method == "fast":  # every split at once: their greedy continuations pooled
            results = ev.evaluate_splits(self.model, loaded.tokenizer, self.eval_sets, **kwargs)
        else:
            results = {name: ev.evaluate_split_generate(self.model, loaded.tokenizer, enc, **kwargs)
                       for name, enc in self.eval_sets.items()}
        metrics = {}
        for name, result in results.items():
            metrics[f"em/{name}"] = result.em
            metrics[f"loss/{name}"] = result.loss
        metrics.update(KIND.gaps(metrics))
        metrics.update(self.monitor.epoch_metrics())
        return metrics

    def unit_done(self, stage: Stage, unit: int, metrics) -> None:
        if self.publish is not None and (stage.number, unit) == (1, self.publish[1]):
            from metaocl.experiments import stage1_cache

            stage1_cache.publish_model(self.publish[0], self.loaded)  # the model stage 2 starts from

    def state(self) -> dict:
        from metaocl.experiments import checkpoints

        return {"step_global": self.step_global, "micro": self.micro,
                "alignment_pending": checkpoints.alignment_pending(self.monitor),
                "accumulation": self.ctx.accumulation.state_dict(self.model)}  # slices so far, a waiting gradient

    def load_state(self, saved: dict) -> None:
        from metaocl.experiments import checkpoints

        self.step_global, self.micro = saved["step_global"], saved["micro"]
        self.ctx.micro_batch_size = min(self.micro or self.slice_size, self.slice_size)
        checkpoints.set_alignment_pending(self.monitor, saved)
        if saved.get("accumulation") is not None:
            self.ctx.accumulation.load_state_dict(saved["accumulation"], self.model)


def _progress(reporter: Reporter, stage: int, epoch: int):
    """A tqdm bar over the epoch's optimizer steps, only when run interactively."""
    if not getattr(reporter, "interactive", False):
        return None
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, desc=f"stage {stage} epoch {epoch}", unit="step", leave=False)


@dataclasses.dataclass
class _AlignmentProbes:
    """Fixed probes for the gradient-alignment diagnostic (drawn once per trial): engine batches
    (``mean_gradient``), or per-variable :class:`~metaocl.engine.grad_alignment.PairedProbes`
    (``authors``; ``qa`` unused then)."""

    def1: object
    def2: object | None
    qa: engine.Batch | None
    use_autocast: bool
    device: str

    def loss_fn(self, model, batch: engine.Batch):
        from metaocl.engine import lm as engine

        with engine.autocast(self.device, self.use_autocast):
            return engine.loss_sum(engine.forward_logits(model, batch), batch.target) / batch.n_target


def _alignment_probes(config: LMConfig, dataset, loaded: LoadedModel, device: str, use_autocast: bool,
                      size: int = 64) -> _AlignmentProbes | None:
    """``train.grad_alignment_statistic``: authors - per d1consis / d2consis variable (sorted, at most
    ``train.grad_alignment_variables``), its definition (from any ``train_*`` split, trained or kept
    as a probe) and its questions (the subset's eval split), one datapoint each; mean_gradient - up to
    ``size`` tag-1 definitions, tag-2 definitions and QA pairs from all training splits."""
    import datasets
    import torch

    from metaocl.data.qa import DEFINITIONS
    from metaocl.engine import lm as engine
    from metaocl.engine.grad_alignment import PairedProbes

    train = datasets.concatenate_datasets([dataset[k] for k in dataset if k.startswith("train_")])
    enc = engine.encode(train, loaded.tokenizer, loaded.is_seq2seq)
    start = getattr(loaded.model.config, "decoder_start_token_id", None)

    def batch(e: engine.Encoded, idx: list[int]) -> engine.Batch:
        return engine.collate(e, idx, loaded.pad_id, start, config.train.faithful_padding,
                              config.train.block_size).to(device)

    if config.train.grad_alignment_statistic == "authors":
        def paired(subset: str) -> PairedProbes | None:
            if subset not in dataset or not len(dataset[subset]):
                return None
            defs = {v: i for i, (v, s, d) in enumerate(zip(train["variable"], train["subset"], train["is_definition"]))
                    if d and s == subset}
            qs = dataset[subset]
            enc_q = engine.encode(qs, loaded.tokenizer, loaded.is_seq2seq)
            questions: dict[str, list[int]] = {}
            for j, v in enumerate(qs["variable"]):
                questions.setdefault(v, []).append(j)
            variables = sorted(v for v in defs if v in questions)
            if config.train.grad_alignment_variables:
                variables = variables[: config.train.grad_alignment_variables]
            pairs = [(batch(enc, [defs[v]]), [batch(enc_q, [j]) for j in questions[v]]) for v in variables]
            return PairedProbes(pairs) if pairs else None

        def1 = paired("d1consis")
        return None if def1 is None else _AlignmentProbes(def1, paired("d2consis"), None, use_autocast, device)

    tags = [DEFINITIONS.get(s, ("", True))[0] if d else "qa" for s, d in zip(train["subset"], train["is_definition"])]
    rng = torch.Generator().manual_seed(config.stage1_seed)

    def pick(tag: str) -> engine.Batch | None:
        idx = [i for i, t in enumerate(tags) if t == tag]
        if not idx:
            return None
        return batch(enc, [idx[j] for j in torch.randperm(len(idx), generator=rng)[:size].tolist()])

    def1, def2, qa = pick("1"), pick("2"), pick("qa")
    if def1 is None or qa is None:
        return None
    return _AlignmentProbes(def1, def2, qa, use_autocast, device)


def _unit_key(config: LMConfig) -> str | None:
    """Trials with ``train.stage1_cache`` set share their first stages (a sweep's stage-1 units)."""
    from metaocl.experiments import stage1_cache

    return stage1_cache.key(config) if config.train.stage1_cache and stage1_cache.shared_stages(config) else None


def _unit_stages(config: LMConfig) -> list[Stage]:
    from metaocl.experiments.stage1_cache import shared_stages

    return [s for s in stages(config, branch=False) if s.number <= shared_stages(config)]


def _branch_stages(config: LMConfig) -> list[Stage]:
    from metaocl.experiments.stage1_cache import shared_stages

    return [s for s in stages(config) if s.number > shared_stages(config)]


SHARED = SharedStages(key=_unit_key, run_unit=run_stage1, run_branch=run_branch, unit_stages=_unit_stages,
                      branch_stages=_branch_stages)

KIND = ExperimentKind(name="lm", config_cls=LMConfig, run=run, n_reports=n_reports, stages=stages, shared=SHARED,
                      measure="em",
                      effect_pairs=IN_DISTRIBUTION_PAIRS + entity_pairs(ENTITY_TEMPLATES),
                      entity_templates=ENTITY_TEMPLATES, required_inputs=required_inputs)
