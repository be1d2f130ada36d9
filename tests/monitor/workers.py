"""Rank functions for the attention-jump tests on the real megatron-core model (spawned by
tests.multiproc.run_workers)."""
from __future__ import annotations

import torch

from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
from r1hpc.model.config import ModelConfig
from r1hpc.model.provider import build_model, causal_attention_mask
from r1hpc.model.weights import load_model_weights, save_model_weights
from r1hpc.monitor.attention import attention_jump_sums, causal_probs
from r1hpc.train.lm_loss import position_ids

MODEL = dict(vocab_size=300, num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
             num_query_groups=2, max_seq_length=64)
SEQS = [list(range(3, 43)), list(range(50, 80))]  # 40 and 30 tokens (right-padded in one batch)
MARKERS = [[12, 30], [15]]
WINDOW, DISTANCE = 6, 4


def attention_checks(parallel_kw: dict, ckpt: str, mode: str, tok_dir: str) -> dict:
    """(1) softmax(QK^T) recomputed from the hooked query/key, times the value, equals the output of
    megatron's core attention; (2) the jump sums of the model; (3) the monitor's attention metrics
    on the constructed batch; (4) the jump sums once the QKV projection is zeroed, where attention
    is uniform over the causal prefix (known answer)."""
    from r1hpc.data.tokenizer import TextTokenizer
    from r1hpc.monitor.monitor import Monitor, MonitorConfig
    from tests.monitor.batches import batch

    model_cfg, parallel_cfg = ModelConfig(**MODEL), ParallelConfig(**parallel_kw)
    init_distributed(parallel_cfg, model_cfg, seed=5)
    model = build_model(model_cfg, parallel_cfg)
    (save_model_weights if mode == "save" else load_model_weights)(model, ckpt)
    model.eval()
    errors = []

    def check(module, args, kwargs, output):
        q, k, v = args[:3]
        probs = causal_probs(q, k)  # [b, h, s, s]
        vv = v.float().permute(1, 2, 0, 3).repeat_interleave(q.shape[2] // v.shape[2], dim=1)
        ctx = (probs @ vv).permute(2, 0, 1, 3).reshape(output.shape)  # [s, b, h*d]
        errors.append(float((ctx - output.float()).abs().max()))

    hooks = [m.register_forward_hook(check, with_kwargs=True) for n, m in model.named_modules()
             if n.endswith("core_attention")]
    tokens = torch.tensor([SEQS[0]])
    with torch.no_grad():
        model(tokens, position_ids(tokens), causal_attention_mask(tokens.shape[1]))
    for h in hooks:
        h.remove()

    def world_sums(before, after, n):
        t = torch.tensor([before, after, float(n)], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return (t / torch.distributed.get_world_size()).tolist()  # TP ranks: one head share each

    real = world_sums(*attention_jump_sums(model, SEQS, MARKERS, window=WINDOW, distance=DISTANCE, pad_id=0))
    tok = TextTokenizer.load(tok_dir)
    monitor = Monitor(MonitorConfig(attention_every=1, attention_window=WINDOW), tok, model, None, writer=False)
    observed = monitor.observe(1, *batch(tok), {})
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "linear_qkv" in n:
                p.zero_()
    uniform = world_sums(*attention_jump_sums(model, SEQS, MARKERS, window=WINDOW, distance=DISTANCE, pad_id=0))
    destroy_distributed()
    return {"errors": errors, "real": real, "uniform": uniform,
            "monitor": {k: v for k, v in observed.items() if k.startswith("monitor/attn")}}


def monitor_dp(tok_dir: str, marks: dict) -> dict:
    """Each of two data-parallel ranks observes half of the constructed batch."""
    from r1hpc.data.tokenizer import TextTokenizer
    from r1hpc.monitor.monitor import Monitor, MonitorConfig
    from tests.monitor.batches import batch

    init_distributed(ParallelConfig(), ModelConfig(**MODEL), seed=5)
    tok = TextTokenizer.load(tok_dir)
    samples, scores, problems = batch(tok, marks)
    half = slice(0, 2) if torch.distributed.get_rank() == 0 else slice(2, 4)
    monitor = Monitor(MonitorConfig(entropy_window=4, attention_every=0), tok, None, None, writer=False)
    out = monitor.observe(1, samples[half], scores[half], problems[half], {})
    destroy_distributed()
    return out
