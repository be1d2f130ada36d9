"""Rejection sampling: each filter on samples it must keep and samples it must drop, the dataset's
provenance and counts, the atomic write, and one run from a checkpoint's rollout to the JSONL."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from r1hpc.config import ConfigError
from r1hpc.data.rejection import REASONS, RejectionConfig, filter_samples, load_rollout, read_stats, write_dataset
from r1hpc.run_config import load_run_config

ROOT = Path(__file__).resolve().parents[2]
CKPT = "/ckpt/step-300/model"
ENGLISH = "<think>first I add the tens then the ones and the sum is five</think> <answer>5</answer>"


def record(responses, accuracy, *, id="p0", data_source="arithmetic", index=0):
    return {"index": index, "id": id, "data_source": data_source, "question": f"question of {id}",
            "answer": "5", "responses": list(responses),
            "scores": [{"accuracy": a, "format": 1.0, "total": a + 0.1} for a in accuracy]}


def kept(records, **cfg):
    rows, stats = filter_samples(records, RejectionConfig(**cfg), CKPT)
    return [r["sample_index"] for r in rows], stats["dropped"]


def drops(**counts) -> dict[str, int]:
    """The dropped-per-reason counts: zero except those given."""
    return {**dict.fromkeys(REASONS, 0), **counts}


def think(words: list[str]) -> str:
    return f"<think>{' '.join(words)}</think> <answer>5</answer>"


def test_min_accuracy_keeps_only_samples_at_or_above_it():
    r = record([f"{ENGLISH} {i}" for i in range(4)], [1.0, 0.0, 0.5, 1.0])
    assert kept([r]) == ([0, 3], drops(score=2))
    assert kept([r], min_accuracy=0.5)[0] == [0, 2, 3]
    assert kept([r], min_accuracy=0.0)[0] == [0, 1, 2, 3]


def test_language_filter_drops_mixed_language_chains_of_thought():
    english = ["word"] * 19
    r = record([think(english + ["add"]),        # all English
                think(english + ["加"]),          # 19 of 20 units English = 0.95: kept at the threshold
                think(english[:18] + ["加", "法"]),  # 18 of 20 = 0.90: mixed
                "<think>我们先计算十位 then the ones</think> <answer>5</answer>",
                f"{ENGLISH} 答案是五"],           # Chinese after the chain of thought is not checked
               [1.0] * 5)
    assert kept([r], dedupe=False) == ([0, 1, 4], drops(language=2))
    assert kept([r], language=False)[0] == [0, 1, 2, 3, 4]
    assert kept([r], min_language_share=0.9)[0] == [0, 1, 2, 4]


def test_language_filter_reads_the_run_language_and_a_think_block_the_prompt_opened():
    chinese = "我们先计算十位再计算个位</think> <answer>5</answer>"
    rows, _ = filter_samples([record([chinese], [1.0])], RejectionConfig(), CKPT, language="zh", starts_in_think=True)
    assert len(rows) == 1
    rows, stats = filter_samples([record([chinese], [1.0])], RejectionConfig(), CKPT, language="en",
                                 starts_in_think=True)
    assert rows == [] and stats["dropped"]["language"] == 1


def test_paragraph_filter_drops_overlong_paragraphs():
    # paragraphs: 94 | 37, 57 | 37, 38, 18 | 95 characters
    long_one = "<think>" + "x" * 60 + "</think> <answer>5</answer>"
    split = "<think>" + "x" * 30 + "\n\n" + "y" * 30 + "</think> <answer>5</answer>"
    blank_with_spaces = "<think>" + "x" * 30 + "\n  \t\n" + "z" * 30 + "</think>\n\n<answer>5</answer>"
    one_newline = "<think>" + "x" * 30 + "\n" + "w" * 30 + "</think> <answer>5</answer>"
    r = record([long_one, split, blank_with_spaces, one_newline], [1.0] * 4)
    assert kept([r], max_paragraph_chars=60) == ([1, 2], drops(paragraph=2))
    assert kept([r], max_paragraph_chars=0)[0] == [0, 1, 2, 3]
    assert kept([r], max_paragraph_chars=100)[0] == [0, 1, 2, 3]


def test_code_block_filter_spares_code_problems():
    fenced = "<think>compute it\n```python\nprint(2 + 3)\n```\n</think> <answer>5</answer>"
    unclosed = "<think>let me run\n  ```\n2 + 3</think> <answer>5</answer>"
    inline = "<think>the expression `2 + 3` is five</think> <answer>5</answer>"
    math = record([fenced, unclosed, inline], [1.0] * 3)
    code = record([fenced, unclosed, inline], [1.0] * 3, id="HumanEval/0", data_source="humaneval")
    assert kept([math]) == ([2], drops(code_block=2))
    assert kept([code])[0] == [0, 1, 2]
    assert kept([math], code_blocks=False)[0] == [0, 1, 2]
    assert kept([code], code_sources=[])[0] == [2]


def test_dedupe_drops_whitespace_variants_within_a_prompt_only():
    a = "<think>add  the\tones</think>\n<answer>5</answer>"
    same = " <think>add the ones</think> <answer>5</answer>\n"
    other = "<think>add the tens</think> <answer>5</answer>"
    r0, r1 = record([a, same, other, a], [1.0] * 4), record([same], [1.0], id="p1", index=1)
    rows, stats = filter_samples([r0, r1], RejectionConfig(), CKPT)
    assert [(r["id"], r["sample_index"]) for r in rows] == [("p0", 0), ("p0", 2), ("p1", 0)]
    assert stats["dropped"]["duplicate"] == 2
    assert kept([r0], dedupe=False)[0] == [0, 1, 2, 3]
    # a wrong first copy does not make a later correct one a duplicate
    assert kept([record([a, same], [0.0, 1.0])]) == ([1], drops(score=1, duplicate=0))


def test_max_per_prompt_keeps_the_first_passing_samples():
    r = record([f"{ENGLISH} {i}" for i in range(5)], [0.0, 1.0, 1.0, 1.0, 1.0])
    assert kept([r], max_per_prompt=2) == ([1, 2], drops(score=1, max_per_prompt=2))
    assert kept([r], max_per_prompt=0)[0] == [1, 2, 3, 4]


def test_rows_carry_exact_provenance_and_stats_count_every_sample():
    p0 = record([ENGLISH, ENGLISH + " ", "<think>混合 mixed</think> <answer>5</answer>", "wrong"], [1.0, 1.0, 1.0, 0.0])
    p1 = record(["<think>no</think> <answer>4</answer>"], [0.0], id="p1", index=1)
    p2 = record(["def f():\n    return 5"], [1.0], id="HumanEval/3", data_source="humaneval", index=2)
    rows, stats = filter_samples([p0, p1, p2], RejectionConfig(), CKPT)
    assert rows == [
        {"question": "question of p0", "response": ENGLISH, "answer": "5", "id": "p0", "data_source": "arithmetic",
         "sample_index": 0, "rewards": {"accuracy": 1.0, "format": 1.0, "total": 1.1}, "checkpoint": CKPT},
        {"question": "question of HumanEval/3", "response": "def f():\n    return 5", "answer": "5",
         "id": "HumanEval/3", "data_source": "humaneval", "sample_index": 0,
         "rewards": {"accuracy": 1.0, "format": 1.0, "total": 1.1}, "checkpoint": CKPT}]
    assert {k: v for k, v in stats.items() if k != "config"} == {
        "checkpoint": CKPT, "samples": 6, "kept": 2, "prompts": 3, "prompts_with_kept": 2,
        "dropped": {"score": 2, "format": 0, "language": 1, "paragraph": 0, "code_block": 0, "duplicate": 1, "max_per_prompt": 0},
        "per_source": {"arithmetic": {"kept": 1, "total": 5}, "humaneval": {"kept": 1, "total": 1}}}
    assert stats["config"]["min_accuracy"] == 1.0


def test_a_correct_answer_in_the_wrong_form_is_dropped():
    rec = record([ENGLISH, ENGLISH + " ", ENGLISH + "  "], [1.0, 1.0, 1.0])
    rec["scores"][1]["format"] = 0.0
    rec["scores"][2]["format"] = 0.5
    assert kept([rec], dedupe=False) == ([0], drops(format=2))
    assert kept([rec], dedupe=False, min_format=0.5) == ([0, 2], drops(format=1))
    assert kept([rec], dedupe=False, min_format=0.0) == ([0, 1, 2], drops())
    del rec["scores"][1]["format"]  # a source without a format reward: nothing to check
    assert kept([rec], dedupe=False) == ([0, 1], drops(format=1))


def test_judge_scored_source_is_kept_by_the_judges_verdict():
    from r1hpc.data.problem import Problem
    from r1hpc.rewards.model_based import JudgeReward
    from r1hpc.rewards.registry import RewardScorer, RewardsConfig, RewardTerm

    # the judge model's stand-in: reads the graded prediction out of the judge prompt
    def judge_model(prompt: str) -> str:
        prediction = prompt.split("Predicted answer:")[1].split("\n")[0]
        return "The prediction names Paris.\nVERDICT: CORRECT" if "Paris" in prediction else "VERDICT: INCORRECT"

    problem = Problem("chat-1", "Which city is the capital of France?", "Paris", "general")
    responses = ["<think>france capital</think> It is Paris.", "<think>hmm</think> It is Lyon."]
    cfg = RewardsConfig(sources={"general": [RewardTerm("judge")]}, workers=1)
    with RewardScorer(cfg, models={"judge": JudgeReward(judge_model)}) as scorer:
        scores = scorer.score_batch(responses, [problem] * 2)
    rec = {"index": 0, "id": problem.id, "data_source": "general", "question": problem.question,
           "answer": problem.answer, "responses": responses, "scores": scores}
    rows, stats = filter_samples([rec], RejectionConfig(score_key="judge"), CKPT)
    assert [r["response"] for r in rows] == [responses[0]] and rows[0]["rewards"]["judge"] == 1.0
    with pytest.raises(ValueError, match=r"prompt 'chat-1' .* has no 'accuracy' score .*rejection.score_key"):
        filter_samples([rec], RejectionConfig(), CKPT)


def test_write_is_atomic_and_a_failed_write_leaves_the_old_dataset(tmp_path):
    out = tmp_path / "sft" / "data.jsonl"
    rows, stats = filter_samples([record([ENGLISH], [1.0])], RejectionConfig(), CKPT)
    write_dataset(rows, stats, out)
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    assert read_stats(out) == stats
    before = out.read_bytes()
    bad = rows + [{"response": object()}]  # not JSON: fails after the first line is written
    with pytest.raises(TypeError):
        write_dataset(bad, stats, out)
    assert out.read_bytes() == before and sorted(p.name for p in out.parent.iterdir()) == [
        "data.jsonl", "data.provenance.json"]
    fresh = tmp_path / "fresh.jsonl"
    with pytest.raises(TypeError):
        write_dataset(bad, stats, fresh)
    assert list(tmp_path.glob("*fresh*")) == []


def test_load_rollout_names_a_missing_or_wrong_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "merged.json")):
        load_rollout(tmp_path)
    (tmp_path / "merged.json").write_text(json.dumps({"kind": "eval", "records": [], "weights": "w"}))
    with pytest.raises(ValueError, match=rf"{tmp_path / 'merged.json'}: not a rollout merge \(kind 'eval'\)"):
        load_rollout(tmp_path)
    (tmp_path / "merged.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_rollout(tmp_path)


def test_config_section_loads_and_checks_its_keys(tmp_path):
    cfg = load_run_config(ROOT / "configs/ci_r1zero.yaml", ["rejection.min_accuracy=0.5", "rejection.score_key=judge",
                                                        "rejection.max_paragraph_chars=0"])
    assert (cfg.rejection.min_accuracy, cfg.rejection.score_key, cfg.rejection.max_paragraph_chars) == (0.5, "judge", 0)
    with pytest.raises(ConfigError, match="did you mean 'rejection.max_per_prompt'"):
        load_run_config(ROOT / "configs/ci_r1zero.yaml", ["rejection.max_per_promt=2"])
    with pytest.raises(ConfigError, match="min_language_share must be in"):
        load_run_config(ROOT / "configs/ci_r1zero.yaml", ["rejection.min_language_share=1.5"])


def test_launcher_stages_chain_a_rollout_array_on_the_checkpoint_and_the_filter():
    from r1hpc.launch.cli import add_launch_parser, stages_from_args
    from r1hpc.launch.launcher import Resources
    from r1hpc.launch.rejection import dataset_path, rejection_stages

    gpu = Resources(nodes=2, ntasks_per_node=8, gpus_per_node=8)
    roll, rej = rejection_stages("r.yaml", ["a.b=1"], "/ck/model", "/o/rs", 4, gpu, after=["rl"])
    assert (roll.name, roll.shards, roll.out, roll.after) == ("rejection_samples", 4, "/o/rs/samples", ["rl"])
    assert roll.args() == ["rollout", "r.yaml", "a.b=1", "--weights", "/ck/model"]
    assert rej.after == ["rejection_samples"] and rej.shards == 0
    assert rej.args() == ["reject", "r.yaml", "a.b=1", "--samples", "/o/rs/samples", "--out", "/o/rs/dataset.jsonl"]
    assert (rej.resources.nodes, rej.resources.ntasks_per_node, rej.resources.gpus_per_node) == (1, 1, 0)
    assert dataset_path("/o/rs") == Path("/o/rs/dataset.jsonl")

    import argparse

    parser = argparse.ArgumentParser()
    add_launch_parser(parser.add_subparsers(dest="command"))
    stages = stages_from_args(parser.parse_args(["launch", "r.yaml", "--stages", "rollout,reject", "--weights", "W",
                                                 "--out", "o"]))
    assert stages[0].args() == ["rollout", "r.yaml", "--weights", "W"]
    assert stages[1].args() == ["reject", "r.yaml", "--samples", "o/rollout", "--out", "o/reject/dataset.jsonl"]
    with pytest.raises(ValueError, match="list rollout before it"):
        stages_from_args(parser.parse_args(["launch", "r.yaml", "--stages", "reject"]))


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "SLURM_", "MASTER_"))}


def test_checkpoint_rollout_to_dataset_through_the_local_launcher(tmp_path, monkeypatch):
    """A barely trained base is sampled by a rollout array (one task: the CI budget; several shards
    merge in tests/slurm), merged and filtered by the launcher's local mode; every row of the JSONL
    is a correct sample of that checkpoint."""
    from r1hpc.launch.launcher import Resources, launch
    from r1hpc.launch.rejection import dataset_path, rejection_stages, samples_dir

    base = tmp_path / "base"
    tiny = [f"pretrain.base_dir={base}", "pretrain.steps=4", "pretrain.batch_size=8", "pretrain.micro_batch_size=8",
            "data.corpus.size=200", "data.tokenizer.train_examples=200", "eval.num_problems=4", "rollout.group_size=4",
            "rollout.max_new_tokens=16", "rewards.workers=1", f"run.output_dir={tmp_path}/runs"]
    config = str(ROOT / "configs/ci_r1zero.yaml")
    pre = subprocess.run([sys.executable, "-m", "r1hpc.cli", "pretrain", config, *tiny], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert pre.returncode == 0, pre.stderr[-3000:]
    monkeypatch.chdir(ROOT)
    for k in [k for k in os.environ if k.startswith(("RANK", "WORLD_SIZE", "SLURM_", "MASTER_"))]:
        monkeypatch.delenv(k)
    one = Resources(nodes=1, ntasks_per_node=1, gpus_per_node=0)
    stages = rejection_stages(config, tiny, str(base / "weights"), tmp_path / "rs", 1, one)
    results = launch(stages, local=True, log=lambda *_: None)
    assert {r.state for r in results.values()} == {"COMPLETED"}
    merged = json.loads((samples_dir(tmp_path / "rs") / "merged.json").read_text())
    assert [r["index"] for r in merged["records"]] == list(range(4)) and merged["weights"] == str(base / "weights")
    scores = [s for r in merged["records"] for s in r["scores"]]
    rows = [json.loads(line) for line in dataset_path(tmp_path / "rs").read_text().splitlines()]
    stats = read_stats(dataset_path(tmp_path / "rs"))
    assert all(row["rewards"]["accuracy"] >= 1.0 for row in rows)
    assert stats["samples"] == len(scores) == 4 * 4 and stats["kept"] == len(rows)
    assert stats["dropped"]["score"] == sum(s["accuracy"] < 1.0 for s in scores)
    assert stats["kept"] + sum(stats["dropped"].values()) == stats["samples"]
    _assert_rows_match(rows, merged)

    # the same samples with every score accepted: the 4-step base's wrong samples become rows
    from r1hpc.cli import main

    loose = tmp_path / "loose.jsonl"
    assert main(["reject", config, *tiny, "rejection.score_key=total", "rejection.min_accuracy=0.0",
                 "rejection.min_format=0",
                 "--samples", str(samples_dir(tmp_path / "rs")), "--out", str(loose)]) == 0
    rows = [json.loads(line) for line in loose.read_text().splitlines()]
    assert rows and len(rows) == read_stats(loose)["kept"]
    _assert_rows_match(rows, merged)
    assert main(["reject", config, "--samples", str(tmp_path), "--out", str(loose)]) == 2


def _assert_rows_match(rows: list[dict], merged: dict) -> None:
    """Every row is its sample of the merged rollout, verbatim, with that rollout's checkpoint."""
    by_id = {r["id"]: r for r in merged["records"]}
    for row in rows:
        src = by_id[row["id"]]
        assert row["checkpoint"] == merged["weights"]
        assert row["response"] == src["responses"][row["sample_index"]]
        assert row["rewards"] == src["scores"][row["sample_index"]]
        assert (row["question"], row["answer"], row["data_source"]) == (src["question"], src["answer"],
                                                                        src["data_source"])
