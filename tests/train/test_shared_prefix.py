"""grpo.shared_prefix gives the update of one row per response: each response in the shared layout
sees exactly its own prompt and its own earlier tokens at their own positions; the layout's attention
equals SDPA under its dense mask; and megatron's GPTModel through the trainer's forward steps gives
the same log-probs, loss and gradients, and two whole GRPO steps the same metrics and weights.

Tolerances. The two layouts run the same arithmetic on the same tokens in other matrix shapes (one
row of ~P + kR positions instead of k rows of P + R), which reorders fp32 sums: a few ulps on logits
~1, so loss and log-probs rtol 1e-5 (atol 1e-6) and gradients rtol 1e-4 with atol 1e-5 of their
largest entry, as for algo.fused_output (tests/train/test_fused_output.py); whole steps as TP = 2 is
held to (tests/train/test_grpo_parallel.py). A response that sees another response, its prompt at
the wrong positions (RoPE read at the row's positions), or a first token predicted from the wrong
state moves log-probs by 1e-2 or more.
"""
from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F

from r1hpc.algo.loss import AlgoConfig
from r1hpc.config import ConfigError
from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
from r1hpc.model.config import ModelConfig
from r1hpc.model.sdpa_attention import MASKED_SCORE
from r1hpc.model.shared_prefix_attention import shared_prefix_attention
from r1hpc.train.engine import Engine, OptimConfig
from r1hpc.train.shared_prefix import check_shared_prefix_supported, shared_prefix_layout
from tests.multiproc import run_workers
from tests.train.workers import MODEL, MOE, grpo_run, update_probe

VOCAB = 300
# (prompt, response) lengths of each row: three rows on one prompt, two on a prompt of the same
# length that differs in one token, one alone, and a row with nothing to predict
ROWS = [(5, 4), (5, 1), (5, 6), (5, 2), (5, 5), (3, 7), (4, 0)]


def _rows() -> tuple[torch.Tensor, torch.Tensor]:
    """[b, L] fed tokens and the response mask, laid out as pack_rows lays them out."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, VOCAB, (5,), generator=g)]
    prompts.append(prompts[0].clone())
    prompts[1][2] = (prompts[1][2] + 1) % VOCAB
    prompts += [torch.randint(0, VOCAB, (n,), generator=g) for n in (3, 4)]
    which = [0, 0, 0, 1, 1, 2, 3]
    L = max(p + r for p, r in ROWS) - 1
    tokens = torch.zeros(len(ROWS), L, dtype=torch.long)
    mask = torch.zeros(len(ROWS), L, dtype=torch.bool)
    for i, ((p, r), w) in enumerate(zip(ROWS, which)):
        seq = torch.cat([prompts[w], torch.randint(0, VOCAB, (r,), generator=g)])
        tokens[i, :p + r - 1] = seq[:-1]
        if r:
            mask[i, p - 1:p + r - 1] = True
    return tokens, mask


def test_each_response_sees_its_own_row_at_its_own_positions():
    tokens, mask = _rows()
    layout = shared_prefix_layout(tokens, mask, width_multiple=4)
    assert layout.tokens.shape[0] == 3 and layout.tokens.shape[1] % 4 == 0  # three prompts; the empty row left out
    assert layout.tokens.shape[1] < mask.shape[1] * 2  # the first prompt's row holds it once, not three times
    flat_tokens, flat_pos = layout.tokens.flatten(), layout.positions.flatten()
    width = layout.tokens.shape[1]
    for i, q in mask.nonzero().tolist():
        g = int(layout.gather[i, q])
        assert int(flat_tokens[g]) == int(tokens[i, q]) and int(flat_pos[g]) == q
        r, at = divmod(g, width)
        visible = ~layout.attention_mask[r, 0, at]
        seen = sorted(zip(layout.tokens[r][visible].tolist(), layout.positions[r][visible].tolist()))
        assert seen == sorted(zip(tokens[i, :q + 1].tolist(), range(q + 1))), (i, q)
    assert (layout.gather[~mask] == -1).all()
    kept = layout.source >= 0
    torch.testing.assert_close(layout.rows_of(tokens, -1)[kept], layout.tokens[kept])
    assert (layout.rows_of(mask, False)[~kept] == False).all()  # noqa: E712
    picked = layout.pick(layout.tokens[..., None], mask)[:, 0]
    torch.testing.assert_close(picked, tokens[mask])


def test_rows_with_nothing_to_predict_have_no_layout():
    tokens, mask = _rows()
    assert shared_prefix_layout(tokens, torch.zeros_like(mask)) is None


def test_attention_equals_sdpa_under_the_dense_mask():
    tokens, mask = _rows()
    layout = shared_prefix_layout(tokens, mask)
    c, width = layout.tokens.shape
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(c, h, width, 8, generator=g, requires_grad=True) for h in (4, 2, 2))
    w = torch.randn(c, 4, width, 8, generator=g)
    bias = torch.zeros(layout.attention_mask.shape).masked_fill_(layout.attention_mask, MASKED_SCORE)
    real = (layout.source >= 0)[:, None, :, None]
    results = []
    for attend in (lambda: shared_prefix_attention(q, k, v, layout.attention, 0.3),
                   lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3, enable_gqa=True)):
        out = attend() * real
        grads = torch.autograd.grad((out * w).sum(), (q, k, v))
        results.append((out, *grads))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_unsupported_setups_name_the_setting():
    config = types.SimpleNamespace(pipeline_model_parallel_size=2, context_parallel_size=1,
                                   recompute_granularity=None, multi_latent_attention=False)
    engine = types.SimpleNamespace(config=config, model_cfg=ModelConfig(transformer_impl="local"))
    with pytest.raises(ConfigError, match="pipeline_model_parallel_size=1"):
        check_shared_prefix_supported(engine)


def _micro_batch(tokens: torch.Tensor, mask: torch.Tensor) -> dict:
    g = torch.Generator().manual_seed(2)
    B, S = tokens.shape
    return {"tokens": tokens, "targets": torch.roll(tokens, -1, 1), "response_mask": mask,
            "weights": mask.float() / float(mask.sum()),
            "advantages": torch.randn(B, generator=g)[:, None].expand(B, S).contiguous(),
            "old_logp": -5.7 + 0.3 * torch.randn(B, S, generator=g), "ref_logp": -5.7 + 0.3 * torch.randn(B, S, generator=g)}


def _steps(model_kw: dict, parallel_kw: dict, fused: bool) -> dict:
    """Per layout, the log-prob pass and one GRPO update's loss and gradients (no optimizer step)."""
    model_cfg = ModelConfig(vocab_size=VOCAB, **model_kw)
    init_distributed(ParallelConfig(**parallel_kw), model_cfg, seed=3)
    engine = Engine(model_cfg, ParallelConfig(**parallel_kw), OptimConfig())
    _, measure = update_probe(engine, AlgoConfig(beta=0.04, entropy_coef=0.01, temperature=0.8, fused_output=fused),
                              VOCAB, len(ROWS))
    out = {}
    tokens, mask = _rows()
    for shared in (False, True):
        mb = _micro_batch(tokens, mask)
        if shared:
            mb["shared_prefix"] = shared_prefix_layout(tokens, mask, engine.seq_multiple)
        out[shared] = measure(mb)
    destroy_distributed()
    return out


@pytest.mark.multiproc
@pytest.mark.parametrize("model_kw, parallel_kw, world, fused", [
    pytest.param(dict(MODEL, num_query_groups=2), {}, 1, False, id="tp1-gqa"),
    pytest.param(dict(MODEL, tie_embeddings=False), {}, 1, True, id="tp1-fused-output"),
    pytest.param(MODEL, {"tensor_model_parallel_size": 2, "sequence_parallel": True}, 2, False, id="tp2-sp"),
])
def test_same_log_probs_loss_and_gradients(model_kw, parallel_kw, world, fused):
    _, mask = _rows()
    for rank in run_workers(_steps, world, model_kw, parallel_kw, fused):
        a, b = rank[False], rank[True]
        torch.testing.assert_close(b["loss"], a["loss"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b["logp"][mask], a["logp"][mask], rtol=1e-5, atol=1e-6)
        for name, g in a["grads"].items():
            assert g.abs().max() > 0, name
            torch.testing.assert_close(b["grads"][name], g, rtol=1e-4, atol=1e-5 * g.abs().max().item(), msg=name)


@pytest.mark.multiproc
@pytest.mark.parametrize("model_kw, routing_kw", [
    pytest.param(MODEL, None, id="dense"),
    # routing replayed from the rollout, so no near-tied router score can flip between the layouts;
    # no load-balancing loss, which counts a shared prompt's tokens once instead of once per response
    pytest.param(dict(MOE, moe_aux_loss_coeff=0.0), {"replay": "rollout", "replay_reference": True}, id="moe-replay"),
])
def test_two_grpo_steps_match_one_row_per_response(tmp_path, model_kw, routing_kw):
    ckpt = str(tmp_path / "init")
    algo = dict(beta=0.04, loss_agg_mode="seq-mean-token-mean")
    (ref,) = run_workers(grpo_run, 1, model_kw, {}, ckpt, "save", algo, 2, routing_kw)
    (got,) = run_workers(grpo_run, 1, model_kw, {}, ckpt, "load", algo, 2, routing_kw, {"shared_prefix": True})
    assert all(m["actor/updates"] > 0 for m in ref["metrics"])
    for g, want in zip(got["metrics"], ref["metrics"]):
        assert g.keys() == want.keys()
        for key, value in want.items():
            if key.startswith(("sampling/", "rollout_corr/")):  # fp32 noise between decode and recompute
                assert math.isfinite(g[key]), key
                continue
            assert abs(g[key] - value) <= 1e-4 * abs(value) + 1e-7, (key, g[key], value)
    torch.testing.assert_close(got["logits"], ref["logits"], rtol=0, atol=1e-5)
    assert (ref["logits"] - ref["logits_before"]).abs().max() > 5e-5
