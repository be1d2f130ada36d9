"""Shared by the torch-path and Triton tests: random GRPO inputs shaped like a real micro-batch,
and one comparison of any implementation against the fp32 reference.

Inputs: B responses of up to L tokens flattened to T = B * L, ragged lengths (padding has weight 0
and garbage log-probs that must not leak), old/ref log-probs near the policy's so ratios straddle
the clip range, per-response advantages.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from r1hpc.algo import GRPOLossParams, aggregation_weights, grpo_loss, grpo_token_loss_reference, token_logp

PER_TOKEN = ("logp", "entropy", "kl", "ratio")
FLAGS = ("is_clipped_low", "is_clipped_high", "is_clipped_dual")


def make_inputs(b=4, length=12, v=300, *, dtype=torch.float32, temperature=1.0,
                agg="seq-mean-token-mean", seed=0, device="cpu") -> dict:
    g = torch.Generator().manual_seed(seed)
    t = b * length
    logits = (torch.randn(t, v, generator=g) * 3.0).to(dtype)
    target = torch.randint(0, v, (t,), generator=g)
    with torch.no_grad():
        logp = torch.log_softmax(logits.float() / temperature, -1).gather(1, target[:, None]).squeeze(1)
    lengths = torch.randint(1, length + 1, (b,), generator=g)
    lengths[0] = length
    mask = torch.arange(length)[None, :] < lengths[:, None]
    pad = ~mask.flatten()
    old = logp + 0.4 * torch.randn(t, generator=g)
    ref = logp + 0.4 * torch.randn(t, generator=g)
    old[pad], ref[pad] = 1e4, -1e4  # garbage in padding
    out = dict(
        logits=logits, target=target, old_logp=old, ref_logp=ref,
        advantages=torch.randn(b, generator=g).repeat_interleave(length),
        weights=aggregation_weights(mask, agg).flatten(),
        tis_weight=torch.rand(t, generator=g) * 2.0,
    )
    return {k: x.to(device) for k, x in out.items()}


def reference(inp: dict, params: GRPOLossParams = GRPOLossParams()) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """(loss, per-token dict, fp32 grad wrt logits) from the fp32 reference."""
    x = inp["logits"].detach().float().requires_grad_()
    tok = grpo_token_loss_reference(
        x, inp["target"], inp["old_logp"], inp["ref_logp"], inp["advantages"], params,
        tis_weight=inp["tis_weight"], active=inp["weights"] != 0)
    loss = (tok["loss"] * inp["weights"]).sum()
    loss.backward()
    return loss.detach(), tok, x.grad


def run_impl(inp: dict, params: GRPOLossParams, logits=None, **tp) -> tuple[torch.Tensor, dict, torch.Tensor]:
    x = (inp["logits"] if logits is None else logits).detach().clone().requires_grad_()
    loss, metrics = grpo_loss(
        x, inp["target"], inp["old_logp"], inp["advantages"], inp["weights"], params,
        ref_logp=inp["ref_logp"], tis_weight=inp["tis_weight"], **tp)
    loss.backward()
    return loss.detach(), metrics, x.grad


def assert_loss_and_metrics_close(active, loss, metrics, ref_loss, ref_tok) -> None:
    """Loss, per-token values and clip fractions of any GRPO loss implementation against the fp32
    reference, at the forward tolerances ``check_against`` explains."""
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for key in PER_TOKEN:
        torch.testing.assert_close(metrics[key][active], ref_tok[key].detach()[active], rtol=1e-5, atol=1e-5)
    for key, flag in zip(("clipfrac_low", "clipfrac_high", "clipfrac_dual"), FLAGS):
        expected = ref_tok[flag][active].float().mean()
        torch.testing.assert_close(metrics[key], expected, rtol=0, atol=1.5 / active.sum().item())


def check_against(inp: dict, ref: tuple, loss, metrics, grad, cols: slice = slice(None)) -> None:
    """Compare one implementation's (loss, metrics, grad[:, cols]) with ``reference(inp)``.

    Tolerances. Both sides upcast the same logits to fp32, so forward values differ only by fp32
    summation order over V (here ~300, values ~10): rtol 1e-5 / atol 1e-5 has ~10x margin; a clip
    flag may flip for a ratio within rounding of the boundary, hence one token of clipfrac slack.
    fp32 gradients: rtol 1e-4, atol 1e-6 of the largest entry. bf16 gradients are produced in
    fp32 and rounded once, so they are compared with the reference gradient rounded to bf16,
    allowing 2 bf16 ulps (rtol 2**-7) where an fp32 difference flips a rounding boundary."""
    ref_loss, ref_tok, ref_grad = ref
    active = inp["weights"] != 0
    assert_loss_and_metrics_close(active, loss, metrics, ref_loss, ref_tok)
    assert grad.dtype == inp["logits"].dtype
    assert torch.all(grad[~active] == 0)
    expected, scale = ref_grad[:, cols], ref_grad.abs().max().item()
    if grad.dtype == torch.float32:
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6 * scale)
    else:
        torch.testing.assert_close(grad.float(), expected.to(grad.dtype).float(), rtol=2**-7, atol=1e-6 * scale)


def assert_matches_reference(inp: dict, impl: str, **kw) -> None:
    """``impl`` with the GRPOLossParams fields ``kw`` against the reference with the same."""
    params = GRPOLossParams(impl=impl, **kw)
    check_against(inp, reference(inp, params), *run_impl(inp, params))


def assert_token_logp_matches_reference(inp: dict, impl: str, *, temperature: float = 1.0,
                                        cols: slice = slice(None), tp_group=None) -> None:
    """token_logp (forward-only) equals the reference's logp/entropy on unmasked tokens, 0 elsewhere."""
    _, ref_tok, _ = reference(inp, GRPOLossParams(temperature=temperature))
    active = inp["weights"] != 0
    logp, entropy = token_logp(inp["logits"][:, cols], inp["target"], active, temperature=temperature,
                               vocab_start_index=cols.start or 0, tp_group=tp_group, impl=impl)
    for got, key in ((logp, "logp"), (entropy, "entropy")):
        torch.testing.assert_close(got[active], ref_tok[key].detach()[active], rtol=1e-5, atol=1e-5)
        assert torch.all(got[~active] == 0)


def tp_check(rank: int, world: int, impl: str, dtype: torch.dtype) -> None:
    """Run in each of ``world`` gloo processes: each holds a vocabulary shard; loss, per-token
    values and its shard of the gradient must equal the unsharded reference."""
    params = GRPOLossParams(temperature=0.8, eps_high=0.28, dual_clip_c=3.0, beta=0.05, entropy_coef=0.01, impl=impl)
    inp = make_inputs(v=300, dtype=dtype, temperature=0.8, seed=7)
    shard = inp["logits"].shape[1] // world
    cols = slice(rank * shard, (rank + 1) * shard)
    out = run_impl(inp, params, logits=inp["logits"][:, cols], tp_group=dist.group.WORLD,
                   vocab_start_index=cols.start)
    check_against(inp, reference(inp, params), *out, cols=cols)
    assert_token_logp_matches_reference(inp, impl, temperature=0.8, cols=cols, tp_group=dist.group.WORLD)
