"""Load the language model and tokenizer a trial finetunes.

Three ways to name a model, one code path after loading:

- a Hugging Face hub name or a local folder (``EleutherAI/pythia-2.8b``, ``/models/t5-3b``): loaded
  with ``AutoModelForCausalLM`` / ``AutoModelForSeq2SeqLM.from_pretrained`` and ``AutoTokenizer``;
- the same with ``from_scratch: true``: the architecture from the model's config, random weights.
  The Pythia suite's architectures are embedded here (:data:`PYTHIA_ARCHITECTURES`), so a
  from-scratch Pythia needs no hub access for the model (its tokenizer still comes from the hub or
  from ``model.tokenizer``, a local folder);
- the named CPU-smoke models ``tiny-gpt-neox`` and ``tiny-t5`` (:data:`BUILTIN_MODELS`): a tiny
  architecture from an in-code config with random weights, plus a byte-level BPE tokenizer trained
  deterministically on the dataset's text. They exist so that smoke sweeps and tests run offline on
  a CPU; they are never used in place of a model that fails to load.

Pythia (and GPT-Neo, Llama) have no pad token: like the paper, we pad with EOS.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from metaocl.config import ConfigError

# hidden, layers, heads, intermediate, vocab (the embedding matrix is padded beyond the tokenizer's
# 50277 tokens). All Pythia models use rotary on 25% of each head, base 10000, 2048 positions,
# parallel residual, untied embeddings. Source: the Pythia paper (Biderman et al. 2023, table 1) and
# the released model configs.
PYTHIA_ARCHITECTURES: dict[str, dict[str, int]] = {
    "pythia-14m": dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512, vocab_size=50304),
    "pythia-70m": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048, vocab_size=50304),
    "pythia-160m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, vocab_size=50304),
    "pythia-410m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, vocab_size=50304),
    "pythia-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=8, intermediate_size=8192, vocab_size=50304),
    "pythia-1.4b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, intermediate_size=8192, vocab_size=50304),
    "pythia-2.8b": dict(hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, intermediate_size=10240, vocab_size=50304),
    "pythia-6.9b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=16384, vocab_size=50432),
    "pythia-12b": dict(hidden_size=5120, num_hidden_layers=36, num_attention_heads=40, intermediate_size=20480, vocab_size=50688),
}
PYTHIA_COMMON = dict(
    rotary_pct=0.25,
    rotary_emb_base=10000,
    max_position_embeddings=2048,
    use_parallel_residual=True,
    tie_word_embeddings=False,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    bos_token_id=0,
    eos_token_id=0,
)

# The named CPU-smoke models. Small enough to train a few epochs on 2 CPU cores in seconds.
BUILTIN_MODELS: dict[str, dict] = {
    "tiny-gpt-neox": dict(
        kind="causal",
        vocab_size=384,
        arch=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                  rotary_pct=0.25, rotary_emb_base=10000, max_position_embeddings=256,
                  use_parallel_residual=True, tie_word_embeddings=False),
    ),
    "tiny-t5": dict(
        kind="seq2seq",
        vocab_size=384,
        arch=dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
                  relative_attention_num_buckets=16, relative_attention_max_distance=64,
                  dropout_rate=0.0, feed_forward_proj="relu", tie_word_embeddings=False),
    ),
}

CAUSAL_EOS = "<|endoftext|>"
T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"


@dataclasses.dataclass
class LoadedModel:
    """What the engine needs: the model, its tokenizer and whether it is an encoder-decoder."""

    model: object  # transformers.PreTrainedModel
    tokenizer: object  # transformers.PreTrainedTokenizerBase
    is_seq2seq: bool

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)


def pythia_key(name: str) -> str | None:
    """``EleutherAI/pythia-1b-deduped`` -> ``pythia-1b``; None for non-Pythia names."""
    base = name.rstrip("/").split("/")[-1].lower()
    for suffix in ("-deduped", "-v0"):
        base = base.replace(suffix, "")
    return base if base in PYTHIA_ARCHITECTURES else None


def pythia_config(name: str):
    """The ``GPTNeoXConfig`` of a Pythia model, offline."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(**PYTHIA_ARCHITECTURES[pythia_key(name)], **PYTHIA_COMMON)


# ------------------------------------------------------------------------------------------------
# Builtin tiny models
# ------------------------------------------------------------------------------------------------
def train_builtin_tokenizer(kind: str, texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts`` (deterministic for the same texts).

    Causal: EOS ``<|endoftext|>`` (id 0) is also the pad token, as for Pythia. Seq2seq: T5's
    conventions, ``<pad>`` = 0, ``</s>`` = 1 appended to every encoded sequence, ``<unk>`` = 2.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [CAUSAL_EOS] if kind == "causal" else [T5_PAD, T5_EOS, T5_UNK]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sorted(set(texts)), trainer=trainer)
    if kind == "causal":
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=CAUSAL_EOS, pad_token=CAUSAL_EOS,
                                       bos_token=CAUSAL_EOS, unk_token=CAUSAL_EOS)
    eos_id = tok.token_to_id(T5_EOS)
    tok.post_processor = processors.TemplateProcessing(single=f"$A {T5_EOS}", special_tokens=[(T5_EOS, eos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=T5_EOS, pad_token=T5_PAD, unk_token=T5_UNK)


def build_builtin(name: str, texts: Iterable[str]) -> LoadedModel:
    """A named CPU-smoke model with random weights and a tokenizer trained on ``texts``."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, T5Config, T5ForConditionalGeneration

    spec = BUILTIN_MODELS[name]
    tokenizer = train_builtin_tokenizer(spec["kind"], texts, spec["vocab_size"])
    vocab = len(tokenizer)
    with torch.random.fork_rng():  # weights depend only on the trial seed set before this call
        if spec["kind"] == "causal":
            eos = tokenizer.eos_token_id
            cfg = GPTNeoXConfig(vocab_size=vocab, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, **spec["arch"])
            model = GPTNeoXForCausalLM(cfg)
        else:
            cfg = T5Config(vocab_size=vocab, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                           decoder_start_token_id=tokenizer.pad_token_id, **spec["arch"])
            model = T5ForConditionalGeneration(cfg)
    return _finish(LoadedModel(model, tokenizer, spec["kind"] == "seq2seq"))


# ------------------------------------------------------------------------------------------------
# Hub names and local folders
# ------------------------------------------------------------------------------------------------
def _is_seq2seq_config(config) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def _load_error(field: str, name: str, e: Exception) -> ConfigError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ConfigError(f"{field}: cannot load {name!r} (not a local folder, and the hub said: {first[:200]})")


def load_pretrained(
    name: str,
    *,
    kind: str = "auto",
    from_scratch: bool = False,
    tokenizer_name: str | None = None,
    dtype: str = "float32",
) -> LoadedModel:
    """Load by hub name or local folder; ``from_scratch`` keeps the architecture, re-initialises weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    if from_scratch and pythia_key(name):
        config = pythia_config(name)
    else:
        try:
            config = AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as e:
            raise _load_error("model.name", name, e) from None
    is_seq2seq = _is_seq2seq_config(config) if kind == "auto" else kind == "seq2seq"
    if is_seq2seq != _is_seq2seq_config(config):
        raise ConfigError(f"model.kind: {kind!r} does not match {name!r}, which is "
                          f"{'an encoder-decoder' if _is_seq2seq_config(config) else 'a decoder-only model'}")
    auto = AutoModelForSeq2SeqLM if is_seq2seq else AutoModelForCausalLM
    if from_scratch:
        model = auto.from_config(config, dtype=torch_dtype)
    else:
        try:
            model = auto.from_pretrained(name, dtype=torch_dtype)
        except (OSError, ValueError) as e:
            raise _load_error("model.name", name, e) from None
    tok_name = tokenizer_name or name
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_name)
    except (OSError, ValueError) as e:
        raise _load_error("model.tokenizer" if tokenizer_name else "model.name", tok_name, e) from None
    return _finish(LoadedModel(model, tokenizer, is_seq2seq))


def _finish(loaded: LoadedModel) -> LoadedModel:
    """Pad with EOS where the tokenizer has no pad token (Pythia, GPT-Neo, Llama), as the paper did."""
    tok, model = loaded.tokenizer, loaded.model
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
    if len(tok) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tok))
    return loaded


def load_model(model_cfg, texts: Iterable[str] = ()) -> LoadedModel:
    """Load the model a ``ModelConfig`` names (builtin tiny model, hub name, or local folder).

    ``texts`` trains the builtin tokenizer; it is ignored for hub and local models.
    """
    if model_cfg.name in BUILTIN_MODELS:
        spec = BUILTIN_MODELS[model_cfg.name]
        if model_cfg.kind not in ("auto", spec["kind"]):
            raise ConfigError(f"model.kind: {model_cfg.kind!r} does not match builtin {model_cfg.name!r} ({spec['kind']})")
        return build_builtin(model_cfg.name, texts)
    return load_pretrained(
        model_cfg.name,
        kind=model_cfg.kind,
        from_scratch=model_cfg.from_scratch,
        tokenizer_name=model_cfg.tokenizer,
        dtype="bfloat16" if model_cfg.dtype == "bfloat16" else "float32",
    )
