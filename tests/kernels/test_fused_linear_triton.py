"""The Triton fused output layer (r1hpc.triton_kernels.fused_linear: forward stats and backward
tile recompute, interpreted on CPU) against the materialised fp32 reference and against the
chunked torch path.

Shapes are tiny because the interpreter is slow: T = 24 tokens (4 ragged responses of up to 6),
H = 32 in two 16-wide steps, V = 97 real columns in 32-wide tiles (3 full + 1 of a single column)
of a weight padded to 128 rows whose padding rows are set large, so a leak of padding into the
softmax would show. Tiles of 16 tokens make the ~18 active tokens span two programs.

Tolerances: the reference's, tests/algo/test_fused_linear.py (every path computes fp32 logits and
fp32 gradient tiles from the same bf16/fp32 values; they differ only in summation order), the same
against the torch path.
"""
import dataclasses

import pytest
import torch

from r1hpc.algo import GRPOLossParams, fused_linear_grpo_loss, fused_linear_logprobs
from r1hpc.triton_kernels import fused_linear as kernels
from tests.algo.dist_utils import run_gloo
from tests.algo.test_fused_linear import _tp_check, check, close_grad, linear_inputs, reference, run_fused

H, V, V_PADDED = 32, 97, 128
DEFAULT_TILES = (kernels.MAX_BLOCK_T, kernels.MAX_BLOCK_V, kernels.MAX_BLOCK_H)
PARAMS = GRPOLossParams(temperature=0.7, eps_low=0.2, eps_high=0.28, dual_clip_c=3.0, beta=0.1, kl_kind="k3",
                        entropy_coef=0.01)


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    monkeypatch.setattr(kernels, "MAX_BLOCK_T", 16)
    monkeypatch.setattr(kernels, "MAX_BLOCK_V", 32)
    monkeypatch.setattr(kernels, "MAX_BLOCK_H", 16)


def tiny_inputs(dtype, seed, device):
    inp = linear_inputs(b=4, length=6, h=H, v=V, v_padded=V_PADDED, dtype=dtype, temperature=PARAMS.temperature,
                        seed=seed)
    inp["weight"][V:] = 50.0
    return {k: x.to(device) if isinstance(x, torch.Tensor) else x for k, x in inp.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_and_grads_match_reference_and_torch_path(device, dtype):
    inp = tiny_inputs(dtype, seed=11, device=device)
    got = run_fused(inp, dataclasses.replace(PARAMS, impl="triton"))
    check(inp, reference(inp, PARAMS), got, rows=slice(0, V))
    assert torch.all(got[3][V:] == 0)
    torch_loss, torch_metrics, torch_gh, torch_gw = run_fused(inp, dataclasses.replace(PARAMS, impl="torch"))
    torch.testing.assert_close(got[0], torch_loss, rtol=1e-5, atol=1e-6)
    for key in ("logp", "entropy", "kl", "ratio"):
        torch.testing.assert_close(got[1][key], torch_metrics[key], rtol=1e-5, atol=1e-5)
    close_grad(got[2], torch_gh.float(), torch_gh.float().abs().max().item())
    close_grad(got[3], torch_gw.float(), torch_gw.float().abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprobs_match_reference(device, dtype):
    inp = tiny_inputs(dtype, seed=12, device=device)
    _, ref_tok, _, _ = reference(inp, GRPOLossParams(temperature=PARAMS.temperature))
    active = inp["weights"] != 0
    logp, entropy = fused_linear_logprobs(inp["hidden"], inp["weight"], inp["target"], active,
                                          temperature=PARAMS.temperature, vocab_size=V, impl="triton")
    for got, key in ((logp, "logp"), (entropy, "entropy")):
        torch.testing.assert_close(got[active], ref_tok[key].detach()[active], rtol=1e-5, atol=1e-5)
        assert torch.all(got[~active] == 0)


def test_mixed_dtypes_and_foreign_targets(device):
    """fp32 hidden with a bf16 weight (multiplied in fp32), as a vocabulary shard starting at 40:
    targets below it are another shard's, so their target logit stat is 0."""
    inp = tiny_inputs(torch.float32, seed=13, device=device)
    weight = inp["weight"].to(torch.bfloat16)
    target = inp["target"]
    kw = dict(temperature=1.3, vocab_start_index=40, vocab_size=V, impl="triton")
    logp, entropy = fused_linear_logprobs(inp["hidden"], weight[40:], target, **kw)
    kw["impl"] = "torch"
    want_logp, want_entropy = fused_linear_logprobs(inp["hidden"], weight[40:], target, **kw)
    torch.testing.assert_close(entropy, want_entropy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logp, want_logp, rtol=1e-5, atol=1e-5)
    logits = inp["hidden"] @ weight[40:V].float().T / 1.3
    owned = target >= 40
    expected = torch.log_softmax(logits, -1).gather(1, (target - 40).clamp(min=0)[:, None]).squeeze(1)
    torch.testing.assert_close(logp[owned], expected[owned], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logp[~owned], -torch.logsumexp(logits[~owned], -1), rtol=1e-5, atol=1e-5)


@pytest.mark.multiproc
def test_vocab_parallel_tp2():
    """Two gloo ranks, each with a vocabulary shard (the second partly padding), the Triton kernels
    on each: the torch path's TP check (tests/algo/test_fused_linear.py) with impl='triton'."""
    run_gloo(_tp_check, torch.bfloat16, "triton")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_kernels_at_default_tiles(monkeypatch):
    """Compiled, at the default tiles and a larger shape (T = 1536, H = 512, V = 32000 of 32064, bf16):
    the Triton path against the torch path on the same GPU. Both form fp32 logits from the same
    bf16 values (exact products, fp32 sums in another order, ~1e-6 relative of logits ~5), so
    per-token values agree to 1e-4, and the bf16 gradients (each rounded once from fp32) to 2
    bf16 ulps (close_grad)."""
    for name, value in zip(("MAX_BLOCK_T", "MAX_BLOCK_V", "MAX_BLOCK_H"), DEFAULT_TILES):
        monkeypatch.setattr(kernels, name, value)
    g = torch.Generator().manual_seed(21)
    t, h, v, v_padded = 1536, 512, 32000, 32064
    hidden = torch.randn(t, h, generator=g).to("cuda", torch.bfloat16)
    weight = (torch.randn(v_padded, h, generator=g) * (3.0 / h**0.5)).to("cuda", torch.bfloat16)
    target = torch.randint(0, v, (t,), generator=g).cuda()
    weights = (torch.rand(t, generator=g) > 0.2).float().cuda() / t
    old = (-5 * torch.rand(t, generator=g)).cuda()
    adv = torch.randn(t, generator=g).cuda()
    results = []
    for impl in ("triton", "torch"):
        hd, wd = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss, m = fused_linear_grpo_loss(hd, wd, target, old, adv, weights, dataclasses.replace(PARAMS, impl=impl),
                                         ref_logp=old, vocab_size=v)
        loss.backward()
        results.append((loss.detach(), m, hd.grad, wd.grad))
    (loss, m, gh, gw), (t_loss, t_m, t_gh, t_gw) = results
    active = weights != 0
    torch.testing.assert_close(loss, t_loss, rtol=1e-4, atol=1e-6)
    for key in ("logp", "entropy"):
        torch.testing.assert_close(m[key][active], t_m[key][active], rtol=1e-4, atol=1e-4)
    close_grad(gh, t_gh.float(), t_gh.float().abs().max().item())
    close_grad(gw, t_gw.float(), t_gw.float().abs().max().item())
    assert torch.all(gw[v:] == 0)
