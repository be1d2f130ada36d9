"""The fused Triton GRPO loss against the fp32 reference (interpreted on CPU, compiled on CUDA).

Shapes are small because the interpreter is ~1000x slower than torch: T = 48 tokens (ragged
responses with padding), V = 300 with 64-wide vocabulary chunks (4 full + 1 partial chunk) so the
online log-sum-exp crosses chunk and masking boundaries. Tolerances: see
tests/algo/harness.py::assert_matches_reference (shared with the torch path).
"""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch

from r1hpc.algo import GRPOLossParams
from r1hpc.triton_kernels import grpo_loss as kernels
from tests.algo.dist_utils import run_gloo
from tests.algo.harness import (
    assert_matches_reference,
    assert_token_logp_matches_reference,
    make_inputs,
    reference,
    run_impl,
    tp_check,
)

AGG = ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]
F32, BF16 = torch.float32, torch.bfloat16

# Each option on and off at least once per dtype, every aggregation mode per dtype:
# (dtype, agg, temperature, entropy_coef, beta, dual_clip_c, kl_kind)
CASES = [
    (F32, AGG[0], 1.0, 0.0, 0.0, None, "k3"),
    (F32, AGG[1], 0.7, 0.01, 0.1, 3.0, "k3"),
    (F32, AGG[2], 1.3, 0.01, 0.0, None, "k1"),
    (F32, AGG[0], 0.7, 0.0, 0.1, 3.0, "k2"),
    (BF16, AGG[0], 1.0, 0.01, 0.1, 3.0, "k3"),
    (BF16, AGG[1], 1.3, 0.0, 0.1, None, "k3"),
    (BF16, AGG[2], 0.7, 0.01, 0.0, 3.0, "k3"),
    (BF16, AGG[1], 1.0, 0.0, 0.0, None, "k3"),
]


@pytest.fixture(autouse=True)
def small_vocab_chunks(monkeypatch):
    monkeypatch.setattr(kernels, "MAX_BLOCK_V", 64)


@pytest.mark.parametrize("dtype, agg, temperature, ent, beta, dual, kl_kind", CASES)
def test_triton_matches_reference(device, dtype, agg, temperature, ent, beta, dual, kl_kind):
    inp = make_inputs(dtype=dtype, temperature=temperature, agg=agg, seed=len(agg) + int(10 * temperature),
                      device=device)
    assert_matches_reference(inp, "triton", temperature=temperature, eps_low=0.2, eps_high=0.28,
                             dual_clip_c=dual, beta=beta, kl_kind=kl_kind, entropy_coef=ent)


@pytest.mark.parametrize("v, block", [(257, 32), (300, 4096)])
def test_odd_vocab_and_single_chunk(device, monkeypatch, v, block):
    """A vocabulary that is not a multiple of the chunk, and one chunk covering all of it."""
    monkeypatch.setattr(kernels, "MAX_BLOCK_V", block)
    inp = make_inputs(b=3, length=7, v=v, seed=v, device=device)
    assert_matches_reference(inp, "triton", beta=0.1, entropy_coef=0.01)


def test_without_ref_and_tis(device):
    inp = make_inputs(b=2, length=9, seed=5, device=device)
    inp["ref_logp"] = inp["tis_weight"] = None
    assert_matches_reference(inp, "triton", entropy_coef=0.02)


def test_per_token_loss_and_scaled_upstream_gradient(device):
    """Per-token losses equal the reference's, and backward honours a non-unit upstream gradient."""
    inp = make_inputs(b=2, length=8, seed=11, device=device)
    params = GRPOLossParams(beta=0.1, entropy_coef=0.01, dual_clip_c=2.0, impl="triton")
    _, ref_tok, _ = reference(inp, params)
    x = inp["logits"].clone().requires_grad_()
    loss, tok = kernels.triton_grpo_loss(x, inp["target"], inp["old_logp"], inp["advantages"], inp["weights"],
                                         params, ref_logp=inp["ref_logp"], tis_weight=inp["tis_weight"])
    torch.testing.assert_close(tok["loss"], ref_tok["loss"].detach(), rtol=1e-5, atol=1e-6)
    (3.0 * loss).backward()
    _, _, grad1 = run_impl(inp, params)
    torch.testing.assert_close(x.grad, 3.0 * grad1, rtol=1e-6, atol=1e-9)


def tp_worker(rank, world, dtype):
    kernels.MAX_BLOCK_V = 64  # a spawned process: the fixture's monkeypatch does not reach it
    tp_check(rank, world, "triton", dtype)


@pytest.mark.multiproc
@pytest.mark.parametrize("dtype", [F32, BF16])
def test_vocab_parallel_tp2_triton(monkeypatch, dtype):
    """gloo is CPU-only, so the spawned ranks (which inherit this environment) always interpret."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    run_gloo(tp_worker, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_shape_bf16_on_gpu(monkeypatch):
    """T = 4096, V = 152064 (Qwen2 vocabulary), bf16, full-size vocabulary chunks."""
    monkeypatch.setattr(kernels, "MAX_BLOCK_V", 4096)
    inp = make_inputs(b=8, length=512, v=152064, dtype=BF16, temperature=0.9, seed=1, device="cuda")
    assert_matches_reference(inp, "triton", temperature=0.9, eps_high=0.28, beta=0.001, entropy_coef=0.001,
                             dual_clip_c=3.0)


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_token_logp_triton(device, dtype):
    inp = make_inputs(b=3, length=8, dtype=dtype, temperature=0.7, seed=4, device=device)
    assert_token_logp_matches_reference(inp, "triton", temperature=0.7)


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 6), st.integers(1, 70), st.sampled_from([16, 32]), st.integers(0, 2**16))
def test_edge_shapes(device, monkeypatch, t, v, block, seed):
    """Tiny and odd shapes: one token, a vocabulary of 1, a vocabulary smaller than the chunk."""
    monkeypatch.setattr(kernels, "MAX_BLOCK_V", block)
    inp = make_inputs(b=1, length=t, v=v, seed=seed, device=device)
    assert_matches_reference(inp, "triton", beta=0.1, entropy_coef=0.01, dual_clip_c=3.0)


def test_on_policy_matches_the_torch_path(device):
    """``old_logp`` None (one update per rollout): the Triton path scores the current policy itself;
    loss, gradient and ratio (1 up to the two paths' rounding) as the torch path's."""
    from r1hpc.algo import grpo_loss

    inp = make_inputs(seed=7, device=device)
    out = {}
    for impl in ("triton", "torch"):
        x = inp["logits"].clone().requires_grad_()
        loss, metrics = grpo_loss(x, inp["target"], None, inp["advantages"], inp["weights"],
                                  GRPOLossParams(impl=impl, beta=0.1, entropy_coef=0.01, eps_high=0.28),
                                  ref_logp=inp["ref_logp"], tis_weight=inp["tis_weight"])
        loss.backward()
        out[impl] = (loss.detach(), metrics, x.grad)
    (loss, metrics, grad), (loss_torch, _, grad_torch) = out["triton"], out["torch"]
    assert abs(metrics["ratio_max"].item() - 1) < 1e-6 and abs(metrics["ratio_min"].item() - 1) < 1e-6
    torch.testing.assert_close(loss, loss_torch, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, grad_torch, rtol=1e-5, atol=1e-6)
