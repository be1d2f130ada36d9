"""A converted checkpoint as the R1-Zero base (pretrain.base_dir): used as it is, never pretrained or
overwritten; its architecture comes from its config.json and the recipe keeps only run settings. A
base named by path that other settings built is refused, not pretrained over."""
from __future__ import annotations

import json
import types

import pytest

from r1hpc.config import ConfigError
from r1hpc.model.base import base_model_config
from r1hpc.run_config import load_run_config
from r1hpc.train.pretrain import ensure_base

HF_CONFIG = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300, "rms_norm_eps": 1e-6,
             "tie_word_embeddings": False, "rope_theta": 50000.0, "hidden_act": "silu"}


@pytest.fixture
def converted(tmp_path):
    folder = tmp_path / "converted"
    (folder / "hf_assets").mkdir(parents=True)
    (folder / "hf_assets" / "config.json").write_text(json.dumps(HF_CONFIG))
    (folder / "convert.json").write_text(json.dumps({"family": "llama", "model": {"add_qkv_bias": False}}))
    return folder


def test_converted_base_is_used_as_is(converted, tmp_path):
    (converted / "tokenizer.json").write_text("{}")
    before = sorted(p.name for p in converted.iterdir())
    cfg = load_run_config(None, [f"pretrain.base_dir={converted}", f"run.output_dir={tmp_path}", "model.max_seq_length=200",
                             "model.num_layers=9", "model.params_dtype=bf16"])
    base_dir, meta = ensure_base(cfg, log=lambda *a: None)
    assert base_dir == converted and meta["family"] == "llama"
    assert sorted(p.name for p in converted.iterdir()) == before
    model = base_model_config(cfg, converted, types.SimpleNamespace(vocab_size=290))
    assert (model.num_layers, model.hidden_size, model.num_query_groups, model.vocab_size, model.rotary_base,
            model.tie_embeddings) == (3, 64, 2, 300, 50000.0, False)  # the checkpoint's architecture ...
    assert (model.max_seq_length, model.params_dtype) == (200, "bf16")  # ... with the recipe's run settings
    with pytest.raises(ConfigError, match="tokenizer has 301 tokens"):
        base_model_config(cfg, converted, types.SimpleNamespace(vocab_size=301))


def test_converted_base_without_a_tokenizer_is_refused(converted, tmp_path):
    cfg = load_run_config(None, [f"pretrain.base_dir={converted}", f"run.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="has no tokenizer.json"):
        ensure_base(cfg, log=lambda *a: None)


def test_a_named_base_from_other_settings_is_not_pretrained_over(tmp_path):
    """pretrain.base_dir may be shared by several runs: one whose settings differ is refused, and the
    base stays as it was."""
    base = tmp_path / "shared_base"
    base.mkdir()
    (base / "meta.json").write_text(json.dumps({"fingerprint": "0123456789abcdef", "steps": 1000}))
    before = (base / "meta.json").read_text()
    cfg = load_run_config(None, [f"pretrain.base_dir={base}", f"run.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="pretrain.base_dir: .* holds a base pretrained from other settings"):
        ensure_base(cfg, log=lambda *a: None)
    assert sorted(p.name for p in base.iterdir()) == ["meta.json"] and (base / "meta.json").read_text() == before
