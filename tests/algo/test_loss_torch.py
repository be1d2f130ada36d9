"""The chunked, vocab-parallel torch path of grpo_loss against the fp32 reference."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from r1hpc.algo import GRPOLossParams, grpo_loss, params as params_mod, token_logp, vocab_parallel
from tests.algo.dist_utils import run_gloo
from tests.algo.harness import assert_matches_reference, assert_token_logp_matches_reference, make_inputs, tp_check

AGG = ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]
OPTIONS = [  # (entropy_coef, beta, dual_clip_c, kl_kind)
    (0.0, 0.0, None, "k3"),
    (0.01, 0.1, 3.0, "k3"),
    (0.01, 0.0, None, "k1"),
    (0.0, 0.1, 3.0, "k2"),
]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """About 5 tokens per chunk, so every test crosses several chunks."""
    monkeypatch.setattr(vocab_parallel, "CHUNK_BYTES", 5 * 4 * 300)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("agg, temperature", [(AGG[0], 1.0), (AGG[1], 0.7), (AGG[2], 1.3)])
@pytest.mark.parametrize("opts", OPTIONS)
def test_torch_path_matches_reference(dtype, agg, temperature, opts):
    ent, beta, dual, kl_kind = opts
    inp = make_inputs(dtype=dtype, temperature=temperature, agg=agg, seed=10 * AGG.index(agg) + OPTIONS.index(opts))
    assert_matches_reference(inp, "torch", temperature=temperature, eps_low=0.2, eps_high=0.28,
                             dual_clip_c=dual, beta=beta, kl_kind=kl_kind, entropy_coef=ent)


def test_without_ref_and_tis():
    inp = make_inputs(seed=3)
    inp["ref_logp"] = inp["tis_weight"] = None
    assert_matches_reference(inp, "torch", entropy_coef=0.02)


@pytest.mark.parametrize("beta, entropy_coef, temperature", [(0.0, 0.0, 1.0), (0.1, 0.01, 0.7)])
def test_on_policy_loss_takes_its_own_logp(beta, entropy_coef, temperature):
    """``old_logp`` None (one update per rollout): the loss, metrics and gradient of passing the
    policy's own log-probs as the old ones, with every ratio exactly 1."""
    inp = make_inputs(seed=4, temperature=temperature)
    params = GRPOLossParams(impl="torch", temperature=temperature, beta=beta, entropy_coef=entropy_coef,
                            eps_high=0.28)
    own, _ = token_logp(inp["logits"], inp["target"], temperature=temperature, impl="torch")
    out = {}
    for name, old in (("on-policy", None), ("own", own)):
        x = inp["logits"].clone().requires_grad_()
        loss, metrics = grpo_loss(x, inp["target"], old, inp["advantages"], inp["weights"], params,
                                  ref_logp=inp["ref_logp"], tis_weight=inp["tis_weight"])
        loss.backward()
        out[name] = (loss.detach(), metrics, x.grad)
    (loss, metrics, grad), (loss_own, metrics_own, grad_own) = out["on-policy"], out["own"]
    assert metrics["ratio_min"].item() == metrics["ratio_max"].item() == 1.0
    torch.testing.assert_close(loss, loss_own, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, grad_own, rtol=1e-6, atol=1e-7)
    for key in ("kl_mean", "entropy_mean", "clipfrac_low", "clipfrac_high"):
        torch.testing.assert_close(metrics[key], metrics_own[key], rtol=1e-6, atol=1e-7)


def test_empty_batch():
    loss, metrics = grpo_loss(torch.zeros(0, 7, requires_grad=True), torch.zeros(0, dtype=torch.long),
                              torch.zeros(0), torch.zeros(0), torch.zeros(0), GRPOLossParams(impl="torch"))
    assert loss.item() == 0.0 and metrics["clipfrac_low"].item() == 0.0


def test_impl_resolution(monkeypatch):
    x = torch.zeros(2, 3)
    monkeypatch.delenv(params_mod.IMPL_ENV, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert params_mod.resolve_impl("auto", x) == "torch"
    monkeypatch.setenv(params_mod.IMPL_ENV, "triton")
    assert params_mod.resolve_impl("auto", x) == "triton"
    assert params_mod.resolve_impl("torch", x) == "torch"  # an explicit choice wins
    with pytest.raises(ValueError):
        params_mod.resolve_impl("cuda", x)  # type: ignore[arg-type]
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs CUDA"):
        params_mod.resolve_impl("triton", x)


@pytest.mark.multiproc
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vocab_parallel_tp2_torch(dtype):
    run_gloo(tp_check, "torch", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logp_torch(dtype):
    assert_token_logp_matches_reference(make_inputs(dtype=dtype, temperature=0.7, seed=4), "torch", temperature=0.7)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 70), st.integers(0, 2**16))
def test_edge_shapes(t, v, seed):
    """Tiny and odd shapes: one token, a vocabulary of 1."""
    inp = make_inputs(b=1, length=t, v=v, seed=seed)
    assert_matches_reference(inp, "torch", beta=0.1, entropy_coef=0.01, dual_clip_c=3.0)
