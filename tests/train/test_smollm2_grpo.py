"""The SmolLM2 recipe end to end on the CPU, shrunk by overrides: `r1hpc train configs/smollm2_gsm8k.yaml`
starts from the converted checkpoint (no pretraining), renders GSM8K prompts with the model's chat
template, runs GRPO steps with math + format rewards and writes a checkpoint; `r1hpc evaluate` then
scores those trained weights. Slow: about 4 minutes on 2 busy cores."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from r1hpc.data.jsonl import shared_data_dir
from tests.smollm2 import clean_env

pytestmark = pytest.mark.slow
RECIPE = Path(__file__).resolve().parents[2] / "configs" / "smollm2_gsm8k.yaml"


def _cli(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "r1hpc.cli", *args], capture_output=True, text=True, timeout=1200,
                          env=clean_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _gsm8k(tmp_path: Path) -> str:
    """GSM8K from ../shared/data; without it, a local file of word problems in its format (its name
    makes its data_source gsm8k, so the recipe's rewards apply unchanged)."""
    shared = shared_data_dir()
    if shared is not None and (shared / "gsm8k.jsonl").is_file():
        return "gsm8k"
    path = tmp_path / "gsm8k_local.jsonl"
    path.write_text("".join(json.dumps({"id": f"local-{i}", "problem": f"Tom has {i + 3} apples and buys {2 * i + 1} "
                                        f"more. How many apples does he have now?", "answer": str(3 * i + 4)}) + "\n"
                            for i in range(60)))
    return str(path)


def test_grpo_steps_from_converted_smollm2_then_evaluate(smollm2_converted, tmp_path):
    base_files = sorted(p.name for p in smollm2_converted.iterdir())
    prompts = _gsm8k(tmp_path)
    common = [f"pretrain.base_dir={smollm2_converted}", f"run.output_dir={tmp_path}", f"data.prompts.files=[{prompts}]"]
    _cli("train", str(RECIPE), *common, "grpo.steps=2", "rollout.prompts_per_step=2", "rollout.group_size=2",
         "rollout.max_new_tokens=24", "algo.max_response_len=24", "grpo.mini_batches=1", "grpo.micro_batch_size=4",
         "grpo.skip_zero_advantage_groups=false", "eval.num_problems=2", "eval.samples_per_problem=1",
         "eval.max_new_tokens=16")
    run = tmp_path / "smollm2_gsm8k"
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [s for s in steps if "actor/updates" in s]
    assert [s["step"] for s in trained] == [1, 2] and all(s["actor/updates"] == 1 for s in trained)
    assert all(0 < s["response_length/mean"] <= 24 for s in trained)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["grpo_steps"] == 2 and set(summary["per_task_before"]) == {"pass@1/gsm8k"}
    assert sorted(p.name for p in smollm2_converted.iterdir()) == base_files  # the base is never written to
    ckpt = sorted((run / "checkpoints").glob("step_*"))[-1]
    assert (ckpt / "tokenizer.json").read_bytes() == (smollm2_converted / "tokenizer.json").read_bytes()

    out = tmp_path / "eval"
    _cli("evaluate", str(RECIPE), *common, f"eval.sets=[{prompts},arithmetic]", "eval.num_problems=2",
         "eval.samples_per_problem=2", "eval.max_new_tokens=16", "--weights", str(ckpt / "model"), "--out", str(out))
    results = json.loads((out / "results.json").read_text())
    assert results["weights"] == str(ckpt / "model") and set(results["sets"]) == {prompts, "arithmetic"}
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(len(r["responses"]) == 2 for r in records)
    for name, m in results["sets"].items():
        mine = [r for r in records if r["set"] == name]
        assert m["pass@1"] == pytest.approx(sum(s["accuracy"] for r in mine for s in r["scores"]) / 4)
    assert results["example_prompt"].startswith("<|im_start|>system\nSolve the math problem.")
    assert f"| {prompts} | 2 | 2 |" in (out / "results.md").read_text()
