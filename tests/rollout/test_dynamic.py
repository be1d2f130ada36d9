"""rollout.engine=dynamic (megatron's DynamicInferenceEngine, continuous batching over a paged KV cache)
draws exactly what the static loop draws: the same greedy tokens, and with the compiled sampler (keyed
by request and step, not batch slot) the same sampled tokens, on dense and MoE models, at TP=1 and
TP=2, whether requests run all at once, join as others finish, or wait for KV blocks; a MoE's
recorded routing (routing replay) is the same in both engines."""
from __future__ import annotations

import pytest
import torch

from r1hpc.config import ConfigError
from r1hpc.eval.heldout import EvalConfig
from r1hpc.model import mcore_compat
from r1hpc.rollout.engines import check_dynamic_supported, generate_with
from r1hpc.rollout.generate import RolloutConfig
from tests.multiproc import run_workers
from tests.rollout.dynamic_workers import DENSE, MAX_NEW, MOE, VARIANTS, engines_compared

pytestmark = pytest.mark.multiproc
DYNAMIC_ON_CPU = torch.cuda.is_available() or mcore_compat.features().dynamic_engine_cpu
needs_dynamic = pytest.mark.skipif(not DYNAMIC_ON_CPU, reason="this megatron-core series' dynamic engine has no CPU "
                                   "patches (the refusal is tested below)")


def _assert_same_samples(got: dict, want: dict, where: str) -> None:
    assert got["ids"] == want["ids"], where
    assert got["truncated"] == want["truncated"], where
    # a MoE records each fed token's experts (routing replay): the same in both engines
    for a, b in zip(got["routing"], want["routing"]):
        assert (a is None and b is None) or torch.equal(a, b), where
    # fp32 sums in another order (paged SDPA vs megatron's attention, flat vs [b, s] MoE dispatch), amplified
    # by the test model's large init scale: up to ~3e-4 seen; a wrong key or position costs far more
    for a, b in zip(got["logps"], want["logps"]):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3, msg=where)
    for a, b in zip(got["ents"], want["ents"]):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3, msg=where)


def _check_engines(out: dict) -> None:
    for where, run in out.items():
        if isinstance(run, dict):
            assert not run["logp_requires_grad"], where  # plain tensors, usable by the trainer
            # the test model's parameters require grad, as a policy's do when the trainer rolls out: a decode
            # forward with autograd on would keep every step's graph alive (memory grows with the response)
            assert run["forwards"] > 0 and run["forwards_with_grad"] == 0, where
    static = out["static/greedy"]
    lengths = [len(r) for r in static["ids"]]
    # the workload the engines are compared on: mixed lengths, most short, a tail at the limit
    assert sum(n <= 6 for n in lengths) >= len(lengths) // 3 and 1 <= sum(n == MAX_NEW for n in lengths) <= 8, lengths
    assert len(set(lengths)) >= 6, lengths
    for name in VARIANTS:
        _assert_same_samples(out[f"{name}/greedy"], static, f"{name} greedy")
        _assert_same_samples(out[f"{name}/sampled"], out["static/sampled"], f"{name} sampled")
    assert out["5-rows/greedy"]["seen"]["mixed"]  # later requests were prefilled while others decoded
    # out of KV blocks, requests were evicted and later prefilled again from prompt + tokens so far
    assert out["small-pool/greedy"]["seen"]["evicted"]
    assert not any(out["all-at-once/greedy"]["seen"].values())
    sampled = out["static/sampled"]["ids"]
    assert sampled != static["ids"] and sampled[0] != sampled[-2]  # a real draw; a repeated prompt draws apart
    assert out["other-seed/sampled"]["ids"] != sampled
    assert "rollout.kv_cache_gb" in out["kv_pool_error"] and "needs 48" in out["kv_pool_error"], out["kv_pool_error"]
    assert out["training_mode_kept"]


@needs_dynamic
def test_dense_dynamic_equals_static(tmp_path):
    (out,) = run_workers(engines_compared, 1, DENSE, {}, str(tmp_path / "w"), "save")
    _check_engines(out)


@needs_dynamic
def test_moe_dynamic_equals_static_at_tp1_and_tp2(tmp_path):
    """TP=2: the gathered logits give every rank the same draw, equal to the single-process samples."""
    ckpt = str(tmp_path / "w")
    (one,) = run_workers(engines_compared, 1, MOE, {}, ckpt, "save")
    _check_engines(one)
    two = run_workers(engines_compared, 2, MOE, {"tensor_model_parallel_size": 2}, ckpt, "load")
    for rank in two:
        _check_engines(rank)
        for key in ("static/greedy", "all-at-once/greedy", "all-at-once/sampled", "5-rows/sampled"):
            assert rank[key]["ids"] == one[key]["ids"], key


def test_engine_key_is_checked():
    with pytest.raises(ConfigError, match="engine"):
        RolloutConfig(engine="vllm").validate()
    with pytest.raises(ConfigError, match="kv_cache_gb"):
        RolloutConfig(kv_cache_gb=0.0).validate()
    with pytest.raises(ConfigError, match="kv_block_tokens"):
        RolloutConfig(kv_block_tokens=0).validate()
    with pytest.raises(ConfigError, match="rollout.engine"):
        generate_with("paged", None, [[1]])
    with pytest.raises(ConfigError, match="key 'engine' must be static or dynamic"):
        EvalConfig(engine="vllm").validate()


@needs_dynamic
def test_kv_block_size_by_device():
    """flash-attn's paged kernels take blocks of a multiple of 256 tokens: the GPU default, and a GPU
    setting that is not one is refused before the engine is built; a CPU takes any size (default 64)."""
    from r1hpc.rollout.dynamic import block_tokens_for

    assert (block_tokens_for("cuda"), block_tokens_for("cpu"), block_tokens_for("cpu", 16)) == (256, 64, 16)
    assert block_tokens_for("cuda", 512) == 512
    with pytest.raises(ConfigError, match="'rollout.kv_block_tokens' must be a multiple of 256 on a GPU"):
        block_tokens_for("cuda", 64)


def test_a_gpu_without_flash_attn_refuses_the_dynamic_engine_clearly(monkeypatch):
    """On a GPU megatron's engine calls flash-attn's paged kernels; without them it would fail inside
    the first rollout's forward (a None called). The check runs here with CUDA and flash-attn's
    presence stood in for, both ways."""
    from megatron.core.transformer import attention

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attention, "HAVE_FA3", False)
    monkeypatch.setattr(attention, "flash_attn_varlen_func", None)
    with pytest.raises(ConfigError, match="rollout.engine=dynamic on a GPU needs flash-attn"):
        check_dynamic_supported()
    monkeypatch.setattr(attention, "flash_attn_varlen_func", lambda *a, **k: None)
    check_dynamic_supported()


@pytest.mark.skipif(DYNAMIC_ON_CPU, reason="the dynamic engine runs here")
def test_an_unsupported_series_refuses_the_dynamic_engine_clearly():
    with pytest.raises(ConfigError, match="rollout.engine=dynamic on a CPU needs megatron-core 0.16"):
        check_dynamic_supported()


@needs_dynamic
@pytest.mark.parametrize("interleaved,rotary_dim,mscale", [(False, 16, 1.0), (True, 8, 1.3)],
                         ids=["half-split", "interleaved-partial-yarn-scale"])
def test_per_step_rope_tables_rotate_bit_for_bit_as_megatron(interleaved, rotary_dim, mscale):
    """The CPU context caches each step's cos/sin and shares them across layers and between queries and
    keys; every rotation must still equal megatron's unfused formula exactly (strided views included)."""
    from types import SimpleNamespace

    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    from r1hpc.rollout.cpu_context import UnpaddedContext

    g = torch.Generator().manual_seed(0)
    config = SimpleNamespace(rotary_interleaved=interleaved, apply_rope_fusion=False, multi_latent_attention=False)
    context = UnpaddedContext.__new__(UnpaddedContext)  # _rotate needs only the table cache
    context._rope_tables = {}
    emb = torch.randn(40, 1, 1, rotary_dim, generator=g) * 10
    positions = torch.tensor([3, 0, 39, 17, 17])
    queries = torch.randn(5, 1, 6, 16, generator=g)
    keys = torch.randn(5, 1, 12, 16, generator=g)[:, :, ::4]  # a view into a wider projection, as megatron's
    for t in (queries, keys, queries):
        want = _apply_rotary_pos_emb_bshd(t, emb[positions], rotary_interleaved=interleaved, mscale=mscale)
        assert torch.equal(context._rotate(t, emb, positions, config, mscale), want)
    assert len(context._rope_tables) == 1  # one table for the step, reused


@needs_dynamic
@pytest.mark.parametrize("decode,prefill,padded", [(5, 0, 5), (3, 2, 5), (3, 0, 4)],
                         ids=["decode", "mixed", "padding-request"])
def test_attention_metadata_without_padded_copies_equals_megatrons(decode, prefill, padded, monkeypatch):
    """The CPU context's metadata (views and two prefix sums) holds what megatron's padded buffers hold,
    value and dtype, for every entry the attention reads; a step with padding requests takes megatron's."""
    from megatron.core.inference.batch_dimensions_utils import InferenceBatchDimensions
    from megatron.core.inference.contexts.attention_context.mha_metadata import NonGraphedMHAMetadata

    from r1hpc.rollout.cpu_context import UnpaddedMHAMetadata

    # megatron allocates the buffers on torch.cuda.current_device(); not cpu_compat.apply() here, whose
    # other patches (denormals flushed, process-wide) would outlive this test in the pytest process
    monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")
    g = torch.Generator().manual_seed(decode + prefill)
    n = decode + prefill
    query_lengths = torch.cat([torch.ones(decode), torch.randint(2, 9, (prefill,), generator=g)]).int()
    offsets = torch.cat([torch.randint(1, 40, (decode,), generator=g), torch.zeros(prefill)]).int()
    table = torch.randint(0, 30, (n, 6), generator=g, dtype=torch.int32)
    real = InferenceBatchDimensions(token_count=int(query_lengths.sum()), prefill_req_count=prefill,
                                    decode_req_count=decode, has_explicit_chunked_prefill_req=False)
    pad = InferenceBatchDimensions(token_count=int(query_lengths.sum()) + padded - n, prefill_req_count=prefill,
                                   decode_req_count=padded - prefill, has_explicit_chunked_prefill_req=False)
    made = {}
    for cls in (NonGraphedMHAMetadata, UnpaddedMHAMetadata):
        metadata = cls(block_count_total=30, max_kv_block_count=6, max_requests=8, block_size_tokens=4, max_seqlen=64)
        metadata.reset()
        metadata.update(query_lengths, offsets, table, real, pad)
        made[cls] = metadata.state_data
    megatron, ours = made[NonGraphedMHAMetadata], made[UnpaddedMHAMetadata]
    assert megatron.keys() == ours.keys()
    for key, value in megatron.items():
        if isinstance(value, torch.Tensor):
            assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
        else:
            assert ours[key] == value, key
