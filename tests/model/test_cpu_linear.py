"""Few-row linear layers without autograd take the product measured faster on this CPU
(r1hpc.model.cpu_linear): weight-major on AMD, oneDNN on weights packed for a rollout on Intel (fp32
and bf16 models). Same product as ``x @ W.T`` at fp32 tolerance, row-major output, and only where it
applies (no autograd, the row range, no sequence parallelism, packed copies only inside a rollout);
with autograd megatron's own function runs, so training gradients are untouched.

Tolerance: the layouts sum the same 576-1536 products in a different order; fp32 rounding of
sums of ~1e3 terms of size ~1 is ~1e-5 absolute (rtol 1e-5, atol 1e-4). A wrong transpose or a
missing bias is off by O(1).
"""
from __future__ import annotations

import pytest
import torch

from r1hpc.model import cpu_linear
from r1hpc.model.cpu_linear import SKINNY_ROWS, skinny_matmul, weight_major_when_skinny
from tests.multiproc import run_workers

#: megatron's linear functions the decode-product patch wraps.
DECODE_FUNCTIONS = ("linear_with_frozen_weight", "linear_with_grad_accumulation_and_async_allreduce")

#: bf16 logits of size up to ~1: both paths accumulate in fp32 and round each layer's output to bf16,
#: so summation order can move a logit by a bf16 ulp or two (2**-8 relative); wrong products move them O(0.1-1)
BF16_LOGITS_TOL = 1e-2


@pytest.mark.parametrize("rows", [1, 2, 4, SKINNY_ROWS])
def test_skinny_matmul_is_x_at_w_t(rows):
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(300, 576, generator=g)
    x = torch.randn(rows, 1, 576, generator=g).transpose(0, 1)  # [1, rows, 576], not contiguous
    out = skinny_matmul(x, w)
    assert out.shape == (1, rows, 300) and out.is_contiguous()  # row-major for the next layer
    torch.testing.assert_close(out, x @ w.t(), rtol=1e-5, atol=1e-4)


def _megatron_linear():
    calls = []

    def linear(input, weight, bias=None, *args, **kwargs):
        calls.append(tuple(input.shape))
        out = input @ weight.t()
        return out + bias if bias is not None else out

    return weight_major_when_skinny(linear), calls


def test_only_no_grad_skinny_calls_take_the_weight_major_path(monkeypatch):
    monkeypatch.setattr(cpu_linear, "_decode_product", None)  # installing the wrapper sets it
    wrapped, calls = _megatron_linear()
    w, b = torch.randn(64, 32, requires_grad=True), torch.randn(64)
    few, many = torch.randn(1, 4, 32), torch.randn(1, SKINNY_ROWS + 1, 32)
    with torch.no_grad():
        out = wrapped(few, w, b, sequence_parallel=False)
        torch.testing.assert_close(out, few @ w.t() + b, rtol=1e-5, atol=1e-5)
        assert calls == []  # weight-major, megatron's function not called
        wrapped(many, w, b, sequence_parallel=False)
        wrapped(few, w, b, sequence_parallel=True)  # its input must be all-gathered first: megatron's
        wrapped(torch.randn(1, 1, 32), w, b)  # one row: no gain measured, megatron's
    assert calls == [(1, SKINNY_ROWS + 1, 32), (1, 4, 32), (1, 1, 32)]
    out = wrapped(few, w, b, sequence_parallel=False)  # autograd on: megatron's, so its backward runs
    assert calls[-1] == (1, 4, 32) and out.requires_grad


def _patched_gpt_decode(params_dtype: str, packed_min_weight: int) -> dict:
    """A megatron GPT decode step of 4 rows under the CPU patches, inside a rollout's packed weights
    (weights of ``packed_min_weight`` elements or more): which weights went weight-major, which went
    through their packed copy, and the logits against the same forward with autograd on (megatron's
    own products); the packed copies left after it."""
    from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
    from r1hpc.model.config import ModelConfig
    from r1hpc.model.cpu_compat import PATCHES
    from r1hpc.model.provider import build_model

    cfg = ModelConfig(vocab_size=256, num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                      max_seq_length=32, params_dtype=params_dtype)
    init_distributed(ParallelConfig(), cfg, seed=0)
    model = build_model(cfg, ParallelConfig()).eval()
    cpu_linear.PACKED_MIN_WEIGHT = packed_min_weight
    weight_major, packed = [], []
    originals = cpu_linear.skinny_matmul, cpu_linear.packed_product
    cpu_linear.skinny_matmul = lambda x, w: weight_major.append(tuple(w.shape)) or originals[0](x, w)
    cpu_linear.packed_product = lambda x, p, b, n: packed.append((n, x.shape[-1])) or originals[1](x, p, b, n)
    tokens = torch.randint(0, 256, (4, 1))
    positions = torch.zeros(4, 1, dtype=torch.long)
    with torch.no_grad(), cpu_linear.packed_linear_weights(model):
        fast = model(tokens, positions, None)
    cpu_linear.skinny_matmul, cpu_linear.packed_product = originals
    reference = model(tokens, positions, None).detach()
    destroy_distributed()
    return {"weight_major": weight_major, "packed": packed, "fast": fast, "reference": reference,
            "left_packed": len(cpu_linear._packed),
            "patched": [p.why for p in PATCHES if p.target.endswith(DECODE_FUNCTIONS)]}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the patches apply only without CUDA")
@pytest.mark.parametrize("params_dtype, tol", [("fp32", 1e-5), ("bf16", BF16_LOGITS_TOL)])
@pytest.mark.parametrize("small_weights_packed", [True, False])
def test_megatron_decode_step_takes_the_path_measured_faster_on_this_cpu(params_dtype, tol, small_weights_packed):
    # this model's weights (at most 256 x 64) are below PACKED_MIN_WEIGHT: packed only when it is lowered
    min_weight = 0 if small_weights_packed else cpu_linear.PACKED_MIN_WEIGHT
    (out,) = run_workers(_patched_gpt_decode, 1, params_dtype, min_weight)
    # per layer qkv, proj, fc1, fc2, then the output layer (vocabulary padded to 256)
    every_weight = [(192, 64), (64, 64), (256, 64), (64, 128)] * 2 + [(256, 64)]
    if cpu_linear.weight_major_pays_off():
        assert len(out["patched"]) == 2 and all("(W @ x.T).T" in why for why in out["patched"])
        assert (out["weight_major"], out["packed"]) == (every_weight, [])
    elif cpu_linear.packing_pays_off():
        assert len(out["patched"]) == 2 and all("oneDNN" in why for why in out["patched"])
        assert (out["weight_major"], out["packed"]) == ([], every_weight if small_weights_packed else [])
    else:  # MKL's own product: nothing patched
        assert (out["patched"], out["weight_major"], out["packed"]) == ([], [], [])
    assert out["left_packed"] == 0  # the copies live only inside packed_linear_weights
    assert out["fast"].dtype == out["reference"].dtype
    torch.testing.assert_close(out["fast"], out["reference"], rtol=tol, atol=tol)


def test_packed_path_only_for_no_grad_calls_of_4_to_32_rows_inside_a_rollout(monkeypatch):
    calls = []

    def linear(input, weight, bias=None, *args, **kwargs):
        calls.append(tuple(input.shape))
        out = input @ weight.t()
        return out + bias if bias is not None else out

    monkeypatch.setattr(cpu_linear, "_packing_installed", False)
    monkeypatch.setattr(cpu_linear, "_decode_product", None)
    wrapped = cpu_linear.packed_when_decoding(linear)
    assert cpu_linear._packing_installed
    w, b = torch.randn(64, 32, requires_grad=True), torch.randn(64)
    low, high = cpu_linear.PACKED_ROWS
    few, many, too_few = torch.randn(1, low, 32), torch.randn(high, 1, 32), torch.randn(1, low - 1, 32)
    with torch.no_grad():
        wrapped(few, w, b, sequence_parallel=False)  # outside a rollout: no packed copy, megatron's
        monkeypatch.setitem(cpu_linear._packed, w.data_ptr(),
                            (w.shape, torch.ops.mkldnn._reorder_linear_weight(w.detach(), None)))
        for x in (few, many):
            torch.testing.assert_close(wrapped(x, w, b, sequence_parallel=False), x @ w.t() + b, rtol=1e-5, atol=1e-5)
            # decode_matmul (the direct MoE experts' products) takes the same path: the packed copy's bits
            assert torch.equal(cpu_linear.decode_matmul(x, w), wrapped(x, w, None, sequence_parallel=False))
        wrapped(too_few, w, b, sequence_parallel=False)
        wrapped(torch.randn(1, high + 1, 32), w, b, sequence_parallel=False)
        wrapped(few, w, b, sequence_parallel=True)  # its input must be all-gathered first: megatron's
    out = wrapped(few, w, b, sequence_parallel=False)  # autograd on: megatron's, so its backward runs
    assert out.requires_grad
    assert calls == [(1, low, 32), (1, low - 1, 32), (1, high + 1, 32), (1, low, 32), (1, low, 32)]


@pytest.mark.parametrize("vendor, weight_major, packing", [
    ("AuthenticAMD", True, False), ("GenuineIntel", False, True), (None, False, False)])
def test_weight_major_on_amd_packed_on_intel(vendor, weight_major, packing):
    cpuinfo = "processor\t: 0\n" + (f"vendor_id\t: {vendor}\n" if vendor else "") + "model name\t: x\n"
    assert cpu_linear.weight_major_pays_off(cpuinfo) is weight_major
    assert cpu_linear.packing_pays_off(cpuinfo) is packing


def test_matrix_flags_read_from_the_flags_line_only():
    cpuinfo = ("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_tile amx_bf16\n"
               "vmx flags\t: avx512_bf16\nprocessor\t: 1\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16\n")
    # the first processor's flags line; "vmx flags" (hypervisor features) is another line
    assert cpu_linear.cpu_matrix_flags(cpuinfo) == ["avx2", "avx512f", "amx_bf16"]
    assert cpu_linear.cpu_matrix_flags("processor\t: 0\n") == []
