"""The pipeline's report: pass@1 and cons@k of every stage's model on every evaluation set, side by
side, with what each stage was fed (dataset sizes, rejection statistics, GRPO steps)."""
from __future__ import annotations

import json
from pathlib import Path

from r1hpc.data.jsonl import provenance_path
from r1hpc.eval.benchmarks import fmt
from r1hpc.launch.rejection import dataset_path
from r1hpc.pipeline.config import STAGES
from r1hpc.pipeline.plan import pipeline_root

MODEL_STAGES = ("base", *STAGES)


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _fed(root: Path, stage: str) -> dict:
    """What went into a stage: its dataset's statistics, or its RL run's summary."""
    data = {"cold_start": "cold_start_data", "rejection_sft": "rejection", "distill": "distill"}.get(stage)
    if data:
        path = dataset_path(root / data)
        return {"dataset": str(path), "provenance": _load(provenance_path(path))}
    summary = _load(root / stage / "summary.json")
    if summary:
        return {key: summary[key] for key in ("pass_at_1_before", "pass_at_1_after", "grpo_steps", "grpo_wall_s")}
    return {}


def collect(root: Path) -> dict:
    """Every evaluated stage in pipeline order: its results.json (sets, settings) and what fed it."""
    stages = []
    for stage in MODEL_STAGES:
        results = _load(root / "eval" / stage / "results.json")
        if results is None:
            continue
        stages.append({"stage": stage, "weights": results["weights"], "settings": results["settings"],
                       "sets": results["sets"], "fed": _fed(root, stage)})
    if not stages:
        raise FileNotFoundError(f"{root}/eval: no stage's results.json (did the evaluation stages run?)")
    return {"root": str(root), "stages": stages}


def report_table(report: dict) -> str:
    """One row per stage; per set its pass@1 and cons@k (k from that stage's evaluation)."""
    sets = sorted({name for s in report["stages"] for name in s["sets"]})
    head = ["stage"] + [f"{name} {m}" for name in sets for m in ("pass@1", "cons@k", "reward")] + ["fed"]
    lines = [f"R1 pipeline `{report['root']}`: every stage's model evaluated with the same protocol "
             "(pass@1 averaged over k samples; cons@k majority vote over normalised answers; reward: the mean "
             "total reward, the only score of a set judged by a model).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in report["stages"]:
        k = s["settings"]["k"]
        cells = []
        for name in sets:
            m = s["sets"].get(name)
            if m and m.get("problems"):
                cells += [fmt(m["pass@1"]), f"{fmt(m[f'cons@{k}'])} (k={k})", fmt(m.get("reward"))]
            else:
                cells += ["-", "-", "-"]
        lines.append(f"| {s['stage']} | " + " | ".join(cells) + f" | {_describe(s['fed'])} |")
    return "\n".join(lines) + "\n"


def _describe(fed: dict) -> str:
    if "provenance" in fed:
        prov = fed["provenance"] or {}
        if "stats" in prov:
            return f"{prov['stats']['kept']} of {prov['stats']['samples']} samples kept"
        return f"{prov['records']} {prov.get('kind', '').replace('_', '-')} examples" if "records" in prov else "dataset"
    if "grpo_steps" in fed:
        return f"{fed['grpo_steps']} GRPO steps, held-out {fed['pass_at_1_before']:.3f} -> {fed['pass_at_1_after']:.3f}"
    return ""


def write_report(cfg) -> Path:
    """``r1hpc pipeline-report``: ``<root>/report.json`` and ``report.md``; returns the .md path."""
    root = pipeline_root(cfg)
    report = collect(root)
    (root / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    out = root / "report.md"
    out.write_text(report_table(report))
    return out
