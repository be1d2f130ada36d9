"""Few-row linear layers without autograd run weight-major on an AMD CPU (r1hpc.model.cpu_linear): same
product as ``x @ W.T`` at fp32 tolerance, row-major output, and only where it applies (no autograd,
2 to SKINNY_ROWS rows, no sequence parallelism); with autograd megatron's own function runs, so
training gradients are untouched.

Tolerance: the two layouts sum the same 576-1536 products in a different order; fp32 rounding of
sums of ~1e3 terms of size ~1 is ~1e-5 absolute (rtol 1e-5, atol 1e-4). A wrong transpose or a
missing bias is off by O(1).
"""
from __future__ import annotations

import pytest
import torch

from r1hpc.model import cpu_linear
from r1hpc.model.cpu_linear import SKINNY_ROWS, skinny_matmul, weight_major_when_skinny
from tests.multiproc import run_workers


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


def test_only_no_grad_skinny_calls_take_the_weight_major_path():
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


def _patched_gpt_decode() -> dict:
    """A megatron GPT decode step of 4 rows under the CPU patches: which linears went weight-major, and
    the logits against the same forward with autograd on (megatron's own products)."""
    from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
    from r1hpc.model.config import ModelConfig
    from r1hpc.model.cpu_compat import PATCHES
    from r1hpc.model.provider import build_model

    cfg = ModelConfig(vocab_size=256, num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                      max_seq_length=32)
    init_distributed(ParallelConfig(), cfg, seed=0)
    model = build_model(cfg, ParallelConfig()).eval()
    used = []
    original = cpu_linear.skinny_matmul
    cpu_linear.skinny_matmul = lambda x, w: used.append(tuple(w.shape)) or original(x, w)
    tokens = torch.randint(0, 256, (4, 1))
    positions = torch.zeros(4, 1, dtype=torch.long)
    with torch.no_grad():
        fast = model(tokens, positions, None)
    cpu_linear.skinny_matmul = original
    reference = model(tokens, positions, None).detach()
    destroy_distributed()
    return {"used": used, "fast": fast, "reference": reference,
            "patched": [p.target for p in PATCHES if "cpu_linear" in p.why]}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the patches apply only without CUDA")
def test_megatron_decode_step_runs_weight_major_on_amd_cpus_only():
    (out,) = run_workers(_patched_gpt_decode, 1)
    if cpu_linear.weight_major_pays_off():
        assert len(out["patched"]) == 2, out["patched"]
        # per layer qkv, proj, fc1, fc2, then the output layer (vocabulary padded to 256)
        assert out["used"] == [(192, 64), (64, 64), (256, 64), (64, 128)] * 2 + [(256, 64)], out["used"]
    else:  # MKL's own product is the faster one here: nothing patched, nothing weight-major
        assert (out["patched"], out["used"]) == ([], [])
    torch.testing.assert_close(out["fast"], out["reference"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vendor, pays", [("AuthenticAMD", True), ("GenuineIntel", False), (None, False)])
def test_weight_major_is_chosen_on_amd_cpus(vendor, pays):
    cpuinfo = "processor\t: 0\n" + (f"vendor_id\t: {vendor}\n" if vendor else "") + "model name\t: x\n"
    assert cpu_linear.weight_major_pays_off(cpuinfo) is pays
