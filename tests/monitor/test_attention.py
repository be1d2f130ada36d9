"""Attention jumps: the measurement on constructed attention patterns with known answers, and on
the real megatron-core model (recomputed attention equals the model's own; TP=2 equals TP=1; with
the QKV projection zeroed attention is uniform and the measurement matches the closed form)."""
import pytest
import torch

from r1hpc.monitor.attention import causal_probs, distant_mass, jump_windows
from tests.monitor.batches import tokenizer
from tests.monitor.workers import DISTANCE, MARKERS, SEQS, WINDOW, attention_checks
from tests.multiproc import run_workers


def _uniform_mass(q: int, d: int) -> float:
    """Uniform attention over keys 0..q: the share of keys at least d back."""
    return max(0, q - d + 1) / (q + 1)


def test_distant_mass_of_uniform_and_local_attention():
    s, d = 12, 3
    uniform = torch.tril(torch.ones(s, s))
    uniform = uniform / uniform.sum(-1, keepdim=True)
    assert torch.allclose(distant_mass(uniform, d), torch.tensor([_uniform_mass(q, d) for q in range(s)]))
    local = torch.eye(s)  # every query attends to itself only: nothing is distant
    assert torch.equal(distant_mass(local, d), torch.zeros(s))
    first = torch.zeros(s, s)
    first[:, 0] = 1  # every query attends to the first token: distant from query d on
    assert torch.equal(distant_mass(first, d), (torch.arange(s) >= d).float())


def test_jump_windows_see_a_jump_only_where_there_is_one():
    heads, s, w = 2, 40, 5
    mass = torch.full((heads, s), 0.1)
    mass[:, 20:] = 0.6  # attention moves to distant tokens from the marker at 20 on
    (before, after), = jump_windows(mass, [20], w)
    assert before == pytest.approx(0.1) and after == pytest.approx(0.6)
    (before, after), = jump_windows(mass, [10], w)  # a marker far from the change: no jump
    assert before == pytest.approx(after)
    mass[1] = 0.0  # one head never looks back: the mean over heads halves
    (before, after), = jump_windows(mass, [20], w)
    assert after == pytest.approx(0.3)
    assert jump_windows(mass, [3, 37], w) == []  # no full window on one side: skipped


def test_causal_probs_grouped_query_heads_and_masking():
    torch.manual_seed(0)
    s, b, h, g, d = 7, 2, 4, 2, 8
    q, k = torch.randn(s, b, h, d), torch.randn(s, b, g, d)
    p = causal_probs(q, k)
    assert p.shape == (b, h, s, s)
    assert torch.allclose(p.sum(-1), torch.ones(b, h, s))
    assert torch.equal(p.triu(1), torch.zeros_like(p))
    ref = torch.softmax((q[:, 0, 3] @ k[:, 0, 1].T) / d ** 0.5 + torch.full((s, s), float("-inf")).triu(1), -1)
    assert torch.allclose(p[0, 3], ref, atol=1e-6)  # query head 3 reads key head 3 // 2 = 1


@pytest.mark.multiproc
def test_attention_jumps_on_the_real_model_tp1_and_tp2(tmp_path):
    ckpt, tok_dir = str(tmp_path / "w"), str(tmp_path / "tok")
    tokenizer().save(tok_dir)
    (one,) = run_workers(attention_checks, 1, {}, ckpt, "save", tok_dir)
    assert len(one["errors"]) == 2 and max(one["errors"]) < 1e-5, one["errors"]
    before, after, n = one["real"]
    assert n == 2 * 3 and 0 <= before <= n and 0 <= after <= n
    windows = [(seq, p) for seq, ps in zip(SEQS, MARKERS) for p in ps]
    expect_before = 2 * sum(sum(_uniform_mass(q, DISTANCE) for q in range(p - WINDOW, p)) / WINDOW for _, p in windows)
    expect_after = 2 * sum(sum(_uniform_mass(q, DISTANCE) for q in range(p, p + WINDOW)) / WINDOW for _, p in windows)
    assert one["uniform"] == pytest.approx([expect_before, expect_after, 6], abs=1e-5)
    m = one["monitor"]  # the monitor, through the same model: 3 marked responses x 2 layers
    assert m["monitor/attn_windows"] == 6
    assert m["monitor/attn_jump"] == pytest.approx(m["monitor/attn_distant_after"] - m["monitor/attn_distant_before"])
    two = run_workers(attention_checks, 2, {"tensor_model_parallel_size": 2}, ckpt, "load", tok_dir)
    for r in two:
        assert max(r["errors"]) < 1e-5
        assert r["real"] == pytest.approx(one["real"], abs=1e-5)
        assert r["uniform"] == pytest.approx(one["uniform"], abs=1e-5)
        assert r["monitor"] == pytest.approx(one["monitor"], abs=1e-5)
