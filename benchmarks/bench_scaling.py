"""Scaling on Slurm: the same small training step at 1, 2 and 4 ranks spread over the nodes of the
current cluster (srun, gloo on CPU / NCCL on GPU), per-step time and bytes per collective kind,
next to the analytic model's prediction (r1hpc/launch/comm_model.py, docs/scaling.md).

    eval "$(slurm/local_slurm.sh up --nodes 2 --cpus 2)"     # or on a real cluster, inside salloc
    python benchmarks/bench_scaling.py [--ranks 1,2,4] [--out benchmarks/results/scaling.json]

Timings mean something only on an idle machine; byte counts are deterministic.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MODEL = dict(vocab_size=512, num_layers=4, hidden_size=128, ffn_hidden_size=384, num_attention_heads=4,
             max_seq_length=64)
SHAPE = dict(micro_batch=4, seq=32, num_micro=2)


def worker(ranks: int, tp: int, out: str) -> None:
    from r1hpc.launch.scaling import counted_step

    r = counted_step(MODEL, {"tensor_model_parallel_size": tp}, SHAPE["micro_batch"], SHAPE["seq"],
                     SHAPE["num_micro"], steps=5)
    if int(os.environ.get("SLURM_PROCID", "0")) == 0:
        Path(out).write_text(json.dumps(r))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ranks", default="1,2,4")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size (the rest is data parallel)")
    p.add_argument("--nodes", type=int, default=2, help="spread ranks over up to this many nodes")
    p.add_argument("--out", default="benchmarks/results/scaling.json")
    p.add_argument("--worker", nargs=3, metavar=("RANKS", "TP", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(int(args.worker[0]), int(args.worker[1]), args.worker[2])
        return
    from r1hpc.launch.comm_model import StepShape, predict_step_bytes, predict_step_time
    from r1hpc.model.config import ModelConfig

    model = ModelConfig(**MODEL)
    shape = StepShape(SHAPE["micro_batch"], SHAPE["seq"], SHAPE["num_micro"])
    rows = []
    for n in [int(x) for x in args.ranks.split(",")]:
        tp = min(args.tp, n)
        nodes = min(args.nodes, n)
        tmp = Path(f"/tmp/bench_scaling_{os.getpid()}_{n}.json")
        cmd = ["srun", f"--nodes={nodes}", f"--ntasks={n}", "--cpus-per-task=1", "--kill-on-bad-exit=1",
               sys.executable, __file__, "--worker", str(n), str(tp), str(tmp)]
        subprocess.run(cmd, check=True)
        r = json.loads(tmp.read_text())
        tmp.unlink()
        dp = n // tp
        rows.append({"ranks": n, "nodes": nodes, "tp": tp, "dp": dp, "step_s": r["step_s"], "bytes": r["bytes"],
                     "calls": r["calls"], "predicted_bytes": predict_step_bytes(model, shape, tp=tp, dp=dp),
                     "predicted_h800_s": predict_step_time(model, shape, tp, 1, dp)})
        print(f"ranks {n} on {nodes} node(s), TP {tp} x DP {dp}: {r['step_s'] * 1e3:.1f} ms/step, "
              f"bytes/rank {r['bytes']} (model {rows[-1]['predicted_bytes']})", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": MODEL, "shape": SHAPE, "rows": rows,
                                          "device": "cpu (gloo) on a local Slurm"}, indent=1))


if __name__ == "__main__":
    main()
