"""An independent check of our semantics: Liger-Kernel's Triton GRPO loss (the interpreter on CPU)
against r1hpc.algo for the options both support (token-level ratio clip with eps_low/eps_high, k3
KL times beta, temperature): the per-token loss against our fp32 reference, and the reduced loss
and its gradient on the logits, for each Liger loss_type against the r1hpc aggregation mode it
corresponds to (docs/algorithms.md)."""
import pytest
import torch

from r1hpc.algo import GRPOLossParams, aggregation_weights, grpo_loss, grpo_token_loss_reference

liger = pytest.importorskip("liger_kernel.transformers.grpo_loss")

B, L, V, TEMP = 3, 6, 200, 0.9
KW = dict(temperature=TEMP, eps_low=0.2, eps_high=0.28)
MODE = {"grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dapo": "token-mean",
        "dr_grpo": "seq-mean-token-sum-norm"}


def inputs(seed: int = 0):
    """Logits [B, L+1, V] (Liger drops the last position), targets, off-policy old and reference
    log-probs (ratios beyond both clip bounds), advantages of both signs, responses of 6, 4, 2 tokens."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, L + 1, V, generator=g) * 3
    target = torch.randint(0, V, (B, L), generator=g)
    with torch.no_grad():
        logp = torch.log_softmax(logits[:, :-1] / TEMP, -1).gather(2, target[..., None]).squeeze(-1)
    old = logp + 0.4 * torch.randn(B, L, generator=g)
    ref = logp + 0.4 * torch.randn(B, L, generator=g)
    adv = torch.tensor([1.3, -0.7, 0.4])
    mask = torch.arange(L)[None] < torch.tensor([6, 4, 2])[:, None]
    return logits, target, old, ref, adv, mask


def test_per_token_loss_matches_liger(device):
    logits, target, old, ref, adv, _ = inputs()
    kw = dict(KW, beta=0.04)
    ours = grpo_token_loss_reference(logits[:, :-1].reshape(-1, V), target.flatten(), old.flatten(), ref.flatten(),
                                     adv.repeat_interleave(L), GRPOLossParams(**kw))["loss"]
    on = lambda x: x.to(device)  # noqa: E731
    theirs = liger.triton_grpo_loss(on(logits), on(old), on(ref), on(target), on(adv),
                                    on(torch.ones(B, L, dtype=torch.bool)), inplace=False, **kw)[0]
    # fp32 on both sides; different reduction order over V = 200
    torch.testing.assert_close(theirs.flatten().cpu(), ours, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", list(MODE))
def test_reduced_loss_and_gradient_match_liger(device, loss_type, beta):
    logits, target, old, ref, adv, mask = inputs(seed=1)
    ratio = torch.exp(torch.log_softmax(logits[:, :-1] / TEMP, -1).gather(2, target[..., None]).squeeze(-1) - old)
    assert (ratio[mask] > 1.28).any() and (ratio[mask] < 0.8).any()  # both clip bounds are active

    theirs_in = logits.detach().to(device).requires_grad_()
    on = lambda x: x.to(device)  # noqa: E731
    theirs, _ = liger.triton_grpo_loss(theirs_in, on(old), on(ref), on(target), on(adv), on(mask), beta=beta,
                                       inplace=False, loss_type=loss_type, max_completion_length=L, reduce=True,
                                       **KW)
    theirs.backward()

    ours_in = logits[:, :-1].reshape(-1, V).detach().clone().requires_grad_()
    weights = aggregation_weights(mask, MODE[loss_type], max_len=L).flatten()
    ours, _ = grpo_loss(ours_in, target.flatten(), old.flatten(), adv.repeat_interleave(L), weights,
                        GRPOLossParams(beta=beta, kl_kind="k3", impl="torch", **KW), ref_logp=ref.flatten())
    ours.backward()

    torch.testing.assert_close(theirs.detach().cpu(), ours.detach(), rtol=1e-5, atol=1e-6)
    grad = theirs_in.grad.cpu()
    torch.testing.assert_close(grad[:, :-1].reshape(-1, V), ours_in.grad, rtol=1e-4, atol=1e-6)
    assert not grad[:, -1].any()  # the last position predicts nothing
