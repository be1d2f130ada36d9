"""The pipeline report: every evaluated stage in R1's order, its numbers taken from its results."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1hpc.pipeline.report import collect, write_report
from r1hpc.run_config import load_run_config


def _results(root: Path, stage: str, pass1: float, cons: float, k: int = 4) -> None:
    d = root / "eval" / stage
    d.mkdir(parents=True)
    sets = {"arithmetic": {"problems": 8, "k": k, "pass@1": pass1, f"cons@{k}": cons}}
    (d / "results.json").write_text(json.dumps({"weights": f"{stage}/w", "settings": {"k": k}, "sets": sets}))


def test_report_rows_follow_the_pipeline_and_carry_each_stages_numbers(tmp_path):
    cfg = load_run_config("configs/tiny_r1_pipeline.yaml", [f"run.output_dir={tmp_path}"])
    root = tmp_path / cfg.run.name
    _results(root, "reasoning_rl", 0.625, 0.75)
    _results(root, "base", 0.125, 0.25)
    (root / "reasoning_rl").mkdir()
    (root / "reasoning_rl" / "summary.json").write_text(json.dumps(
        {"pass_at_1_before": 0.1, "pass_at_1_after": 0.6, "grpo_steps": 3, "grpo_wall_s": 9.0}))
    out = write_report(cfg)
    report = json.loads((root / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["base", "reasoning_rl"]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| base") or line.startswith("| reasoning_rl")]
    assert rows[0].split(" | ")[1:3] == ["0.125", "0.250 (k=4)"]
    assert rows[1].split(" | ")[1:3] == ["0.625", "0.750 (k=4)"]
    assert "3 GRPO steps, held-out 0.100 -> 0.600" in rows[1]


def test_report_without_evaluations_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval"):
        collect(tmp_path)
