"""The fused output layer + GRPO loss (r1hpc.algo.fused_linear) against the materialised fp32 reference:
``logits = hidden.float() @ weight.float().T`` over the real vocabulary, grpo_token_loss_reference,
autograd to hidden and weight.

Tolerances. Both sides compute the logits in fp32 from the same (possibly bf16) values; they differ
only in summation order (matmul blocking, tiles of the log-sum-exp), a few fp32 ulps on values ~10:
forward values rtol/atol 1e-5 (loss atol 1e-6), fp32 gradients rtol 1e-4 with atol 1e-5 of the
largest entry (each gradient entry sums ~V or ~T products). bf16 gradients are produced in fp32 and
rounded once, so they are compared with the reference gradient rounded to bf16, 2 bf16 ulps (rtol
2**-7). Small tiles (16 vocabulary columns, 5 tokens per chunk) make every test cross several
chunks and tiles, the online rescaling included.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from r1hpc.algo import (GRPOLossParams, fused_linear, fused_linear_grpo_loss, fused_linear_logprobs,
                        grpo_token_loss_reference)
from tests.algo.dist_utils import run_gloo
from tests.algo.harness import assert_loss_and_metrics_close, make_inputs

AGG = ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]
OPTIONS = [  # (entropy_coef, beta, dual_clip_c, kl_kind)
    (0.0, 0.0, None, "k3"),
    (0.01, 0.1, 3.0, "k3"),
    (0.01, 0.0, None, "k1"),
    (0.0, 0.1, 3.0, "k2"),
]
H, V = 37, 301  # odd on purpose


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    monkeypatch.setattr(fused_linear, "VOCAB_TILE", 16)
    monkeypatch.setattr(fused_linear, "TILE_BYTES", 5 * 4 * 16)


def linear_inputs(*, b=4, length=12, h=H, v=V, v_padded=None, dtype=torch.float32, temperature=1.0, agg=AGG[0],
                  seed=0) -> dict:
    """make_inputs' per-token inputs with hidden [T, h] and weight [v_padded, h] in place of logits;
    scaled so the logits are O(3) like make_inputs'. Rows past ``v`` are padding."""
    g = torch.Generator().manual_seed(seed + 1000)
    inp = make_inputs(b=b, length=length, v=v, temperature=temperature, agg=agg, seed=seed)
    t = inp["target"].shape[0]
    hidden = torch.randn(t, h, generator=g)
    weight = torch.randn(v_padded or v, h, generator=g) * (3.0 / h**0.5)
    inp.pop("logits")
    with torch.no_grad():  # old/ref log-probs near the policy's, so ratios straddle the clip range
        logp = torch.log_softmax(hidden @ weight[:v].T / temperature, -1).gather(1, inp["target"][:, None]).squeeze(1)
    active = inp["weights"] != 0
    inp["old_logp"] = torch.where(active, logp + 0.4 * torch.randn(t, generator=g), 1e4)  # garbage in padding
    inp["ref_logp"] = torch.where(active, logp + 0.4 * torch.randn(t, generator=g), -1e4)
    inp.update(hidden=hidden.to(dtype), weight=weight.to(dtype), vocab_size=v)
    return inp


def reference(inp: dict, params: GRPOLossParams = GRPOLossParams()):
    """(loss, per-token dict, grad_hidden, grad_weight), all fp32, from materialised logits."""
    h = inp["hidden"].detach().float().requires_grad_()
    w = inp["weight"].detach().float().requires_grad_()
    logits = h @ w[:inp["vocab_size"]].T
    tok = grpo_token_loss_reference(logits, inp["target"], inp["old_logp"], inp["ref_logp"], inp["advantages"],
                                    params, tis_weight=inp["tis_weight"], active=inp["weights"] != 0)
    loss = (tok["loss"] * inp["weights"]).sum()
    loss.backward()
    return loss.detach(), tok, h.grad, w.grad


def run_fused(inp: dict, params: GRPOLossParams, weight=None, **tp):
    h = inp["hidden"].detach().clone().requires_grad_()
    w = (inp["weight"] if weight is None else weight).detach().clone().requires_grad_()
    loss, metrics = fused_linear_grpo_loss(
        h, w, inp["target"], inp["old_logp"], inp["advantages"], inp["weights"], params, ref_logp=inp["ref_logp"],
        tis_weight=inp["tis_weight"], vocab_size=inp["vocab_size"], **tp)
    loss.backward()
    return loss.detach(), metrics, h.grad, w.grad


def close_grad(got: torch.Tensor, want: torch.Tensor, scale: float) -> None:
    if got.dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale)
    else:
        torch.testing.assert_close(got.float(), want.to(got.dtype).float(), rtol=2**-7, atol=1e-5 * scale)


def check(inp: dict, ref: tuple, got: tuple, rows: slice = slice(None), whole_grad_hidden: bool = True) -> None:
    ref_loss, ref_tok, ref_gh, ref_gw = ref
    loss, metrics, gh, gw = got
    active = inp["weights"] != 0
    assert_loss_and_metrics_close(active, loss, metrics, ref_loss, ref_tok)
    assert gh.dtype == inp["hidden"].dtype and gw.dtype == inp["weight"].dtype
    assert torch.all(gh[~active] == 0)
    if whole_grad_hidden:
        close_grad(gh, ref_gh, ref_gh.abs().max().item())
    close_grad(gw[: ref_gw[rows].shape[0]], ref_gw[rows], ref_gw.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("agg, temperature", [(AGG[0], 1.0), (AGG[1], 0.7), (AGG[2], 1.3)])
@pytest.mark.parametrize("opts", OPTIONS)
def test_matches_materialised_reference(dtype, agg, temperature, opts):
    ent, beta, dual, kl_kind = opts
    params = GRPOLossParams(temperature=temperature, eps_low=0.2, eps_high=0.28, dual_clip_c=dual, beta=beta,
                            kl_kind=kl_kind, entropy_coef=ent)
    inp = linear_inputs(dtype=dtype, temperature=temperature, agg=agg, seed=10 * AGG.index(agg) + OPTIONS.index(opts))
    check(inp, reference(inp, params), run_fused(inp, params))


@pytest.mark.parametrize("with_ref, with_tis", [(False, False), (True, False), (False, True)])
def test_kl_and_tis_off(with_ref, with_tis):
    inp = linear_inputs(seed=3)
    inp["ref_logp"] = inp["ref_logp"] if with_ref else None
    inp["tis_weight"] = inp["tis_weight"] if with_tis else None
    params = GRPOLossParams(entropy_coef=0.02, beta=0.1 if with_ref else 0.0)
    check(inp, reference(inp, params), run_fused(inp, params))


def test_vocab_padding_is_masked():
    """Padding rows of the weight (megatron pads the vocabulary) are outside the softmax and get
    zero gradient, however large their logits would be."""
    inp = linear_inputs(v_padded=320, seed=5)
    inp["weight"][V:] = 50.0
    params = GRPOLossParams(beta=0.1, entropy_coef=0.01)
    got = run_fused(inp, params)
    check(inp, reference(inp, params), got, rows=slice(0, V))
    assert torch.all(got[3][V:] == 0)


def test_tied_embeddings():
    """The output weight is also the input embedding: both paths of the gradient reach it."""
    inp = linear_inputs(seed=6)
    tokens = torch.randint(0, V, (inp["target"].shape[0],), generator=torch.Generator().manual_seed(1))
    proj = torch.randn(H, H, generator=torch.Generator().manual_seed(2)) / H**0.5
    params = GRPOLossParams(temperature=0.9, beta=0.1, entropy_coef=0.01)
    grads = []
    for fused in (False, True):
        emb = inp["weight"].detach().clone().requires_grad_()
        hidden = torch.tanh(emb[tokens] @ proj) * 3.0
        if fused:
            loss, _ = fused_linear_grpo_loss(hidden, emb, inp["target"], inp["old_logp"], inp["advantages"],
                                             inp["weights"], params, ref_logp=inp["ref_logp"],
                                             tis_weight=inp["tis_weight"])
        else:
            tok = grpo_token_loss_reference(hidden @ emb.T, inp["target"], inp["old_logp"], inp["ref_logp"],
                                            inp["advantages"], params, tis_weight=inp["tis_weight"],
                                            active=inp["weights"] != 0)
            loss = (tok["loss"] * inp["weights"]).sum()
        loss.backward()
        grads.append((loss.detach(), emb.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
    close_grad(grads[1][1], grads[0][1], grads[0][1].abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprobs_forward_only(dtype):
    inp = linear_inputs(dtype=dtype, temperature=0.7, v_padded=320, seed=4)
    _, ref_tok, _, _ = reference(inp, GRPOLossParams(temperature=0.7))
    active = inp["weights"] != 0
    logp, entropy = fused_linear_logprobs(inp["hidden"], inp["weight"], inp["target"], active, temperature=0.7,
                                          vocab_size=V)
    for got, key in ((logp, "logp"), (entropy, "entropy")):
        torch.testing.assert_close(got[active], ref_tok[key].detach()[active], rtol=1e-5, atol=1e-5)
        assert torch.all(got[~active] == 0)


def test_empty_batch_and_bad_input():
    h, w = torch.zeros(0, 5, requires_grad=True), torch.zeros(7, 5, requires_grad=True)
    loss, metrics = fused_linear_grpo_loss(h, w, torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0),
                                           torch.zeros(0))
    loss.backward()
    assert loss.item() == 0.0 and metrics["clipfrac_low"].item() == 0.0 and torch.all(w.grad == 0)
    with pytest.raises(ValueError, match="weight"):
        fused_linear_logprobs(torch.zeros(3, 5), torch.zeros(7, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="impl"):
        fused_linear_logprobs(torch.zeros(3, 5), torch.zeros(7, 5), torch.zeros(3, dtype=torch.long), impl="cuda")


def _tp_check(rank: int, world: int, dtype: torch.dtype, impl: str = "torch") -> None:
    """Each of ``world`` gloo ranks holds a vocabulary shard of a padded weight (301 real of 320:
    the last shard is partly padding); loss, per-token values, the weight shard's gradient and the
    sum over ranks of grad_hidden equal the unsharded reference."""
    params = GRPOLossParams(temperature=0.8, eps_high=0.28, dual_clip_c=3.0, beta=0.05, entropy_coef=0.01, impl=impl)
    inp = linear_inputs(v_padded=320, dtype=dtype, temperature=0.8, seed=7)
    shard = 320 // world
    rows = slice(rank * shard, (rank + 1) * shard)
    got = run_fused(inp, params, weight=inp["weight"][rows], tp_group=dist.group.WORLD, vocab_start_index=rows.start)
    ref = reference(inp, params)
    ref_rows = slice(rows.start, min(rows.stop, V))
    check(inp, ref, got, rows=ref_rows, whole_grad_hidden=False)
    # grad_hidden: this shard's part, summed over the group as megatron's output layer does. In bf16
    # each part is rounded once before the sum: up to half a bf16 ulp (2**-9 relative) of each part
    parts = got[2].float()
    part_max = parts.abs().max()
    dist.all_reduce(parts)
    dist.all_reduce(part_max, op=dist.ReduceOp.MAX)
    if dtype == torch.float32:
        close_grad(parts, ref[2], ref[2].abs().max().item())
    else:
        torch.testing.assert_close(parts, ref[2], rtol=2**-8, atol=world * 2**-9 * part_max.item())
    assert torch.all(got[3][ref_rows.stop - rows.start:] == 0)  # padding rows
    active = inp["weights"] != 0
    logp, _ = fused_linear_logprobs(inp["hidden"], inp["weight"][rows], inp["target"], active, temperature=0.8,
                                    tp_group=dist.group.WORLD, vocab_start_index=rows.start, vocab_size=V, impl=impl)
    torch.testing.assert_close(logp[active], got[1]["logp"][active], rtol=1e-6, atol=1e-6)


@pytest.mark.multiproc
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vocab_parallel_tp2(dtype):
    run_gloo(_tp_check, dtype)


@pytest.mark.skipif(not hasattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision"),
                    reason="this torch has no oneDNN fp32 precision setting")
def test_bf16_logit_tiles_run_on_bf16_units_and_the_setting_is_restored():
    """bf16 hidden states and weights on a CPU: the logit tiles' fp32 products may round their operands to
    bf16 (they are bf16 values, nothing is lost); fp32 inputs keep full fp32 products; the global setting
    is restored after, also when the block raises."""
    matmul = torch.backends.mkldnn.matmul
    before = matmul.fp32_precision
    bf16, fp32 = torch.zeros(2, 3, dtype=torch.bfloat16), torch.zeros(2, 3)
    with fused_linear._bf16_operand_products(bf16, bf16):
        assert matmul.fp32_precision == "bf16"
    with fused_linear._bf16_operand_products(fp32, bf16):
        assert matmul.fp32_precision == before
    with pytest.raises(RuntimeError), fused_linear._bf16_operand_products(bf16, bf16):
        raise RuntimeError("inside")
    assert matmul.fp32_precision == before
