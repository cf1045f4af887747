"""Model loading: the builtin tiny models, save_pretrained -> from_pretrained round trips through the
same code path as hub names, the embedded Pythia architectures, and one-line errors."""

from __future__ import annotations

import pytest
import torch

from metaocl.config import ConfigError, from_dict
from metaocl.configs.lm import LMConfig, ModelConfig
from metaocl.engine.lm_models import (
    PYTHIA_ARCHITECTURES,
    build_builtin,
    load_model,
    pythia_config,
    pythia_key,
    train_builtin_tokenizer,
)

torch.set_num_threads(1)

TEXTS = ["Q: When was xyzab born?\nA: 1920s\n", "qwerty xyzab Cleopatra\n", "Q: What did abcde do?\nA: film director\n",
         "Q: Who is abcde?\nA: Ada Lovelace\n", "asdfgh abcde Ada Lovelace\n"]


@pytest.mark.parametrize("name,seq2seq", [("tiny-gpt-neox", False), ("tiny-t5", True)])
def test_tiny_model_saved_and_loaded_by_the_from_pretrained_path(tmp_path, name, seq2seq):
    torch.manual_seed(0)
    built = build_builtin(name, TEXTS)
    assert built.is_seq2seq == seq2seq
    built.model.save_pretrained(tmp_path)
    built.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(ModelConfig(name=str(tmp_path)))  # AutoConfig/AutoModel*/AutoTokenizer.from_pretrained
    assert loaded.is_seq2seq == seq2seq and type(loaded.model) is type(built.model)
    text = "Q: When was xyzab born?\nA:"
    assert loaded.tokenizer(text)["input_ids"] == built.tokenizer(text)["input_ids"]
    assert loaded.eos_id == built.eos_id and loaded.pad_id == built.pad_id
    x = torch.tensor([built.tokenizer(text)["input_ids"]])
    kw = {"decoder_input_ids": torch.zeros_like(x[:, :3])} if seq2seq else {}
    built.model.eval(), loaded.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=x, **kw).logits, built.model(input_ids=x, **kw).logits)
    with pytest.raises(ConfigError, match="model.kind"):
        load_model(ModelConfig(name=str(tmp_path), kind="causal" if seq2seq else "seq2seq"))


def test_causal_tiny_model_pads_with_eos_like_pythia():
    built = build_builtin("tiny-gpt-neox", TEXTS)
    assert built.pad_id == built.eos_id == built.model.config.pad_token_id


def test_builtin_tokenizer_is_deterministic_and_lossless():
    a = train_builtin_tokenizer("causal", TEXTS, 300)
    b = train_builtin_tokenizer("causal", list(reversed(TEXTS)), 300)
    assert a.get_vocab() == b.get_vocab()
    for t in TEXTS:
        assert a.decode(a(t)["input_ids"]) == t
    t5 = train_builtin_tokenizer("seq2seq", TEXTS, 300)
    assert t5("xyzab")["input_ids"][-1] == t5.eos_token_id  # T5 convention: </s> appended


def test_pythia_architectures_match_the_published_parameter_counts():
    """Total parameters of the Pythia suite (Biderman et al. 2023), built on the meta device."""
    from transformers import GPTNeoXForCausalLM

    published = {"pythia-70m": 70_426_624, "pythia-410m": 405_334_016, "pythia-1b": 1_011_781_632,
                 "pythia-2.8b": 2_775_208_960, "pythia-12b": 11_846_072_320}
    for key, n in published.items():
        with torch.device("meta"):
            model = GPTNeoXForCausalLM(pythia_config(f"EleutherAI/{key}"))
        assert sum(p.numel() for p in model.parameters()) == n, key
    assert pythia_key("EleutherAI/pythia-1b-deduped") == "pythia-1b" and pythia_key("gpt2") is None
    assert set(published) <= set(PYTHIA_ARCHITECTURES)


def test_unloadable_model_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as e:
        load_model(ModelConfig(name="/nonexistent/model/folder"))
    assert "model.name" in str(e.value) and "\n" not in str(e.value)


def test_lm_config_cross_field_rules():
    with pytest.raises(ConfigError, match="train.epochs"):
        from_dict(LMConfig, {"data": {"stages": "single"}, "train": {"epochs": [20, 10]}})
    with pytest.raises(ConfigError, match="data.seq2seq"):
        from_dict(LMConfig, {"model": {"name": "tiny-t5"}})
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(LMConfig, {"train": {"epoch": [1]}})
    cfg = from_dict(LMConfig, {"data": {"stages": "three_stage"}})
    assert cfg.epochs == [20, 20, 10] and cfg.train.lr == 5e-5 and cfg.train.optimizer == "adafactor"
