"""The model provider: dense and MoE GPTs build, run forward and backward, and train every parameter;
the layer implementation is chosen as the config asks and the machine allows.

The models run in one spawned rank (tests/multiproc.py) so megatron's global parallel state never
enters the pytest process.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from r1hpc.config import ConfigError
from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
from r1hpc.model.config import ModelConfig
from r1hpc.model.provider import (build_model, causal_attention_mask, check_fp8_support, fp8_environment,
                                  padded_vocab_size, select_transformer_impl, transformer_config)
from r1hpc.run_config import load_run_config
from tests.multiproc import run_workers

BATCH, SEQ = 4, 32
DENSE = dict(vocab_size=200, num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
             num_query_groups=2, max_seq_length=SEQ)
MOE = dict(DENSE, num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=64,
           moe_shared_expert_intermediate_size=64)
CASES = {"dense": DENSE, "untied": dict(DENSE, tie_embeddings=False), "moe": MOE,
         "moe_no_aux": dict(MOE, moe_aux_loss_coeff=0.0)}


def _forward_backward(model_kw: dict) -> dict:
    """Build, run next-token cross entropy on a fixed batch, backward; report what the tests check."""
    from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker

    model_cfg, parallel = ModelConfig(**model_kw), ParallelConfig()
    init_distributed(parallel, model_cfg, seed=11)
    tracker = get_moe_layer_wise_logging_tracker()
    tracker.clear()
    gpt = build_model(model_cfg, parallel)
    seqs = torch.randint(0, model_cfg.vocab_size, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(5))
    tokens, labels = seqs[:, :-1], seqs[:, 1:]
    logits = gpt(tokens, torch.arange(SEQ)[None].expand_as(tokens), causal_attention_mask(SEQ))
    F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten()).backward()
    named = dict(gpt.named_parameters())
    qkv = next(p for n, p in named.items() if n.endswith("self_attention.linear_qkv.weight"))
    routers = {n: p.grad.clone() for n, p in named.items() if n.endswith("router.weight")}
    return {
        "logits_shape": tuple(logits.shape),
        "finite": bool(torch.isfinite(logits).all()),
        "names": sorted(named),
        "no_grad": sorted(n for n, p in named.items() if p.requires_grad and (p.grad is None or not p.grad.any())),
        "num_params": sum(p.numel() for p in named.values()),
        "qkv_rows": qkv.shape[0],
        "router_grads": routers,
        "aux_losses": {k: v["values"].tolist() for k, v in tracker.items()},
    }


def _run_cases(cases: dict) -> dict:
    try:
        return {name: _forward_backward(kw) for name, kw in cases.items()}
    finally:
        destroy_distributed()


@pytest.fixture(scope="module")
def reports() -> dict:
    (out,) = run_workers(_run_cases, 1, CASES)
    return out


@pytest.mark.multiproc
@pytest.mark.parametrize("case", list(CASES))
def test_forward_backward_trains_every_parameter(reports, case):
    r = reports[case]
    assert r["logits_shape"] == (BATCH, SEQ, padded_vocab_size(200, 1)) == (BATCH, SEQ, 256)
    assert r["finite"]
    assert r["no_grad"] == []


@pytest.mark.multiproc
def test_moe_has_routed_and_shared_experts_and_an_aux_loss(reports):
    r = reports["moe"]
    assert any(".mlp.experts." in n for n in r["names"]) and any(".mlp.shared_experts." in n for n in r["names"])
    assert len(r["router_grads"]) == DENSE["num_layers"]
    losses = r["aux_losses"]["load_balancing_loss"]
    assert len(losses) == DENSE["num_layers"] and all(v > 0 for v in losses)
    # Same weights and batch (same seed): only the aux loss term can move the router's gradient.
    for name, grad in r["router_grads"].items():
        assert not torch.allclose(grad, reports["moe_no_aux"]["router_grads"][name])


@pytest.mark.multiproc
def test_gqa_shrinks_the_kv_projection(reports):
    head_dim = DENSE["hidden_size"] // DENSE["num_attention_heads"]
    assert reports["dense"]["qkv_rows"] == (DENSE["num_attention_heads"] + 2 * DENSE["num_query_groups"]) * head_dim


@pytest.mark.multiproc
def test_untied_embeddings_add_an_output_layer(reports):
    extra = reports["untied"]["num_params"] - reports["dense"]["num_params"]
    assert extra == padded_vocab_size(DENSE["vocab_size"], 1) * DENSE["hidden_size"]
    assert "output_layer.weight" in reports["untied"]["names"]
    assert "output_layer.weight" not in reports["dense"]["names"]


@pytest.mark.parametrize("impl, fp8, te, expected", [
    ("auto", None, True, "transformer_engine"),
    ("auto", None, False, "local"),
    ("local", None, True, "local"),
    ("local", None, False, "local"),
    ("transformer_engine", None, True, "transformer_engine"),
    ("auto", "hybrid", True, "transformer_engine"),
    ("transformer_engine", "e4m3", True, "transformer_engine"),
])
def test_select_transformer_impl(impl, fp8, te, expected):
    assert select_transformer_impl(ModelConfig(transformer_impl=impl, fp8=fp8), te_available=te) == expected


@pytest.mark.parametrize("impl, fp8, te, fault", [
    ("transformer_engine", None, False, "model.transformer_impl is 'transformer_engine' but transformer_engine "
                                        "cannot be imported"),
    ("auto", "hybrid", False, "model.fp8 = 'hybrid' needs Transformer Engine with CUDA"),
    ("auto", "e4m3", False, "FP8 is never silently dropped"),
    ("local", "hybrid", True, "model.fp8 = 'hybrid' needs Transformer Engine layers, but model.transformer_impl "
                              "is 'local'"),
])
def test_select_transformer_impl_refuses(impl, fp8, te, fault):
    with pytest.raises(ConfigError) as e:
        select_transformer_impl(ModelConfig(transformer_impl=impl, fp8=fp8), te_available=te)
    assert fault in str(e.value)


def test_fp8_with_local_layers_is_a_config_error():
    with pytest.raises(ConfigError, match="fp8 needs transformer_impl"):
        ModelConfig(fp8="hybrid", transformer_impl="local").validate()


@pytest.mark.parametrize("vocab, tp, padded", [(200, 1, 256), (256, 1, 256), (257, 1, 384), (1, 1, 128),
                                               (256, 2, 256), (257, 2, 512), (50257, 8, 51200)])
def test_padded_vocab_size(vocab, tp, padded):
    assert padded_vocab_size(vocab, tp) == padded
    assert padded % (128 * tp) == 0 and padded - vocab < 128 * tp


def test_build_model_needs_a_vocab_size():
    with pytest.raises(ConfigError, match="model.vocab_size is not set"):
        build_model(ModelConfig(), ParallelConfig())


FP8_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("fp8_*.yaml"))


@pytest.mark.parametrize("recipe, te, capability", [
    ("delayed", "1.13.0", (9, 0)), ("tensorwise", "2.2.0", (9, 0)), ("blockwise", "2.3.0", (9, 0)),
    ("blockwise", "2.8.0", (10, 0)), ("mxfp8", "2.1.0", (10, 0)),
])
def test_fp8_recipes_accepted_where_te_and_gpu_have_them(recipe, te, capability):
    check_fp8_support(ModelConfig(fp8="hybrid", fp8_recipe=recipe), te, capability)


@pytest.mark.parametrize("recipe, te, capability, fault", [
    ("delayed", None, None, "model.fp8 = 'hybrid' needs Transformer Engine with CUDA"),
    ("delayed", "2.8.0", None, "model.fp8 = 'hybrid' with model.fp8_recipe = 'delayed' needs a GPU of compute "
                               "capability >= 9.0 (Hopper), found no CUDA device"),
    ("tensorwise", "2.8.0", (8, 0), "needs a GPU of compute capability >= 9.0 (Hopper), found compute capability 8.0"),
    ("mxfp8", "2.8.0", (9, 0), "model.fp8_recipe = 'mxfp8' needs a GPU of compute capability >= 10.0 (Blackwell)"),
    ("tensorwise", "2.1.0", (9, 0), "model.fp8_recipe = 'tensorwise' needs Transformer Engine >= 2.2.0.dev0, "
                                    "found 2.1.0"),
    ("blockwise", "2.2.0", (9, 0), "model.fp8_recipe = 'blockwise' needs Transformer Engine >= 2.3.0.dev0"),
])
def test_fp8_refused_without_te_hopper_or_recipe(recipe, te, capability, fault):
    with pytest.raises(ConfigError) as e:
        check_fp8_support(ModelConfig(fp8="hybrid", fp8_recipe=recipe), te, capability)
    assert fault in str(e.value)


def test_fp8_off_needs_nothing_and_this_cpu_machine_is_refused():
    check_fp8_support(ModelConfig(), None, None)
    te, capability = fp8_environment()
    if capability is None or capability < (9, 0):
        with pytest.raises(ConfigError, match="model.fp8 = 'hybrid'"):
            check_fp8_support(ModelConfig(fp8="hybrid"), te, capability)


@pytest.mark.parametrize("overrides, fault", [
    (["model.fp8=hybrid", "model.fp8_bf16_edge_layers=1"], "fp8_bf16_edge_layers needs a current-scaling recipe"),
    (["model.fp8_bf16_edge_layers=3", "model.num_layers=4"], "fp8_bf16_edge_layers must be between 0 and num_layers"),
    (["model.fp8_amax_history_len=0"], "fp8_amax_history_len must be >= 1"),
    (["model.fp8_recipe=rowwise"], "model.fp8_recipe"),
])
def test_fp8_keys_are_checked_at_load(overrides, fault):
    with pytest.raises(ConfigError, match=fault):
        load_run_config(None, overrides)


@pytest.mark.parametrize("path", FP8_CONFIGS, ids=lambda p: p.stem)
def test_fp8_configs_reach_megatron(path):
    """Each FP8 recipe loads, asks for TE layers, and its FP8 settings arrive in megatron's config
    (built dense here: megatron's MoE+FP8 check needs TE installed)."""
    cfg = load_run_config(str(path), ["model.num_moe_experts=null"])
    assert cfg.model.fp8 == "hybrid" and cfg.model.transformer_impl == "transformer_engine"
    assert cfg.model.params_dtype == "bf16"
    tc = transformer_config(cfg.model, cfg.parallel)
    assert (tc.fp8, tc.fp8_recipe) == ("hybrid", cfg.model.fp8_recipe)
    assert tc.first_last_layers_bf16 == (cfg.model.fp8_bf16_edge_layers > 0)
    assert tc.num_layers_at_start_in_bf16 == tc.num_layers_at_end_in_bf16 == cfg.model.fp8_bf16_edge_layers


def test_fp8_configs_cover_the_recipes():
    assert {p.stem for p in FP8_CONFIGS} == {"fp8_moe_delayed", "fp8_moe_tensorwise", "fp8_moe_blockwise"}
