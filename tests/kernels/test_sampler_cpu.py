"""The compiled sampler (csrc/, CPU build) against the torch fp32 reference (r1hpc.rollout.sampling).

Tolerances: log-probs and entropies are computed in float32 with a double-precision sum, from
x * (1/T) where the reference divides by T, so they agree to a few float ulps: 2e-5 absolute on
the values here (|logp| < 15). Distributions: chi-square over 20,000 independent draws (one
request id per row) against the 0.1% critical value; with fixed seeds each test is deterministic.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import r1hpc._cpu_sampling as ext
from r1hpc.config import ConfigError
from r1hpc.rollout import native
from r1hpc.rollout.native import resolve_sampler, sample_tokens_native
from r1hpc.rollout.sampling import sample_tokens, truncated_probs
from r1hpc.run_config import load_run_config

CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32, 8: 26.12, 9: 27.88}
N_DRAWS = 20_000


def draw(logits, *, seed=7, ids=None, step=0, **kw):
    ids = torch.arange(len(logits)) if ids is None else ids
    return sample_tokens_native(logits, seed=seed, request_ids=ids, step=step, **kw)


@pytest.mark.parametrize("ctr, key, expected", [  # Random123 tests/kat_vectors, philox4x32 10
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(ctr, key, expected):
    assert tuple(ext.philox4x32_10(*ctr, *key)) == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.6, 0, 0.95), (1.3, 20, 1.0), (0.8, 50, 0.7)])
def test_logprob_and_entropy_are_the_references(dtype, temperature, top_k, top_p):
    """Whatever the filters, both are those of the temperature distribution before truncation."""
    logits = (torch.randn(64, 1000, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    tok, logp, ent = draw(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    ref_logp_all = torch.log_softmax(logits.float() / temperature, -1)
    _, _, ref_ent = sample_tokens(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    torch.testing.assert_close(logp, ref_logp_all.gather(1, tok[:, None]).squeeze(1), rtol=0, atol=2e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=2e-5)
    assert torch.isfinite(logp).all() and (logp <= 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_is_the_first_argmax(dtype):
    logits = torch.randint(-3, 3, (200, 30), generator=torch.Generator().manual_seed(1)).to(dtype)  # many ties
    tok, logp, ent = draw(logits, temperature=0.0)
    assert torch.equal(tok, logits.float().argmax(-1))
    ref = torch.log_softmax(logits.float(), -1)
    torch.testing.assert_close(logp, ref.gather(1, tok[:, None]).squeeze(1), rtol=0, atol=2e-5)
    torch.testing.assert_close(ent, -(ref.exp() * ref).sum(-1), rtol=0, atol=2e-5)


def chi_square(tokens: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """(statistic, degrees of freedom) of token counts against probs [V]; asserts nothing outside
    the support was drawn."""
    counts = torch.bincount(tokens, minlength=len(probs)).double()
    support = probs > 0
    assert counts[~support].sum() == 0, f"drew tokens outside the kept set: {counts[~support]}"
    expected = probs[support].double() * len(tokens)
    return float(((counts[support] - expected) ** 2 / expected).sum()), int(support.sum()) - 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 4, 1.0), (1.3, 0, 0.8), (0.9, 6, 0.9), (1.0, 0, 0.5)])
def test_frequencies_follow_the_truncated_distribution(dtype, temperature, top_k, top_p):
    row = torch.tensor([2.0, 1.5, 1.2, 1.0, 0.6, 0.3, 0.0, -0.4, -1.0, -2.5]).to(dtype)
    tok, _, _ = draw(row.expand(N_DRAWS, -1), seed=11, temperature=temperature, top_k=top_k, top_p=top_p)
    probs = truncated_probs(row[None], temperature=temperature, top_k=top_k, top_p=top_p)[0]
    stat, dof = chi_square(tok, probs)
    if dof == 0:
        return  # one kept token, always drawn (chi_square checked nothing else was)
    assert stat < CHI2_999[dof], (stat, dof, probs)


def contract_draw(row: torch.Tensor, *, temperature: float, seed: int, request: int, step: int,
                  kept: torch.Tensor) -> int:
    """The draw as csrc/sampler_common.h defines it, token by token in Python: argmax over kept i of
    float(double(x_i * (1/T)) + g_i), ties to the smaller index, g from the Philox word of (i / 4,
    step, request, seed). The kernel computes the same thing while skipping tokens that cannot win."""
    scaled = row.float().numpy() * np.float32(1.0 / temperature)  # float products, as the kernel's
    best, best_index = -math.inf, -1
    for i in range(len(row)):
        if i % 4 == 0:
            words = ext.philox4x32_10(i // 4, step, request & 0xFFFFFFFF, request >> 32, seed & 0xFFFFFFFF, seed >> 32)
        if not kept[i]:
            continue
        gumbel = -math.log(-math.log((words[i % 4] + 0.5) * (1.0 / 4294967296.0)))
        score = float(np.float32(float(scaled[i]) + gumbel))
        if best_index < 0 or score > best:
            best, best_index = score, i
    return best_index


@pytest.mark.parametrize("temperature, top_k, dtype", [
    (1.0, 0, torch.float32), (0.5, 0, torch.float32), (2.0, 0, torch.float32), (1.0, 40, torch.float32),
    (0.7, 0, torch.bfloat16)])
def test_draw_is_the_contracts_gumbel_argmax_token_for_token(temperature, top_k, dtype):
    """Logits spread like a language model's (most tokens 20-40 below the top, where the kernel skips
    the Philox words and logs), a few rows masked with -inf, one row all equal; the kernel must
    draw exactly the token the contract defines, not just one from the same distribution."""
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(24, 1501, generator=g) * 8 + torch.randn(24, 1, generator=g) * 3
    logits[::5, 100:900] = -math.inf
    logits[7] = 0.25
    logits = logits.to(dtype)
    ids = torch.randint(0, 2**40, (24,), generator=g)
    seed, step = 2**62 + 99, 31
    tokens, _, _ = draw(logits, seed=seed, ids=ids, step=step, temperature=temperature, top_k=top_k)
    kept = truncated_probs(logits, temperature=temperature, top_k=top_k) > 0  # distinct values: no ties at k
    expected = [contract_draw(logits[r], temperature=temperature, seed=seed, request=int(ids[r]), step=step,
                              kept=kept[r]) for r in range(len(logits))]
    assert tokens.tolist() == expected


@pytest.mark.parametrize("scale", [30.0, 300.0])
def test_logprob_and_entropy_of_widely_spread_logits(scale):
    """Most of the row underflows exp (the kernel flushes exp below e^-88 to 0) and a few tokens are -inf."""
    logits = torch.randn(16, 4000, generator=torch.Generator().manual_seed(3)) * scale
    logits[:, :50] = -math.inf
    tok, logp, ent = draw(logits, temperature=1.0)
    ref = torch.log_softmax(logits, -1)
    torch.testing.assert_close(logp, ref.gather(1, tok[:, None]).squeeze(1), rtol=0, atol=2e-5)
    torch.testing.assert_close(ent, -(ref.exp() * ref).nan_to_num().sum(-1), rtol=0, atol=2e-5)


def test_top_k_keeps_every_tie_of_the_kth_value():
    row = torch.tensor([3.0, 1.0, 2.0, 1.0, 0.5, 1.0], dtype=torch.bfloat16)
    tok, _, _ = draw(row.expand(N_DRAWS, -1), temperature=1.0, top_k=2)
    probs = truncated_probs(row[None], temperature=1.0, top_k=2)[0]  # 3.0 and 2.0 only
    stat, dof = chi_square(tok, probs)
    assert stat < CHI2_999[dof]
    tok, _, _ = draw(row.expand(N_DRAWS, -1), temperature=1.0, top_k=3)  # the k-th value 1.0 is a 3-way tie
    assert set(tok.tolist()) == {0, 1, 2, 3, 5}


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 40), p=st.floats(0.05, 1.0), t=st.floats(0.3, 2.0), seed=st.integers(0, 2**40))
def test_never_draws_outside_top_k_and_nucleus(k, p, t, seed):
    logits = torch.randn(256, 64, generator=torch.Generator().manual_seed(seed % 2**31)) * 2
    tok, _, _ = draw(logits, seed=seed, temperature=t, top_k=k, top_p=p)
    kept = truncated_probs(logits, temperature=t, top_k=k, top_p=p) > 0
    # the reference's rule on fp32 sums; the kernel's on exact fixed point: a token within 1e-6 of
    # the top-p boundary may fall either way, so allow those and nothing else
    probs = torch.softmax(torch.where(truncated_probs(logits, temperature=t, top_k=k) > 0, logits / t, -math.inf), -1)
    mass_above = (probs[:, None, :] * (probs[:, None, :] > probs[:, :, None])).sum(-1)
    borderline = (mass_above - p).abs() < 1e-6
    ok = kept.gather(1, tok[:, None]).squeeze(1) | borderline.gather(1, tok[:, None]).squeeze(1)
    assert bool(ok.all())


def test_same_seed_same_tokens_other_seed_or_step_other_tokens():
    logits = torch.randn(512, 50, generator=torch.Generator().manual_seed(5))
    a = draw(logits, seed=9, temperature=0.9, top_p=0.9)[0]
    assert torch.equal(a, draw(logits, seed=9, temperature=0.9, top_p=0.9)[0])
    assert (a != draw(logits, seed=10, temperature=0.9, top_p=0.9)[0]).float().mean() > 0.5
    assert (a != draw(logits, seed=9, step=1, temperature=0.9, top_p=0.9)[0]).float().mean() > 0.5


def test_a_requests_draw_does_not_depend_on_its_batch_neighbours():
    g = torch.Generator().manual_seed(6)
    logits, ids = torch.randn(64, 300, generator=g), torch.randint(0, 2**40, (64,), generator=g)
    kw = dict(seed=2**63 + 12345, step=17, temperature=1.1, top_k=40, top_p=0.9)  # a seed above 2^63 too
    full = draw(logits, ids=ids, **kw)[0]
    perm = torch.randperm(64, generator=g)
    assert torch.equal(draw(logits[perm], ids=ids[perm], **kw)[0], full[perm])
    alone = torch.cat([draw(logits[i:i + 1], ids=ids[i:i + 1], **kw)[0] for i in range(0, 64, 7)])
    assert torch.equal(alone, full[0:64:7])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_spread_over_threads_draw_what_one_thread_draws(dtype):
    """Rows are sampled in parallel over torch's threads: every thread count gives the same tokens,
    log-probs and entropies (an odd row count, so the threads get unequal shares)."""
    g = torch.Generator().manual_seed(8)
    logits, ids = (torch.randn(37, 4000, generator=g) * 3).to(dtype), torch.randint(0, 2**40, (37,), generator=g)
    kw = dict(seed=3, step=5, temperature=0.9, top_k=0, top_p=0.95)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = draw(logits, ids=ids, **kw)
        torch.set_num_threads(3)
        several = draw(logits, ids=ids, **kw)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, several):
        assert torch.equal(a, b)


def test_strided_rows_equal_contiguous_ones():
    """generate() passes logits[:, :vocab_size], a view with the TP vocab padding between rows."""
    padded = torch.randn(32, 128, generator=torch.Generator().manual_seed(8))
    kw = dict(temperature=0.8, top_k=30, top_p=0.95)
    for a, b in zip(draw(padded[:, :97], **kw), draw(padded[:, :97].contiguous(), **kw)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("call, error, message", [
    (lambda: draw(torch.randn(4, 10).long()), TypeError, "float32, bfloat16 or float16"),
    (lambda: draw(torch.randn(4, 10).double()), TypeError, "float32, bfloat16 or float16"),
    (lambda: draw(torch.randn(10), ids=torch.arange(1)), ValueError, r"\[batch, vocab\]"),
    (lambda: draw(torch.randn(2, 3, 4)), ValueError, r"\[batch, vocab\]"),
    (lambda: draw(torch.randn(4, 10), top_p=0.0), ValueError, r"top_p must be in \(0, 1\]"),
    (lambda: draw(torch.randn(4, 10), top_p=1.5), ValueError, r"top_p must be in \(0, 1\]"),
    (lambda: draw(torch.randn(4, 10), top_p=float("nan")), ValueError, r"top_p must be in \(0, 1\]"),
    (lambda: draw(torch.randn(4, 10), top_k=-1), ValueError, "top_k must be"),
    (lambda: draw(torch.randn(4, 10), temperature=-0.5), ValueError, "temperature must be >= 0"),
    (lambda: draw(torch.randn(4, 10), ids=torch.arange(3)), ValueError, r"request_ids must have shape \[4\]"),
    (lambda: draw(torch.randn(4, 0)), ValueError, "vocab size"),
    # the extension checks on its own too (a direct call must not read out of bounds)
    (lambda: ext.sample(torch.randn(4, 10), 1.0, 0, 1.5, 0, torch.arange(4), 0), ValueError, "top_p"),
    (lambda: ext.sample(torch.randn(4, 10), 1.0, 0, 1.0, 0, torch.arange(3), 0), ValueError, "request_ids"),
    (lambda: ext.sample(torch.randn(4, 10).double(), 1.0, 0, 1.0, 0, torch.arange(4), 0), TypeError, "float32"),
])
def test_bad_input_is_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_sampler_choice(monkeypatch):
    assert resolve_sampler("torch", "cpu") == "torch"
    assert resolve_sampler("auto", "cpu") == "native"  # the CPU extension is built by the install
    assert resolve_sampler("native", "cpu") == "native"
    with pytest.raises(ConfigError, match="key 'sampler' must be one of auto, torch, native"):
        resolve_sampler("fast", "cpu")
    # without the extension: auto falls back to torch, native is refused at config load, naming the key
    monkeypatch.setattr(native, "_load", lambda device_type: (None, "r1hpc._cpu_sampling is not built here"))
    assert resolve_sampler("auto", "cpu") == "torch"
    assert load_run_config(None, ["rollout.sampler=auto"]).rollout.sampler == "auto"
    with pytest.raises(ConfigError, match="section 'rollout': key 'sampler' is 'native' but r1hpc._cpu_sampling "
                                          "is not built here; build it with `pip install --no-build-isolation"):
        load_run_config(None, ["rollout.sampler=native"])
