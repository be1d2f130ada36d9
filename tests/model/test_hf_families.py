"""HF config.json -> ModelConfig, the tensor names of each family, and the safetensors streaming
writer: pure functions, no model built."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from r1hpc.model.config import ModelConfig
from r1hpc.model.hf.families import (FAMILIES, UnsupportedHFFeature, family_of, hf_config_from_model,
                                     model_config_from_hf)
from r1hpc.model.hf.importer import check_tensor_names
from r1hpc.model.hf.layout import global_plan, hf_shapes
from r1hpc.model.hf.safetensors_io import INDEX, SafetensorsReader, StreamingWriter

LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50, "rms_norm_eps": 1e-5,
         "rope_theta": 100000.0, "tie_word_embeddings": True, "hidden_act": "silu"}
QWEN2_MOE = dict(LLAMA, model_type="qwen2_moe", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                 shared_expert_intermediate_size=48, norm_topk_prob=False, tie_word_embeddings=False)


def test_llama_config_maps_to_model_config():
    base = ModelConfig(params_dtype="bf16", max_seq_length=1024)
    cfg = model_config_from_hf(LLAMA, base=base)
    assert (cfg.num_layers, cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_attention_heads, cfg.num_query_groups,
            cfg.vocab_size, cfg.rotary_base, cfg.norm_eps) == (2, 64, 96, 4, 2, 50, 100000.0, 1e-5)
    assert cfg.tie_embeddings and not cfg.add_qkv_bias and not cfg.is_moe and cfg.rope_scaling_factor is None
    assert cfg.params_dtype == "bf16" and cfg.max_seq_length == 1024  # run settings are kept


def test_qwen2_moe_config_maps_routing_and_shared_expert():
    cfg = model_config_from_hf(QWEN2_MOE)
    assert (cfg.num_moe_experts, cfg.moe_router_topk, cfg.moe_ffn_hidden_size) == (8, 2, 32)
    assert cfg.moe_shared_expert_intermediate_size == 48 and cfg.moe_shared_expert_gate
    assert cfg.moe_router_pre_softmax and cfg.add_qkv_bias
    assert not model_config_from_hf(dict(QWEN2_MOE, norm_topk_prob=True)).moe_router_pre_softmax


def test_transformers5_rope_parameters_and_llama3_scaling():
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    hf = {k: v for k, v in LLAMA.items() if k != "rope_theta"} | {"rope_parameters": rope}
    cfg = model_config_from_hf(hf)
    assert (cfg.rotary_base, cfg.rope_scaling_factor) == (500000.0, 32.0)


@pytest.mark.parametrize("change, fault", [
    ({"model_type": "gemma"}, "model_type 'gemma' is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act = 'gelu' is not supported"),
    ({"mlp_bias": True}, "mlp_bias = True is not supported"),
    ({"attention_bias": True}, "attention_bias = true is not supported"),
    ({"head_dim": 32}, "head_dim = 32 differs"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "RoPE scaling 'yarn'"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0, "low_freq_factor": 2.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}, "RoPE scaling 'llama3'"),
])
def test_unsupported_features_are_named(change, fault):
    with pytest.raises(UnsupportedHFFeature, match=fault.replace("(", r"\(")):
        model_config_from_hf(dict(LLAMA, **change), where="ckpt/config.json")


def test_mixed_dense_and_moe_layers_are_refused():
    with pytest.raises(UnsupportedHFFeature, match="mlp_only_layers"):
        model_config_from_hf(dict(QWEN2_MOE, mlp_only_layers=[0]))


@pytest.mark.parametrize("hf", [LLAMA, QWEN2_MOE, dict(LLAMA, model_type="mixtral", num_local_experts=4,
                                                        num_experts_per_tok=2, sliding_window=None)])
def test_exported_config_maps_back_to_the_same_model_config(hf):
    cfg = model_config_from_hf(hf)
    family = family_of(hf)
    assert model_config_from_hf(hf_config_from_model(cfg, family, "float32")) == cfg


def _write_checkpoint(path, cfg: ModelConfig, family, drop=(), extra=()):
    tensors = {n: torch.zeros(s) for spec in global_plan(cfg) for n, s in
               zip(family.hf_names(spec.role), hf_shapes(spec.role, cfg)) if n not in drop}
    tensors.update({n: torch.zeros(1) for n in extra})
    save_file(tensors, str(path / "model.safetensors"))


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    cfg = model_config_from_hf(LLAMA)
    family = FAMILIES["llama"]
    _write_checkpoint(tmp_path, cfg, family, drop=("model.layers.1.mlp.up_proj.weight",),
                      extra=("model.layers.0.mlp.up_proj.bias", "model.layers.0.self_attn.rotary_emb.inv_freq"))
    with SafetensorsReader(tmp_path) as reader, pytest.raises(Exception) as err:
        check_tensor_names(reader, family, cfg)
    assert "missing ['model.layers.1.mlp.up_proj.weight']" in str(err.value)
    assert "unexpected ['model.layers.0.mlp.up_proj.bias']" in str(err.value)  # inv_freq is ignored


def test_streaming_writer_shards_with_an_index_and_reads_back(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {f"t{i}": torch.randn(5, 7, generator=g).to(dt) for i, dt in
               enumerate([torch.float32, torch.bfloat16, torch.float32, torch.float16])}
    tensors["empty"] = torch.zeros(0)
    writer = StreamingWriter(tmp_path, [(n, t.shape, t.dtype) for n, t in tensors.items()], max_shard_bytes=150)
    for n, t in tensors.items():
        writer.write(n, t)
    writer.finish()
    index = json.loads((tmp_path / INDEX).read_text())
    assert len(set(index["weight_map"].values())) == len(writer.files) > 1
    assert not list(tmp_path.glob("*.partial"))
    loaded = {k: v for f in writer.files for k, v in load_file(tmp_path / f).items()}  # safetensors' own reader
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[n], t) for n, t in tensors.items())
    with SafetensorsReader(tmp_path) as reader:  # ours, sliced
        assert torch.equal(reader.read("t2", slice(1, 3), slice(2, 5)), tensors["t2"][1:3, 2:5])
        assert torch.equal(reader.read("t1", None, slice(0, 2)), tensors["t1"][:, :2])


def test_streaming_writer_refuses_a_tensor_out_of_plan(tmp_path):
    writer = StreamingWriter(tmp_path, [("a", (2,), torch.float32), ("b", (3,), torch.float32)])
    with pytest.raises(RuntimeError, match="plan expected a"):
        writer.write("b", torch.zeros(3))
    assert not (tmp_path / "model.safetensors").exists()


def test_train_refuses_hf_path_instead_of_ignoring_it():
    from r1hpc.config import ConfigError
    from r1hpc.run_config import load_run_config
    from r1hpc.train.trainer import Trainer

    cfg = load_run_config("configs/ci_r1zero.yaml", ["model.hf_path=/models/qwen2"])
    with pytest.raises(ConfigError, match="model.hf_path"):
        Trainer(cfg).run()


@pytest.mark.parametrize("model_kw, family, fault", [
    (dict(add_qkv_bias=True), "llama", "Q/K/V biases"),
    (dict(), "qwen2", "no Q/K/V biases"),
    (dict(num_moe_experts=4), "llama", "MoE"),
    (dict(num_moe_experts=4, moe_shared_expert_intermediate_size=8, moe_shared_expert_gate=True), "mixtral",
     "a shared expert"),
    (dict(num_moe_experts=4, moe_shared_expert_intermediate_size=8, add_qkv_bias=True), "qwen2_moe",
     "without its sigmoid gate"),
])
def test_exports_a_family_cannot_represent_are_refused(model_kw, family, fault):
    from r1hpc.model.hf.families import check_exportable

    with pytest.raises(UnsupportedHFFeature, match=fault):
        check_exportable(ModelConfig(**model_kw), FAMILIES[family])


@pytest.mark.parametrize("model_kw, family", [
    (dict(), "llama"), (dict(add_qkv_bias=True), "qwen2"), (dict(num_moe_experts=4), "mixtral"),
    (dict(num_moe_experts=4, moe_shared_expert_intermediate_size=8, moe_shared_expert_gate=True,
          add_qkv_bias=True), "qwen2_moe"),
])
def test_family_chosen_for_a_model_without_an_imported_config(model_kw, family):
    from r1hpc.model.hf.families import family_for_model

    assert family_for_model(ModelConfig(**model_kw)).model_type == family
