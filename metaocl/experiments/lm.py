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

Checkpoints (``train.checkpoint_every``): in a Ray trial, the end of every N-th epoch of a stage and
of every stage saves model, optimizer, schedule, the stage's data-order generator, RNG states, the
position (stage, epoch, global step and epoch), the last metrics, the report history and the micro
batch auto-sizing found; a retried trial restores it, skips finished stages and epochs and ends
exactly as an uninterrupted run. A checkpoint from stage 2 on bypasses the stage-1 cache (it holds
the weights already); one from stage 1 continues stage 1, which is then saved to the cache as usual.
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
from metaocl.experiments import Reporter
from metaocl.experiments.base import IN_DISTRIBUTION_PAIRS, ExperimentKind, entity_pairs, evaluations

if TYPE_CHECKING:
    import torch

    from metaocl.engine import lm as engine
    from metaocl.engine.lm_models import LoadedModel


def n_reports(config: LMConfig) -> int:
    """Evaluations of one trial: every ``eval.every`` epochs and at the end of each stage."""
    return sum(evaluations(n, config.eval.every) for n in config.epochs)


def required_inputs(config: LMConfig) -> list[str]:
    """What a trial reads from outside: the CVDB / T-REx files, and the model (and tokenizer) name.

    A model name is fine when it is a builtin tiny model, a local folder, a Pythia architecture
    trained from scratch (embedded), or a Hugging Face name that is in the local cache; with
    ``HF_HUB_OFFLINE=1`` a name not in the cache is refused (the trial could not load it), online it
    is left to the hub.
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
    m = config.model
    if m.name not in BUILTIN_MODEL_NAMES:
        from metaocl.engine.lm_models import pythia_key

        if not (m.from_scratch and pythia_key(m.name)):
            out += _name_problems("model.name", m.name)
        if m.tokenizer:
            out += _name_problems("model.tokenizer", m.tokenizer)
        elif m.from_scratch and pythia_key(m.name):
            out += _name_problems("model.name", m.name, what="tokenizer")
        if not out:
            out += _architecture_problems(config)
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
    """``[]`` when ``name`` can be loaded here: a local folder, or a hub name (cached, when offline)."""
    local = Path(name).expanduser()
    if local.is_dir():
        return []
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        return [f"{field}: {name!r} is neither a local folder nor a Hugging Face model name"]
    if not _hf_offline():
        return []
    from huggingface_hub import try_to_load_from_cache

    wanted = ("config.json",) if what == "model" else ("tokenizer_config.json", "tokenizer.json")
    if any(isinstance(try_to_load_from_cache(name, f), str) for f in wanted):
        return []
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
def run(config: LMConfig, reporter: Reporter) -> dict[str, float]:
    from transformers.utils import logging as hf_logging

    from metaocl.experiments import checkpoints, stage1_cache
    from metaocl.runtime import resolve_device, seed_everything, set_threads

    hf_logging.disable_progress_bar()  # no "Loading weights" bars in trial logs
    set_threads()
    device = resolve_device(config.device)
    seed_everything(config.stage1_seed)
    dataset = engine_dataset(config)
    n_stages = config.data.n_stages
    resplit = n_stages > 1 and config.data.resplit_x2_per_seed and config.seed != config.stage1_seed
    later = engine_dataset(config, stage=2) if resplit else dataset  # what stages 2.. see

    cache = stage1_cache.folder(config) if n_stages > 1 else None
    history: list[dict] = []
    saved = checkpoints.restore(reporter)  # a retried Ray trial: where its last attempt stopped
    if cache is None or (saved is not None and saved["stage"] > 1):
        loaded = _load(config, dataset)  # with a checkpoint, its weights replace these
        return _train(config, reporter, dataset, loaded, device, first_stage=1, history=history, saved=saved,
                      later=later)
    with stage1_cache.locked(cache):  # the first trial with this key trains stage 1; the rest wait
        if cache.is_dir():  # (a stage-1 checkpoint of ours is superseded: the cache is the same model)
            loaded, history = stage1_cache.load(cache, config)
            for row in history:
                reporter(row)
        else:
            loaded = _load(config, dataset)
            _train(config, reporter, dataset, loaded, device, first_stage=1, history=history, last_stage=1,
                   saved=saved)
            stage1_cache.save(cache, loaded, history)
    return _train(config, reporter, later, loaded, device, first_stage=2, history=history)


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


def _train(config: LMConfig, reporter: Reporter, dataset, loaded: LoadedModel, device: str, *,
           first_stage: int, history: list[dict], last_stage: int | None = None,
           saved: dict | None = None, later=None) -> dict[str, float]:
    """Stages ``first_stage..last_stage``; appends every report to ``history``; returns the last.
    With ``saved`` (a checkpoint of this trial) it continues after the epoch the checkpoint was taken.
    ``later``: the dataset of stages 2.. when it differs from ``dataset`` (X2 re-split per seed)."""
    from metaocl.engine import lm as engine
    from metaocl.engine import lm_evaluate as ev
    from metaocl.engine.grad_alignment import GradAlignmentMonitor
    from metaocl.experiments import checkpoints
    from metaocl.runtime import seed_everything

    cfg_t, cfg_e = config.train, config.eval
    model, tok = loaded.model, loaded.tokenizer
    if cfg_t.faithful_padding and loaded.is_seq2seq:
        raise ConfigError("train.faithful_padding: applies to causal models only")
    model.to(device)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    use_autocast = device.startswith("cuda") and config.model.dtype == "auto"
    max_new = cfg_e.resolved_max_new_tokens(config.data.source)
    n_stages = config.data.n_stages
    last_stage = last_stage or n_stages

    eval_names = [name for name in dataset if not name.startswith("train_") and len(dataset[name])]
    eval_sets = {name: engine.encode(dataset[name], tok, loaded.is_seq2seq, with_prompts=True) for name in eval_names}
    epochs = config.epochs
    monitor = GradAlignmentMonitor(every_steps=cfg_t.grad_alignment_every)
    probes = _alignment_probes(config, dataset, loaded, device, use_autocast) if monitor.enabled else None
    global_step = sum(  # optimizer steps of stages run before this call (e.g. a cached stage 1)
        engine.steps_per_epoch(len(dataset[f"train_{s}"]), cfg_t.batch_size or len(dataset[f"train_{s}"])) * epochs[s - 1]
        for s in range(1, first_stage))

    def after_step(_: int) -> None:
        nonlocal global_step
        global_step += 1
        if probes is not None and monitor.due(global_step):
            monitor.measure(model, probes.loss_fn, probes.def1, probes.def2, probes.qa, step=global_step)

    epoch_global = sum(epochs[: first_stage - 1])
    metrics: dict[str, float] = dict(history[-1]) if history else {}
    micro = cfg_t.micro_batch_size or cfg_t.batch_size
    if saved is not None:
        model.load_state_dict(saved["model"])
        global_step, epoch_global, metrics = saved["step_global"], saved["epoch_global"], saved["metrics"]
        micro = saved["micro"]
        history[:] = saved["history"]
    for stage in range(first_stage, last_stage + 1):
        if stage == 2 and later is not None and later is not dataset:  # the trial seed's X2 split from here on
            dataset = later
            eval_names = [name for name in dataset if not name.startswith("train_") and len(dataset[name])]
            eval_sets = {name: engine.encode(dataset[name], tok, loaded.is_seq2seq, with_prompts=True) for name in eval_names}
        if saved is not None and saved["stage"] > stage:
            continue
        n_epochs = epochs[stage - 1]
        train_set = engine.encode(dataset[f"train_{stage}"], tok, loaded.is_seq2seq)
        batch_size = cfg_t.batch_size or len(train_set)  # 0 = full batch
        total_steps = engine.steps_per_epoch(len(train_set), batch_size) * n_epochs
        optimizer, scheduler = engine.make_optimizer(model, cfg_t, total_steps)  # fresh per stage
        ctx = engine.StepContext(
            model=model, optimizer=optimizer, scheduler=scheduler, device=device, pad_id=loaded.pad_id,
            decoder_start_id=getattr(model.config, "decoder_start_token_id", None), batch_size=batch_size,
            micro_batch_size=min(micro or batch_size, batch_size), auto_micro=cfg_t.micro_batch_size == 0 and device.startswith("cuda"),
            max_grad_norm=cfg_t.max_grad_norm, faithful_padding=cfg_t.faithful_padding, block_size=cfg_t.block_size,
            use_autocast=use_autocast,
        )
        stage_seed = config.stage1_seed if stage == 1 else config.seed
        seed_everything(stage_seed * 1009 + stage)  # dropout RNG (T5), independent of earlier stages
        generator = _stage_generator(stage_seed, stage)
        first_epoch = 1
        if saved is not None:  # the stage the checkpoint was taken in: its optimizer, RNG and position
            checkpoints.load_training_state(saved, optimizer, scheduler, generator)
            checkpoints.set_alignment_pending(monitor, saved)
            first_epoch, saved = saved["epoch"] + 1, None

        def checkpoint(epoch: int) -> None:
            every = cfg_t.checkpoint_every
            if every and (epoch % every == 0 or epoch == n_epochs):
                checkpoints.save(reporter, model, optimizer, scheduler, generator, stage=stage, epoch=epoch,
                                 step_global=global_step, epoch_global=epoch_global, metrics=metrics,
                                 history=history, micro=micro, alignment_pending=checkpoints.alignment_pending(monitor))

        for epoch in range(first_epoch, n_epochs + 1):
            epoch_global += 1
            stats = engine.train_one_epoch(ctx, train_set, generator, _progress(reporter, stage, epoch), after_step)
            micro = ctx.micro_batch_size  # keep what auto found
            if epoch % cfg_e.every and epoch != n_epochs:
                checkpoint(epoch)
                continue
            eval_kwargs = dict(max_new_tokens=max_new, device=device, is_seq2seq=loaded.is_seq2seq,
                               batch_size=cfg_e.batch_size, use_autocast=use_autocast)
            if cfg_e.method == "fast":  # every split at once: their greedy continuations pooled
                results = ev.evaluate_splits(model, tok, eval_sets, **eval_kwargs)
            else:
                results = {name: ev.evaluate_split_generate(model, tok, enc, **eval_kwargs) for name, enc in eval_sets.items()}
            metrics = {}
            for name, result in results.items():
                metrics[f"em/{name}"] = result.em
                metrics[f"loss/{name}"] = result.loss
            metrics.update(KIND.gaps(metrics))
            metrics.update(monitor.epoch_metrics())
            metrics.update({"train/loss": stats.loss, "perf/tokens_per_s": stats.tokens_per_s,
                            "perf/examples_per_s": stats.examples_per_s, "epoch": float(epoch_global),
                            "stage": float(stage)})
            history.append(dict(metrics))
            reporter(metrics)
            checkpoint(epoch)  # after the report: a restarted trial never skips an evaluation
    return metrics


def _progress(reporter: Reporter, stage: int, epoch: int):
    """A tqdm bar over the epoch's optimizer steps, only when run interactively."""
    if not getattr(reporter, "interactive", False):
        return None
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, desc=f"stage {stage} epoch {epoch}", unit="step", leave=False)


@dataclasses.dataclass
class _AlignmentProbes:
    """Fixed probe batches for the gradient-alignment diagnostic (drawn once per trial)."""

    def1: engine.Batch
    def2: engine.Batch | None
    qa: engine.Batch
    use_autocast: bool
    device: str

    def loss_fn(self, model, batch: engine.Batch):
        from metaocl.engine import lm as engine

        with engine.autocast(self.device, self.use_autocast):
            return engine.loss_sum(engine.forward_logits(model, batch), batch.target) / batch.n_target


def _alignment_probes(config: LMConfig, dataset, loaded: LoadedModel, device: str, use_autocast: bool,
                      size: int = 64) -> _AlignmentProbes | None:
    """Up to ``size`` tag-1 definitions, tag-2 definitions and QA pairs from all training splits."""
    import datasets
    import torch

    from metaocl.data.qa import DEFINITIONS
    from metaocl.engine import lm as engine

    train = datasets.concatenate_datasets([dataset[k] for k in dataset if k.startswith("train_")])
    tags = [DEFINITIONS.get(s, ("", True))[0] if d else "qa" for s, d in zip(train["subset"], train["is_definition"])]
    rng = torch.Generator().manual_seed(config.stage1_seed)
    enc = engine.encode(train, loaded.tokenizer, loaded.is_seq2seq)
    start = getattr(loaded.model.config, "decoder_start_token_id", None)

    def pick(tag: str) -> engine.Batch | None:
        idx = [i for i, t in enumerate(tags) if t == tag]
        if not idx:
            return None
        chosen = [idx[j] for j in torch.randperm(len(idx), generator=rng)[:size].tolist()]
        return engine.collate(enc, chosen, loaded.pad_id, start, config.train.faithful_padding,
                              config.train.block_size).to(device)

    def1, def2, qa = pick("1"), pick("2"), pick("qa")
    if def1 is None or qa is None:
        return None
    return _AlignmentProbes(def1, def2, qa, use_autocast, device)


KIND = ExperimentKind(name="lm", config_cls=LMConfig, run=run, n_reports=n_reports, measure="em",
                      effect_pairs=IN_DISTRIBUTION_PAIRS + entity_pairs(ENTITY_TEMPLATES),
                      entity_templates=ENTITY_TEMPLATES, required_inputs=required_inputs)
