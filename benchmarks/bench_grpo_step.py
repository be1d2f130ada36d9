"""GRPO step throughput: the megatron-core path (what r1hpc trains with) against a plain-PyTorch loop
of the same architecture, on the same workload.

Workload (the tiny recipe's shape): 32 prompts x G=8 = 256 rows, 24-token prompts, exactly
``--new-tokens`` sampled tokens per row (no early stop, so both paths do identical work whatever
the weights), then GRPO updates (2 mini-batches of 128 rows, token-mean loss) with the same loss
function (``r1hpc.algo.grpo_loss``, torch path). Rewards are left out: they are the same code for
both. Reports seconds per phase and GRPO steps per minute; writes JSON to benchmarks/results/.

    python benchmarks/bench_grpo_step.py --steps 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from r1hpc.algo.loss import aggregation_weights, grpo_loss
from r1hpc.algo.params import GRPOLossParams

VOCAB, LAYERS, HIDDEN, HEADS, EXPERTS, TOPK, EXPERT_FFN, MAXLEN = 384, 4, 128, 4, 4, 2, 128, 256


# ----------------------------------------------------------------------------- plain PyTorch model
class PlainMoEGPT(torch.nn.Module):
    """RoPE + RMSNorm + top-2 SwiGLU MoE decoder with a KV cache: the tiny recipe's architecture."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, HIDDEN)
        self.layers = torch.nn.ModuleList([torch.nn.ModuleDict(dict(
            n1=torch.nn.RMSNorm(HIDDEN), qkv=torch.nn.Linear(HIDDEN, 3 * HIDDEN, bias=False),
            proj=torch.nn.Linear(HIDDEN, HIDDEN, bias=False), n2=torch.nn.RMSNorm(HIDDEN),
            router=torch.nn.Linear(HIDDEN, EXPERTS, bias=False),
            fc1=torch.nn.ModuleList([torch.nn.Linear(HIDDEN, 2 * EXPERT_FFN, bias=False) for _ in range(EXPERTS)]),
            fc2=torch.nn.ModuleList([torch.nn.Linear(EXPERT_FFN, HIDDEN, bias=False) for _ in range(EXPERTS)]),
        )) for _ in range(LAYERS)])
        self.norm = torch.nn.RMSNorm(HIDDEN)
        inv = 1.0 / (10000 ** (torch.arange(0, HIDDEN // HEADS, 2).float() / (HIDDEN // HEADS)))
        freqs = torch.outer(torch.arange(MAXLEN).float(), inv)
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def _rope(self, x, pos):
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # [s, 1, d/2]
        x1, x2 = x[..., ::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)

    def _moe(self, layer, x):
        flat = x.reshape(-1, HIDDEN)
        probs = torch.softmax(layer["router"](flat), -1)
        w, idx = probs.topk(TOPK, -1)
        out = torch.zeros_like(flat)
        for e in range(EXPERTS):
            rows, slot = (idx == e).nonzero(as_tuple=True)
            if len(rows):
                g, u = layer["fc1"][e](flat[rows]).chunk(2, -1)
                out.index_add_(0, rows, layer["fc2"][e](F.silu(g) * u) * w[rows, slot, None])
        return out.view_as(x)

    def forward(self, tokens, start=0, cache=None):
        b, s = tokens.shape
        pos = torch.arange(start, start + s)
        x = self.emb(tokens)
        for i, layer in enumerate(self.layers):
            q, k, v = layer["qkv"](layer["n1"](x)).view(b, s, 3, HEADS, HIDDEN // HEADS).unbind(2)
            q, k = self._rope(q, pos), self._rope(k, pos)
            if cache is not None:
                if i in cache:
                    k, v = torch.cat([cache[i][0], k], 1), torch.cat([cache[i][1], v], 1)
                cache[i] = (k, v)
            att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 is_causal=s > 1)
            x = x + layer["proj"](att.transpose(1, 2).reshape(b, s, HIDDEN))
            x = x + self._moe(layer, layer["n2"](x))
        return self.norm(x) @ self.emb.weight.T


# ----------------------------------------------------------------------------- shared workload
def make_prompts(rows: int, prompt_len: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, VOCAB, (rows // 8, prompt_len), generator=g).repeat_interleave(8, 0)


def update_batches(seqs: torch.Tensor, prompt_len: int, mini_batches: int):
    rows, width = seqs.shape[0], seqs.shape[1] - 1
    mask = torch.zeros(rows, width, dtype=torch.bool)
    mask[:, prompt_len - 1:] = True
    adv = torch.randn(rows // 8, 1, generator=torch.Generator().manual_seed(1)).repeat_interleave(8, 0).expand(-1, width)
    for part in range(mini_batches):
        idx = torch.arange(part, rows, mini_batches)
        w = aggregation_weights(mask[idx], "token-mean")
        yield seqs[idx, :-1], seqs[idx, 1:], mask[idx], adv[idx].contiguous(), w


def plain_step(model, opt, prompts, new_tokens, mini_batches) -> dict[str, float]:
    t0 = time.perf_counter()
    with torch.no_grad():
        cache: dict = {}
        logits = model(prompts, 0, cache)[:, -1]
        seq = [prompts]
        for i in range(new_tokens):
            tok = torch.multinomial(torch.softmax(logits, -1), 1)
            seq.append(tok)
            if i < new_tokens - 1:
                logits = model(tok, prompts.shape[1] + i, cache)[:, -1]
    seqs = torch.cat(seq, 1)
    t1 = time.perf_counter()
    for tokens, targets, mask, adv, w in update_batches(seqs, prompts.shape[1], mini_batches):
        logits = model(tokens)
        sel = mask
        with torch.no_grad():
            old = torch.log_softmax(logits[sel].detach(), -1).gather(-1, targets[sel][:, None]).squeeze(-1)
        loss, _ = grpo_loss(logits[sel], targets[sel], old, adv[sel], w[sel], GRPOLossParams(impl="torch"))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    t2 = time.perf_counter()
    return {"rollout_s": t1 - t0, "train_s": t2 - t1, "step_s": t2 - t0}


def megatron_setup():
    os.environ.setdefault("MASTER_PORT", "29731")
    from r1hpc.distributed import ParallelConfig, init_distributed
    from r1hpc.model.config import ModelConfig
    from r1hpc.train.engine import Engine, OptimConfig

    model_cfg = ModelConfig(num_layers=LAYERS, hidden_size=HIDDEN, ffn_hidden_size=2 * HIDDEN,
                            num_attention_heads=HEADS, vocab_size=VOCAB, max_seq_length=MAXLEN,
                            num_moe_experts=EXPERTS, moe_router_topk=TOPK, moe_ffn_hidden_size=EXPERT_FFN)
    init_distributed(ParallelConfig(), model_cfg, seed=0)
    return Engine(model_cfg, ParallelConfig(), OptimConfig(lr=1e-5))


def megatron_step(engine, prompts, new_tokens, mini_batches) -> dict[str, float]:
    from functools import partial

    from r1hpc.rollout.generate import generate
    from r1hpc.train.grpo_update import _grpo_loss_func, _logits
    from r1hpc.algo.loss import AlgoConfig

    t0 = time.perf_counter()
    samples = generate(engine.module, prompts.tolist(), vocab_size=VOCAB, stop_ids=[], temperature=1.0,
                       max_new_tokens=new_tokens, max_seq_length=MAXLEN, generator=torch.Generator().manual_seed(0))
    seqs = torch.tensor([s.prompt_ids + s.response_ids for s in samples])
    t1 = time.perf_counter()
    algo = AlgoConfig(beta=0.0, loss_agg_mode="token-mean", impl="torch", temperature=1.0)
    for tokens, targets, mask, adv, w in update_batches(seqs, prompts.shape[1], mini_batches):
        mb = {"tokens": tokens, "targets": targets, "response_mask": mask, "advantages": adv, "weights": w}

        def step(data_iterator, model, mb=mb):
            batch = next(data_iterator)
            logits = _logits(model, batch, VOCAB)
            with torch.no_grad():
                sel = batch["response_mask"]
                lp = torch.log_softmax(logits[sel].detach().float(), -1).gather(-1, batch["targets"][sel][:, None])
                batch["old_logp"] = torch.zeros(sel.shape)
                batch["old_logp"][sel] = lp.squeeze(-1)
            return logits, partial(_grpo_loss_func, batch, algo, 0, 1.0, grpo_loss)

        engine.train_step(step, [mb], seq_length=tokens.shape[1], micro_batch_size=tokens.shape[0])
    t2 = time.perf_counter()
    return {"rollout_s": t1 - t0, "train_s": t2 - t1, "step_s": t2 - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=24)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results/grpo_step_cpu.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    prompts = make_prompts(args.rows, args.prompt_len)
    plain = PlainMoEGPT()
    opt = torch.optim.AdamW(plain.parameters(), lr=1e-5)
    engine = megatron_setup()
    results = {}
    for name, fn in (("plain_pytorch", lambda: plain_step(plain, opt, prompts, args.new_tokens, 2)),
                     ("megatron_core", lambda: megatron_step(engine, prompts, args.new_tokens, 2))):
        fn()  # warm-up
        runs = [fn() for _ in range(args.steps)]
        results[name] = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        results[name]["steps_per_min"] = 60 / results[name]["step_s"]
        print(f"{name:14s} " + "  ".join(f"{k} {v:7.2f}" for k, v in results[name].items()))
    ratio = results["megatron_core"]["step_s"] / results["plain_pytorch"]["step_s"]
    print(f"megatron-core step time / plain PyTorch = {ratio:.2f}x")
    record = {"device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
              "torch_threads": torch.get_num_threads(), "workload": vars(args), "results": results,
              "megatron_over_plain": ratio,
              "params": {"plain": sum(p.numel() for p in plain.parameters()),
                         "megatron": sum(p.numel() for p in engine.module.parameters())}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
