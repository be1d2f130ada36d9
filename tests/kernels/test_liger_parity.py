"""An independent check of our semantics: Liger-Kernel's Triton GRPO loss (when installed) gives
the same per-token loss as our fp32 reference for the options both support (token-level ratio
clip with eps_low/eps_high, k3 KL times beta, temperature)."""
import pytest
import torch

from r1hpc.algo import grpo_token_loss_reference


def test_per_token_loss_matches_liger(device):
    liger = pytest.importorskip("liger_kernel.transformers.grpo_loss")
    g = torch.Generator().manual_seed(0)
    b, length, v, temp = 2, 6, 200, 0.9
    logits = torch.randn(b, length + 1, v, generator=g) * 3  # Liger drops the last position
    target = torch.randint(0, v, (b, length), generator=g)
    with torch.no_grad():
        logp = torch.log_softmax(logits[:, :-1] / temp, -1).gather(2, target[..., None]).squeeze(-1)
    old = logp + 0.4 * torch.randn(b, length, generator=g)
    ref = logp + 0.4 * torch.randn(b, length, generator=g)
    adv = torch.randn(b, generator=g)
    kw = dict(temperature=temp, beta=0.04, eps_low=0.2, eps_high=0.28)
    ours = grpo_token_loss_reference(logits[:, :-1].reshape(-1, v), target.flatten(), old.flatten(), ref.flatten(),
                                     adv.repeat_interleave(length), **kw)["loss"]
    on = lambda x: x.to(device)  # noqa: E731
    theirs = liger.triton_grpo_loss(on(logits), on(old), on(ref), on(target), on(adv),
                                    on(torch.ones(b, length, dtype=torch.bool)), inplace=False, **kw)[0]
    # fp32 on both sides; different reduction order over V = 200
    torch.testing.assert_close(theirs.flatten().cpu(), ours, rtol=1e-5, atol=1e-5)
