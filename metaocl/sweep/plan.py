"""What a sweep will cost, before it runs: the one home of the estimates.

For every distinct trial configuration of a sweep (trials that differ only in their seed share one):

- parameters of the configured model, counted on PyTorch's ``meta`` device from the model's
  config (no weights loaded or downloaded): Pythia / GPT-NeoX, GPT-Neo, Llama, T5 (hub names with an
  embedded or cached config), the builtin tiny models, the set-inclusion GPT-NeoX, timm's ConvNeXt V2;
- peak training memory on one GPU (:func:`memory`): weights + gradients + optimizer state (Adafactor's
  factored second moments, or AdamW's two moments) + the bf16 copies autocast makes of the matmul
  weights + activations at micro-batch x tokens per datapoint + the logits and their loss;
- FLOPs (:func:`lm_train_flops`): 6 N per trained token plus attention (N = matmul parameters), and
  the evaluation forward passes; GPU-hours at a stated model-FLOPs utilisation (MFU) on a GPU type's
  dense bf16 peak, or at the MFU ``bench/gpu.py`` measured on that GPU (:data:`MEASURED_MFU`);
- checkpoint bytes (:func:`checkpoint_writes`, :func:`checkpoint_bytes`), downloads (model weights,
  data sets).

:func:`plan_for` puts them together for one or more sweeps on a :class:`Cluster` (what the GPU probe
found, or a stated GPU type), including how trials pack on its GPUs (``resources.gpu: auto``:
:func:`gpu_fraction`); :func:`render` is the text the CLI prints (``metaocl sweep NAME --dry-run``,
and first thing in a sweep). :func:`refusal` is the one line for a trial no GPU of the cluster holds.

Estimates, not measurements: activations follow Korthikanti et al. 2022 (``s b h (34 + 5 a s / h)``
bytes per layer in 16-bit), a fixed 1 GB per process for the CUDA context and workspaces, and 15%
head-room when GPUs are shared. docs/planning.md explains each figure and what it leaves out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from metaocl.config import ConfigError, flatten, to_dict

if TYPE_CHECKING:
    from metaocl.config import Sweep, Trial

GB = 1e9  # decimal gigabytes, as GPU vendors and the figures count them
CUDA_CONTEXT_BYTES = 1.0 * GB  # CUDA context, cuBLAS/cuDNN workspaces, allocator slack of one process
SHARED_HEADROOM = 1.15  # a trial sharing a GPU reserves this much more than its estimate (fragmentation)
ASSUMED_MFU = 0.30  # stated utilisation when bench/gpu.py has recorded nothing for the GPU
DYNAMIC_TOKENS = 20.0  # tokens per CVDB datapoint with Pythia's tokenizer, without faithful padding
HUB_STORED_BYTES = {"pythia": 2, "gpt_neox": 2, "llama": 2, "gpt_neo": 4, "t5": 4}  # hub weights, bytes/param

# Dense bf16 tensor-core peak in FLOP/s by device-name substring, first match wins (vendor specs).
PEAK_BF16_FLOPS = (
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("GH200", 989e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("RTX 4090", 165e12),
    ("4090", 165e12),
    ("A10G", 70e12),
    ("L4", 121e12),
)

# Stated GPU types (--gpu-type): memory in decimal GB, name as the peak table knows it.
GPU_TYPES: dict[str, tuple[float, str]] = {
    "A100-40GB": (40.0, "A100"),
    "A100": (80.0, "A100"),
    "H100": (80.0, "H100"),
    "H100-NVL": (94.0, "H100 NVL"),
    "H200": (141.0, "H200"),
    "B200": (180.0, "B200"),
    "L40S": (48.0, "L40S"),
    "RTX-4090": (24.0, "RTX 4090"),
    "A10G": (24.0, "A10G"),
    "L4": (24.0, "L4"),
}

# MFU that bench/gpu.py measured per GPU name (the line it prints as "record:"); none measured yet.
MEASURED_MFU: dict[str, float] = {}

# The paper's compute (appendix F): A100-hours per seed.
PAPER_A100_HOURS = {"two_stage": 6.0, "set_inclusion": 3.0}


# ------------------------------------------------------------------------------------------------
# FLOP arithmetic (bench/gpu.py uses the same functions)
# ------------------------------------------------------------------------------------------------
def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of a device by name; ``override_tflops`` wins; None when unknown."""
    if override_tflops:
        return override_tflops * 1e12
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    return None


def matmul_params(model) -> int:
    """Parameters of every ``nn.Linear`` (weights and biases), the output projection included and
    the input embedding (a lookup, no FLOPs) excluded: the N of "6N FLOPs per token"."""
    import torch.nn as nn

    return sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False))


def train_flops_per_token(n_matmul: int, n_layers: int, hidden: int, seq_len: float) -> float:
    """Forward + backward FLOPs per token: 6N plus attention scores and weighted values,
    12 * layers * hidden * sequence length (PaLM, appendix B)."""
    return 6.0 * n_matmul + 12.0 * n_layers * hidden * seq_len


def lm_train_flops(n_matmul: int, n_layers: int, hidden: int, tokens_per_datapoint: float,
                   datapoints_per_epoch: Iterable[int], epochs: Iterable[int]) -> float:
    """Training FLOPs of the stages given: every epoch trains its stage's datapoints at
    ``tokens_per_datapoint`` tokens each (padding included: the GPU computes it)."""
    tokens = sum(n * e for n, e in zip(datapoints_per_epoch, epochs)) * tokens_per_datapoint
    return train_flops_per_token(n_matmul, n_layers, hidden, tokens_per_datapoint) * tokens


def eval_flops(n_matmul: int, rows: int, tokens: float, new_tokens: int, evaluations: int) -> float:
    """Evaluation FLOPs, an upper bound: each row a teacher-forced forward pass (2N per token) plus
    ``new_tokens`` greedily generated tokens (the fast evaluator generates only where greedy leaves
    the trained continuation)."""
    return evaluations * rows * 2.0 * n_matmul * (tokens + new_tokens)


def gpu_hours(flops: float, peak: float, mfu: float) -> float:
    return flops / (mfu * peak) / 3600.0


def implied_mfu(flops: float, hours: float, peak: float) -> float:
    """The utilisation at which ``flops`` take ``hours`` on a GPU of ``peak`` FLOP/s."""
    return flops / (hours * 3600.0 * peak)


# ------------------------------------------------------------------------------------------------
# Models: parameter counts from configs, on the meta device
# ------------------------------------------------------------------------------------------------
# Architectures of the paper's non-Pythia models (their hub configs), so that the plan needs no hub.
KNOWN_CONFIGS: dict[str, tuple[str, dict]] = {
    "gpt-neo-125m": ("gpt_neo", dict(hidden_size=768, num_layers=12, num_heads=12, vocab_size=50257,
                                     max_position_embeddings=2048, attention_types=[[["global", "local"], 6]])),
    "gpt-neo-1.3b": ("gpt_neo", dict(hidden_size=2048, num_layers=24, num_heads=16, vocab_size=50257,
                                     max_position_embeddings=2048, attention_types=[[["global", "local"], 12]])),
    "gpt-neo-2.7b": ("gpt_neo", dict(hidden_size=2560, num_layers=32, num_heads=20, vocab_size=50257,
                                     max_position_embeddings=2048, attention_types=[[["global", "local"], 16]])),
    "llama-2-7b-hf": ("llama", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                    num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                    tie_word_embeddings=False)),
    "t5-3b": ("t5", dict(d_model=1024, d_ff=16384, d_kv=128, num_heads=32, num_layers=24, num_decoder_layers=24,
                         vocab_size=32128, feed_forward_proj="relu", tie_word_embeddings=True,
                         is_encoder_decoder=True)),
}


@dataclass(frozen=True)
class ModelShape:
    """What the estimates need to know of a model."""

    name: str
    family: str  # pythia, gpt_neo, llama, t5, gpt_neox (builtin / set inclusion), timm
    params: int
    matmul_params: int
    layers: int  # transformer blocks (encoder + decoder for T5)
    hidden: int
    heads: int
    vocab: int
    adafactor_elements: int  # factored second-moment state of Adafactor (beta1=None)
    hub: bool  # weights come from the Hugging Face hub (a download)


def _shape_of(name: str, family: str, model, hub: bool) -> ModelShape:
    cfg = getattr(model, "config", None)

    def get(*keys: str) -> int:  # the first of these config attributes that is set (names differ by family)
        return next((int(getattr(cfg, k)) for k in keys if getattr(cfg, k, None)), 0)

    layers = get("num_hidden_layers", "num_layers") + get("num_decoder_layers")
    params = list(model.parameters())
    factored = sum(math.prod(p.shape[:-1]) + math.prod(p.shape[:-2] + p.shape[-1:]) if p.dim() >= 2 else p.numel()
                   for p in params)
    return ModelShape(name=name, family=family, params=sum(p.numel() for p in params),
                      matmul_params=matmul_params(model), layers=layers,
                      hidden=get("hidden_size", "d_model"), heads=get("num_attention_heads", "num_heads"),
                      vocab=get("vocab_size"), adafactor_elements=factored, hub=hub)


def _hf_key(name: str) -> str:
    return name.rstrip("/").split("/")[-1].lower()


@functools.lru_cache(maxsize=64)
def lm_shape(name: str, from_scratch: bool = False) -> ModelShape | None:
    """The shape of an LM by name (builtin, Pythia, the paper's other models, or a cached/local
    config); None when its config is neither embedded nor on this machine."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, GPTNeoXConfig, T5Config

    from metaocl.engine.lm_models import BUILTIN_MODELS, pythia_config, pythia_key

    if name in BUILTIN_MODELS:
        spec = BUILTIN_MODELS[name]
        cfg = (GPTNeoXConfig if spec["kind"] == "causal" else T5Config)(vocab_size=spec["vocab_size"], **spec["arch"])
        family, hub = "gpt_neox" if spec["kind"] == "causal" else "t5", False
    elif pythia_key(name):
        cfg, family, hub = pythia_config(name), "pythia", not from_scratch
    elif _hf_key(name) in KNOWN_CONFIGS:
        family, kwargs = KNOWN_CONFIGS[_hf_key(name)]
        cfg, hub = AutoConfig.for_model(family, **kwargs), not from_scratch
    else:
        try:
            cfg = AutoConfig.from_pretrained(name, local_files_only=True)
        except Exception:
            return None
        family, hub = str(getattr(cfg, "model_type", "?")), not (from_scratch or os.path.isdir(name))
    auto = AutoModelForSeq2SeqLM if getattr(cfg, "is_encoder_decoder", False) else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(cfg)
    return _shape_of(name, family, model, hub)


@functools.lru_cache(maxsize=16)
def set_inclusion_shape(arch_items: tuple, vocab: int) -> ModelShape:
    import torch

    from metaocl.configs.set_inclusion import GPTNeoXArch
    from metaocl.engine.set_inclusion import build_model

    with torch.device("meta"):
        model = build_model(GPTNeoXArch(**dict(arch_items)), vocab)
    return _shape_of("set-inclusion GPT-NeoX", "gpt_neox", model, False)


# ------------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------------
def memory(shape: ModelShape, *, optimizer: str, weight_bytes: int, autocast: bool, micro_batch: int,
           tokens: float, checkpointing: bool = False) -> dict[str, float]:
    """Peak training memory of one trial in bytes, by component (sum: ``peak``).

    ``weight_bytes``: 4 for fp32 master weights (the default, with bf16 autocast on CUDA), 2 for
    ``model.dtype: bfloat16``. Gradients and optimizer state have the parameters' dtype."""
    n = shape.params
    out = {"weights": n * weight_bytes, "gradients": n * weight_bytes,
           "optimizer": (shape.adafactor_elements if optimizer == "adafactor" else 2 * n) * weight_bytes,
           "autocast copies": shape.matmul_params * 2 if autocast else 0}
    act_bytes = 1 if (autocast or weight_bytes == 2) else 2  # the 34-byte rule is for 16-bit activations
    sbh = micro_batch * tokens * shape.hidden
    per_layer = sbh * (34 + 5 * shape.heads * tokens / max(1, shape.hidden)) * act_bytes
    out["activations"] = (2 * sbh * act_bytes * shape.layers + per_layer) if checkpointing else per_layer * shape.layers
    logit_bytes = (2 if (autocast or weight_bytes == 2) else 4) + 4 + 4  # logits, fp32 upcast for the loss, its grad
    out["logits"] = micro_batch * tokens * shape.vocab * logit_bytes
    out["CUDA context"] = CUDA_CONTEXT_BYTES
    out["peak"] = sum(out.values())
    return out


def at_once(shares: Iterable[float], gpus: int) -> int:
    """How many trials of these GPU shares can run at once on ``gpus`` GPUs: the smallest first, each
    onto the first GPU with room left. Counted as Ray counts, in 1e-4 units of a GPU; a share below 1
    lives on one GPU, 1 or more takes that many whole GPUs."""
    unit = 10_000
    free = [unit] * gpus
    n = 0
    for share in sorted(shares):
        need = round(share * unit)
        if need >= unit:
            whole = -(-need // unit)
            empty = [i for i, f in enumerate(free) if f == unit]
            if len(empty) < whole:
                break
            for i in empty[:whole]:
                free[i] = 0
        else:
            room = next((i for i, f in enumerate(free) if f >= need), None)
            if room is None:
                break
            free[room] -= need
        n += 1
    return n


def gpu_fraction(peak_bytes: float, gpu_bytes: float) -> float:
    """The share of one GPU a trial of ``peak_bytes`` gets with ``resources.gpu: auto``: 1 when it
    needs more than half the GPU, else 1/k for the largest k trials that fit side by side (with
    :data:`SHARED_HEADROOM`), rounded down to Ray's 1e-4 resolution (rounded up, k of them would
    add up to more than one GPU: 3 x 0.3334 > 1)."""
    k = int(gpu_bytes // (peak_bytes * SHARED_HEADROOM))
    if k < 2:
        return 1.0
    return math.floor(1e4 / k) / 1e4


# ------------------------------------------------------------------------------------------------
# Checkpoints: the cadence is the staged-trial skeleton's (metaocl.experiments.staged), on unit times
# estimated here
# ------------------------------------------------------------------------------------------------
def unit_seconds(train_flops_per_stage: list[float], units_per_stage: list[int]) -> list[float]:
    """Seconds one unit (epoch, or step block) of each stage takes on the reference GPU (an H100 at
    :data:`ASSUMED_MFU`), the clock the checkpoint cadence (``train.checkpoint_minutes``) runs on."""
    rate = peak_flops("H100") * ASSUMED_MFU
    return [f / max(u, 1) / rate for f, u in zip(train_flops_per_stage, units_per_stage)]


def checkpoint_writes(config, seconds_per_unit: list[float], first: int | None = None,
                      last: int | None = None) -> list[int]:
    """Checkpoints one trial (its stages ``first..last``) writes per stage, inside it and at its
    start, under its ``train.checkpoint_minutes`` (:func:`metaocl.experiments.staged.n_checkpoints`)."""
    from metaocl.experiments.staged import n_checkpoints

    return [inside + at_start for inside, at_start in n_checkpoints(config, seconds_per_unit, first, last)]


def checkpoint_bytes(config, shape: ModelShape) -> float:
    """Bytes of one checkpoint with optimizer state (:func:`metaocl.experiments.staged.checkpoint_bytes`;
    a stage-boundary checkpoint holds the weights only, so totals are upper bounds)."""
    from metaocl.experiments.staged import checkpoint_bytes as staged_bytes

    return float(staged_bytes(config, shape.params))


# ------------------------------------------------------------------------------------------------
# Per-trial estimates, by experiment kind
# ------------------------------------------------------------------------------------------------
@dataclass
class TrialEstimate:
    """The estimate of one distinct trial configuration (shared by the trials listed)."""

    trials: list[str]
    model: str
    shape: ModelShape | None
    memory: dict[str, float] | None  # at ``micro_batch``
    micro_batch: int
    static_bytes: float | None  # what micro-batch 1 needs: the least this trial can run with
    train_flops: float  # per trial, stages it trains itself
    shared_flops: float  # stage 1, trained once per stage-1 seed (counted in ``shared_runs``)
    eval_flops: float
    shared_runs: int  # distinct stage-1 runs among ``trials`` (0: nothing shared)
    checkpoints: int  # per trial, stages it trains itself
    checkpoint_each: float
    shared_checkpoints: int = 0  # stage 1's, written once per stage-1 run
    download: tuple[str, float | None] | None = None  # (what, bytes)
    note: str = ""
    variants: dict[str, float] = field(default_factory=dict)  # --set that shrinks it -> its static bytes

    @property
    def peak(self) -> float | None:
        return self.memory["peak"] if self.memory else None

    @property
    def flops(self) -> float:
        """All trials of this configuration, shared stage-1 runs once each."""
        return len(self.trials) * (self.train_flops + self.eval_flops) + self.shared_runs * self.shared_flops

    @property
    def checkpoint_total(self) -> float:
        return (len(self.trials) * self.checkpoints + self.shared_runs * self.shared_checkpoints) * self.checkpoint_each


def _lm_tokens(config) -> float:
    return float(config.train.block_size) if config.train.faithful_padding else DYNAMIC_TOKENS


@contextlib.contextmanager
def _scratch_data_home():
    import tempfile

    before = os.environ.get("METAOCL_DATA")
    with tempfile.TemporaryDirectory(prefix="metaocl-plan-") as d:
        os.environ["METAOCL_DATA"] = d
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("METAOCL_DATA", None)
            else:
                os.environ["METAOCL_DATA"] = before


@functools.lru_cache(maxsize=32)
def lm_data_sizes(data_repr: str) -> tuple[tuple[int, ...], int]:
    """(training datapoints per stage, evaluation rows per evaluation) of an LM data config, built on
    the generated stand-in of its source (same entity count, subsets and layout; no download)."""
    import yaml

    from metaocl.config import from_dict
    from metaocl.configs.lm_data import LMDataConfig
    from metaocl.data.qa import build_lm_dataset

    data = from_dict(LMDataConfig, yaml.safe_load(data_repr), "data")
    if data.source in ("cvdb", "trex"):
        data = dataclasses.replace(data, source=f"{data.source}_sample", path="")
    with _scratch_data_home():  # a plan writes nothing: the stand-in's files go to a temporary folder
        ds = build_lm_dataset(data, 0)
    train = tuple(len(ds[f"train_{s}"]) for s in range(1, data.n_stages + 1))
    rows = sum(len(ds[n]) for n in ds if not n.startswith("train_"))
    return train, rows


def _lm_download(config, shape: ModelShape | None) -> tuple[str, float | None] | None:
    if shape is None or not shape.hub:
        return None
    return (config.model.name, shape.params * HUB_STORED_BYTES.get(shape.family, 4))


def estimate_lm(config, cuda: bool = True) -> TrialEstimate:
    from metaocl.experiments.base import evaluations

    shape = lm_shape(config.model.name, config.model.from_scratch)
    tokens = _lm_tokens(config)
    import yaml

    train_n, eval_rows = lm_data_sizes(yaml.safe_dump(to_dict(config.data), sort_keys=True))
    epochs = config.epochs
    batch = config.train.batch_size or train_n[0]
    micro = config.train.micro_batch_size or batch
    weight_bytes = 2 if config.model.dtype == "bfloat16" else 4
    autocast = cuda and config.model.dtype == "auto"
    shared = config.data.n_stages > 1 and config.train.stage1_cache is not None
    n_eval = sum(evaluations(e, config.eval.every) for e in epochs)
    new_tokens = config.eval.resolved_max_new_tokens(config.data.source)
    if shape is None:
        return TrialEstimate([], config.model.name, None, None, micro, None, 0.0, 0.0, 0.0, 0, 0, 0.0,
            (config.model.name, None),
            note="config not on this machine: parameters unknown until the model is fetched")
    train = [lm_train_flops(shape.matmul_params, shape.layers, shape.hidden, tokens, [n], [e])
             for n, e in zip(train_n, epochs)]
    secs = unit_seconds(train, epochs)
    # shared stage 1 (a stage-1 unit) and the stages each trial trains after it
    writes = (checkpoint_writes(config, secs, 1, 1) + checkpoint_writes(config, secs, 2) if shared
              else checkpoint_writes(config, secs))
    kw = dict(optimizer=config.train.optimizer, autocast=autocast, tokens=tokens,
              checkpointing=config.model.gradient_checkpointing)
    mem = memory(shape, weight_bytes=weight_bytes, micro_batch=micro, **kw)
    static = memory(shape, weight_bytes=weight_bytes, micro_batch=1, **kw)["peak"]
    variants = {}
    if config.model.dtype != "bfloat16":
        variants["model.dtype=bfloat16"] = memory(shape, weight_bytes=2, micro_batch=1,
                                                  **{**kw, "autocast": False})["peak"]
    if config.train.optimizer == "adamw":
        variants["train.optimizer=adafactor"] = memory(shape, weight_bytes=weight_bytes, micro_batch=1,
                                                       **{**kw, "optimizer": "adafactor"})["peak"]
    return TrialEstimate(
        trials=[], model=config.model.name, shape=shape, memory=mem, micro_batch=micro, static_bytes=static,
        train_flops=sum(train[1:]) if shared else sum(train), shared_flops=train[0] if shared else 0.0,
        eval_flops=eval_flops(shape.matmul_params, eval_rows, DYNAMIC_TOKENS, new_tokens, n_eval),
        shared_runs=0, checkpoints=sum(writes[1:]) if shared else sum(writes),
        shared_checkpoints=writes[0] if shared else 0,
        checkpoint_each=checkpoint_bytes(config, shape),
        download=_lm_download(config, shape), variants=variants)


@functools.lru_cache(maxsize=16)
def set_inclusion_sizes(data_repr: str) -> tuple[int, int, int, int, int]:
    """(vocabulary, stage-1 examples, stage-2 examples, tokens per example, test questions)."""
    import yaml

    from metaocl.config import from_dict
    from metaocl.configs.set_inclusion import SetInclusionData
    from metaocl.data.set_inclusion import generate

    data = generate(from_dict(SetInclusionData, yaml.safe_load(data_repr), "data"), 0)
    s1, s2 = data.stage_examples(1), data.stage_examples(2)
    tokens = max(len(e) for e in s1 + s2) + 1  # + <eos>; a stage is right-padded to its longest example
    return len(data.vocab), len(s1), len(s2), tokens, sum(len(q) for q in data.test_qa.values())


def estimate_set_inclusion(config, cuda: bool = True) -> TrialEstimate:
    import yaml

    from metaocl.experiments.base import evaluations
    from metaocl.experiments.set_inclusion import SHARED

    vocab, n1, n2, tokens, n_test = set_inclusion_sizes(yaml.safe_dump(to_dict(config.data), sort_keys=True))
    shape = set_inclusion_shape(tuple(sorted(to_dict(config.model).items())), vocab)
    t = config.train
    stages = ([t.stage1_epochs], [n1 + n2]) if t.joint else ([t.stage1_epochs, t.stage2_epochs], [n1, n2])
    per_stage = [lm_train_flops(shape.matmul_params, shape.layers, shape.hidden, tokens, [n], [e])
                 for n, e in zip(stages[1], stages[0])]
    train = sum(per_stage)
    n_eval = sum(evaluations(e, config.eval.every) for e in stages[0])
    kw = dict(optimizer=t.optimizer, weight_bytes=4, autocast=False, tokens=tokens)
    shared = SHARED.key(config) is not None  # stage 1 once per stage-1 seed (a stage-1 unit)
    secs = unit_seconds(per_stage, stages[0])
    writes = (checkpoint_writes(config, secs, 1, 1) + checkpoint_writes(config, secs, 2) if shared
              else checkpoint_writes(config, secs))
    return TrialEstimate(
        trials=[], model=f"GPT-NeoX {config.model.hidden_size}x{config.model.num_hidden_layers}", shape=shape,
        memory=memory(shape, micro_batch=t.batch_size, **kw), micro_batch=t.batch_size,
        static_bytes=memory(shape, micro_batch=1, **kw)["peak"],
        train_flops=sum(per_stage[1:]) if shared else train, shared_flops=per_stage[0] if shared else 0.0,
        eval_flops=eval_flops(shape.matmul_params, n_test, tokens, 0, n_eval), shared_runs=0,
        checkpoints=sum(writes[1:]) if shared else sum(writes), shared_checkpoints=writes[0] if shared else 0,
        checkpoint_each=checkpoint_bytes(config, shape))


@functools.lru_cache(maxsize=16)
def _vision_costs(name: str, n_cells: int, height: int, width: int) -> tuple[int, int, float, float]:
    """(parameters, AdamW state elements, forward FLOPs per image, saved activation bytes per image)
    of a timm model, from one forward pass of one image on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from metaocl.engine.vision import build_model

    with torch.device("meta"):
        model = build_model(name, n_cells)
        x = torch.empty(1, 1, height, width)
    saved: dict[int, object] = {}  # the same tensor saved by several ops counts once

    def pack(t):
        saved.setdefault(id(t), t)
        return t

    counter = FlopCounterMode(display=False)
    with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    n = sum(p.numel() for p in model.parameters())
    return n, 2 * n, float(counter.get_total_flops()), float(sum(t.numel() * t.element_size() for t in saved.values()))


def estimate_mnist(config, cuda: bool = True) -> TrialEstimate:
    from metaocl.data.mnist_grid import GridLayout
    from metaocl.experiments.base import evaluations

    d, t = config.data, config.train
    layout = GridLayout(d.grid_size, d.digit_size, d.border, d.tag_square)
    n, state, fwd, act = _vision_costs(config.model.name, layout.n_cells, layout.height, layout.width)
    bf16 = cuda and t.bf16
    b = t.batch_size
    mem = {"weights": 4 * n, "gradients": 4 * n, "optimizer": 4 * state, "autocast copies": 2 * n if bf16 else 0,
           "activations": act * b * (0.5 if bf16 else 1.0), "logits": 0.0, "CUDA context": CUDA_CONTEXT_BYTES}
    mem["peak"] = sum(mem.values())
    eval_images = evaluations(t.steps, t.eval_every) * 4 * 3 * config.eval.batches * (config.eval.batch_size or b)
    shape = ModelShape(config.model.name, "timm", n, n, 0, 0, 0, 0, n, False)
    return TrialEstimate(
        trials=[], model=config.model.name, shape=shape, memory=mem, micro_batch=b,
        static_bytes=mem["peak"] - mem["activations"] * (b - 1) / b, train_flops=3.0 * fwd * b * t.steps,
        shared_flops=0.0, eval_flops=fwd * eval_images, shared_runs=0,
        checkpoints=sum(checkpoint_writes(config, unit_seconds([3.0 * fwd * b * t.steps], [-(-t.steps // t.eval_every)]))),
        checkpoint_each=4.0 * (n + state))


ESTIMATORS = {"lm": estimate_lm, "set_inclusion": estimate_set_inclusion, "mnist": estimate_mnist}


# ------------------------------------------------------------------------------------------------
# The cluster and the plan
# ------------------------------------------------------------------------------------------------
@dataclass
class Cluster:
    """GPUs a sweep would run on: how many, each GPU's memory and name; ``source`` says where from."""

    gpus: int = 0
    gpu_name: str = ""
    gpu_bytes: float | None = None  # memory of the smallest GPU (None: unknown)
    largest_bytes: float | None = None
    cpus: float | None = None
    source: str = "no GPU"

    @property
    def peak(self) -> float | None:
        return peak_flops(self.gpu_name) if self.gpu_name else None

    def describe(self) -> str:
        if not self.gpus:
            return f"no GPU ({self.source})"
        mem = f", {self.gpu_bytes / GB:.0f} GB each" if self.gpu_bytes else ", memory unknown"
        return f"{self.gpus} x {self.gpu_name or 'GPU'}{mem} ({self.source})"


def parse_gpu_type(text: str) -> tuple[int, str]:
    """``8xH100`` / ``H100`` -> (8, "H100") / (1, "H100"); an unknown type is a ConfigError."""
    count, _, name = text.partition("x") if text[:1].isdigit() and "x" in text else ("1", "", text)
    key = {k.lower(): k for k in GPU_TYPES}.get(name.strip().lower())
    if key is None or not count.strip().isdigit() or int(count) < 1:
        raise ConfigError(f"--gpu-type {text!r}: expected [Nx]TYPE with TYPE one of {', '.join(GPU_TYPES)}")
    return int(count), key


def stated_cluster(gpu_type: str | None, gpus: int | None = None) -> Cluster | None:
    """The cluster of ``--gpu-type`` (or ``$METAOCL_GPU_TYPE``), with ``$METAOCL_GPU_MEMORY_GB``
    overriding its memory; None when neither is given."""
    gpu_type = gpu_type or os.environ.get("METAOCL_GPU_TYPE")
    mem_env = os.environ.get("METAOCL_GPU_MEMORY_GB")
    if not gpu_type and not mem_env:
        return None
    count, key = parse_gpu_type(gpu_type) if gpu_type else (gpus or 1, "")
    memory_gb, name = GPU_TYPES[key] if key else (0.0, "GPU")
    if mem_env:
        try:
            memory_gb = float(mem_env)
        except ValueError:
            raise ConfigError(f"METAOCL_GPU_MEMORY_GB={mem_env!r}: expected a number of GB") from None
    return Cluster(gpus=gpus or count, gpu_name=name, gpu_bytes=memory_gb * GB, largest_bytes=memory_gb * GB,
                   source=f"stated: {gpu_type or 'METAOCL_GPU_MEMORY_GB'}")


def local_cluster(gpu_type: str | None = None) -> Cluster:
    """This machine's CUDA devices (what a local sweep would use), else the stated type, else none."""
    from metaocl.runtime import gpu_inventory

    devices = gpu_inventory()
    if devices and not gpu_type:
        return Cluster(gpus=len(devices), gpu_name=devices[0][0], gpu_bytes=min(b for _, b in devices),
                       largest_bytes=max(b for _, b in devices), cpus=os.cpu_count(), source="this machine")
    return stated_cluster(gpu_type) or Cluster(source="this machine has no CUDA device; --gpu-type TYPE plans for one")


@dataclass
class SweepPlan:
    sweep: Sweep
    estimates: list[TrialEstimate]
    cuda: bool

    @property
    def n_trials(self) -> int:
        return sum(len(e.trials) for e in self.estimates)

    @property
    def flops(self) -> float:
        return sum(e.flops for e in self.estimates)

    @property
    def checkpoint_total(self) -> float:
        return sum(e.checkpoint_total for e in self.estimates)

    @property
    def peak(self) -> float | None:
        peaks = [e.peak for e in self.estimates if e.peak is not None]
        return max(peaks) if peaks else None


@dataclass
class Plan:
    sweeps: list[SweepPlan]
    cluster: Cluster
    mfu: float = ASSUMED_MFU
    mfu_source: str = "assumed"

    @property
    def flops(self) -> float:
        return sum(s.flops for s in self.sweeps)

    def gpu_hours(self, mfu: float | None = None) -> float | None:
        peak = self.cluster.peak or peak_flops("H100")
        return gpu_hours(self.flops, peak, mfu or self.mfu)

    def fraction(self, est: TrialEstimate) -> float:
        """The GPU share ``resources.gpu: auto`` gives this trial on this cluster."""
        if not self.cluster.gpus:
            return 0.0
        if est.peak is None or not self.cluster.gpu_bytes:
            return 1.0
        return gpu_fraction(est.peak, self.cluster.gpu_bytes)

    def gpu_share(self, index: int = 0) -> float:
        """The largest GPU share ``resources.gpu: auto`` gives a trial of sweep ``index`` (what some
        node must hold for the sweep to run at all)."""
        return max((self.fraction(e) for e in self.sweeps[index].estimates), default=1.0)

    def trial_shares(self, index: int = 0) -> dict[str, float]:
        """trial id -> the GPU share ``resources.gpu: auto`` gives it: its own configuration's, so the
        small configurations of a sweep pack densely while its large ones get more."""
        return {tid: self.fraction(e) for e in self.sweeps[index].estimates for tid in e.trials}

    def downloads(self) -> list[tuple[str, float | None, bool]]:
        """(what, bytes or None, already here) for every distinct input the sweeps fetch."""
        seen: dict[str, tuple[str, float | None, bool]] = {}
        for sp in self.sweeps:
            for e in sp.estimates:
                if e.download and e.download[0] not in seen:
                    seen[e.download[0]] = (e.download[0], e.download[1], _hub_cached(e.download[0]))
            for what, cached in _data_inputs(sp.sweep):
                seen.setdefault(what, (what, None, cached))
        return list(seen.values())


def _hub_cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:
        return False


def _data_inputs(sweep: Sweep) -> list[tuple[str, bool]]:
    out = []
    for t in sweep.trials()[:1] + sweep.trials()[-1:]:
        cfg = t.config
        src = getattr(getattr(cfg, "data", None), "source", None)
        digits = getattr(getattr(cfg, "data", None), "digits", None)
        if src in ("cvdb", "trex"):
            from metaocl.data import cvdb, trex

            path = (cvdb if src == "cvdb" else trex).default_path()
            out.append((f"{src.upper() if src == 'cvdb' else 'T-REx'} data set", path.exists()))
        elif digits == "mnist":
            from metaocl.data import data_home

            out.append(("MNIST", (data_home() / "mnist").exists()))
    return out


def _group_key(kind: str, trial: Trial) -> str:
    flat = flatten(trial.config_dict())
    drop = {"seed", "train.stage1_seed"}
    return repr(sorted((k, repr(v)) for k, v in flat.items() if k not in drop))


def plan_sweep(sweep: Sweep, cuda: bool = True) -> SweepPlan:
    """The estimates of every distinct trial configuration of ``sweep`` (seeds grouped)."""
    estimator = ESTIMATORS[sweep.kind]
    groups: dict[str, TrialEstimate] = {}
    stage1: dict[str, set] = {}
    for t in sweep.trials():
        key = _group_key(sweep.kind, t)
        if key not in groups:
            groups[key] = dataclasses.replace(estimator(t.config, cuda), trials=[])
            stage1[key] = set()
        groups[key].trials.append(t.trial_id)
        stage1[key].add(getattr(t.config, "stage1_seed", t.seed))
    for key, est in groups.items():
        est.shared_runs = len(stage1[key]) if est.shared_flops else 0
    return SweepPlan(sweep, list(groups.values()), cuda)


def plan_for(sweeps: Iterable[Sweep], cluster: Cluster | None = None, mfu: float | None = None) -> Plan:
    """The plan of one or more sweeps on ``cluster`` (default: this machine, see :func:`local_cluster`)."""
    cluster = cluster or local_cluster()
    cuda = cluster.gpus > 0 or cluster.source.startswith("stated")
    measured = next((v for k, v in MEASURED_MFU.items() if cluster.gpu_name and k.lower() in cluster.gpu_name.lower()),
                    None)
    source = "measured by bench/gpu.py on this GPU" if measured else "assumed"
    return Plan([plan_sweep(s, cuda) for s in sweeps], cluster, mfu or measured or ASSUMED_MFU,
                "given" if mfu else source)


def refusal(plan: Plan) -> str | None:
    """The one line for the first trial no GPU of the cluster can hold, even at micro-batch 1; None if all fit."""
    biggest = plan.cluster.largest_bytes
    if not plan.cluster.gpus or not biggest:
        return None
    for sp in plan.sweeps:
        for e in sp.estimates:
            if e.static_bytes is None or e.static_bytes <= biggest:
                continue
            fits = [v for v, b in e.variants.items() if b <= biggest]
            bigger = [f"{k} ({m:.0f} GB)" for k, (m, _) in GPU_TYPES.items() if m * GB >= e.static_bytes]
            hint = (f"--set {fits[0]}" if fits else "") + (" or " if fits and bigger else "") + (
                f"a GPU with >= {e.static_bytes / GB:.0f} GB, e.g. {bigger[0]}" if bigger else "")
            trial = e.trials[0] if e.trials else "?"
            return (f"sweep {sp.sweep.name}: trial {trial} ({e.model}) needs at least {e.static_bytes / GB:.1f} GB "
                    f"on one GPU (weights, gradients, optimizer state at micro-batch 1) but the largest GPU of "
                    f"{plan.cluster.describe()} has {biggest / GB:.0f} GB; would fit: {hint or 'nothing listed'}")
    return None


# ------------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------------
def _size(b: float | None) -> str:
    if b is None:
        return "?"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if b >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b / 1e3:.3g} kB"


def _count(n: int) -> str:
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k"


def _hours(h: float | None) -> str:
    if h is None:
        return "?"
    return f"{h:,.1f}" if h >= 10 else f"{h:.2g}"


def render(plan: Plan) -> str:
    """The plan as the CLI prints it: per sweep, per distinct trial config, then the totals."""
    from metaocl.tables import text_table

    c = plan.cluster
    peak = c.peak or peak_flops("H100")
    gpu_label = c.gpu_name if c.peak else "H100 (no GPU type known: its peak is used)"
    lines = [f"plan on {c.describe()}"]
    for sp in plan.sweeps:
        rows = []
        for e in sp.estimates:
            frac = plan.fraction(e)
            per_gpu = int(round(1 / frac)) if frac else 0
            rows.append([
                e.model if len(sp.estimates) == 1 else f"{e.model} [{e.trials[0]}..]",
                len(e.trials), _count(e.shape.params) if e.shape else "?",
                _size(e.peak) + (f" @ {e.micro_batch}" if e.peak else ""),
                f"{frac:g}" + (f" ({per_gpu}/GPU)" if per_gpu > 1 else "") if c.gpus else "-",
                _hours(gpu_hours(e.flops, peak, plan.mfu)),
                _size(e.checkpoint_total),
            ])
        lines.append(f"sweep {sp.sweep.name}: {sp.n_trials} trials")
        lines.append(text_table(["model", "trials", "params", "peak memory @ micro-batch", "gpu share",
                                 "GPU-hours", "checkpoints"], rows))
        notes = [e.note for e in sp.estimates if e.note]
        shared = sum(e.shared_runs for e in sp.estimates)
        if shared:
            lines.append(f"  stage 1 trained once per stage-1 seed: {shared} stage-1 runs for {sp.n_trials} trials")
        if c.gpus:
            gpu = sp.sweep.resources.gpu
            shares = (list(plan.trial_shares(plan.sweeps.index(sp)).values()) if gpu == "auto"
                      else [float(gpu)] * sp.n_trials)
            slots = at_once(shares, c.gpus) if min(shares, default=0) > 0 else sp.n_trials
            by_cpu = int(c.cpus // float(sp.sweep.resources.cpu)) if c.cpus else None
            n_at_once = min(sp.n_trials, slots, by_cpu if by_cpu is not None else slots)
            low, high = min(shares, default=1.0), max(shares, default=1.0)
            gets = (f"each trial gets gpu={high:g} ({'auto' if gpu == 'auto' else 'the sweep file'})" if low == high
                    else f"each trial gets its configuration's gpu share (auto), {low:g} to {high:g}")
            lines.append(f"  packing: {gets}; {'up to ' if low != high else ''}{n_at_once} trial"
                         f"{'s' if n_at_once != 1 else ''} at a time on {c.gpus} GPU"
                         f"{'s' if c.gpus != 1 else ''}" + (f" (bound by cpu={sp.sweep.resources.cpu:g} per trial on "
                                                             f"{c.cpus:g} CPUs)" if by_cpu is not None and by_cpu < slots
                                                             and by_cpu < sp.n_trials else ""))
        lines += [f"  note: {n}" for n in dict.fromkeys(notes)]
    hours = plan.gpu_hours()
    lines.append(f"total: {sum(s.n_trials for s in plan.sweeps)} trials, {plan.flops:.3g} FLOPs, "
                 f"{_hours(hours)} GPU-hours on {gpu_label} at {plan.mfu:.0%} MFU ({plan.mfu_source})")
    peaks = [sp.peak for sp in plan.sweeps if sp.peak]
    lines.append(f"peak memory per trial: up to {_size(max(peaks)) if peaks else '?'}; checkpoints written: "
                 f"{_size(sum(s.checkpoint_total for s in plan.sweeps))} in all")
    downloads = plan.downloads()
    if downloads:
        parts = [f"{what} ({'cached' if cached else _size(size) if size else 'size given by its server'})"
                 for what, size, cached in downloads]
        lines.append("downloads: " + ", ".join(parts))
    else:
        lines.append("downloads: none")
    refused = refusal(plan)
    if refused:
        lines.append(f"refused: {refused}")
    return "\n".join(lines)
