"""`r1hpc evaluate` building blocks: which problems each set holds, the per-set summary from scored
samples, the markdown table and the config checks. (The command itself on the real SmolLM2 model
runs in tests/train/test_smollm2_grpo.py.)"""
from __future__ import annotations

import pytest

from r1hpc.config import ConfigError, load_config
from r1hpc.data.jsonl import shared_data_dir
from r1hpc.data.mix import is_heldout
from r1hpc.eval.benchmarks import default_sets, eval_problems, results_table, summarize

SHARED = shared_data_dir()
needs_shared = pytest.mark.skipif(SHARED is None or not (SHARED / "gsm8k.jsonl").is_file(),
                                  reason="no shared/data (set R1HPC_SHARED_DATA)")


def _record(answers, accuracy, tokens=10, truncated=False):
    return {"extracted": answers, "scores": [{"accuracy": a, "format": 1.0 if a else 0.0} for a in accuracy],
            "response_tokens": [tokens] * len(answers), "truncated": [truncated] * len(answers)}


def test_summarize_hand_computed():
    records = [_record(["42", "42", "41", None], [1, 1, 0, 0]),     # pass@1 .5, majority 42 right
               _record(["1", "2", "2", "3"], [1, 0, 0, 0], tokens=30, truncated=True)]  # .25, majority 2 wrong
    m = summarize(records, 4, {"generate_s": 2.0, "generated_tokens": 160, "prompt_tokens": 99})
    assert m["problems"] == 2 and m["k"] == 4
    assert m["pass@1"] == pytest.approx((0.5 + 0.25) / 2)
    assert m["cons@4"] == pytest.approx(0.5)
    assert m["pass@4"] == pytest.approx(1.0)
    assert m["format"] == pytest.approx(3 / 8) and m["answered"] == pytest.approx(7 / 8)
    assert m["response_tokens_mean"] == pytest.approx(20.0) and m["truncated"] == pytest.approx(0.5)
    assert m["generate_tokens_per_s"] == pytest.approx(80.0)


def test_results_table_has_one_row_per_set():
    m = summarize([_record(["1", "1"], [1, 0])], 2, {"generate_s": 1.0, "generated_tokens": 20, "prompt_tokens": 5})
    results = {"checkpoint": "ck", "weights": "ck/weights", "device": {"device": "CPU x", "loadavg_1min": 1.0},
               "settings": {"k": 2, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 64, "template": "chat"},
               "sets": {"gsm8k": m, "math500": summarize([], 2, {})}}
    table = results_table(results)
    assert "| set | problems | k | pass@1 | cons@2 | pass@2 |" in table
    assert "| gsm8k | 1 | 2 | 0.500 | 1.000 | 1.000 | 0.500 | 1.000 | 10 | 0.00 | 20.0 |" in table
    assert "| math500 | 0 | 2 |" in table


@needs_shared
def test_eval_problems_keep_training_files_held_out(tmp_path):
    cfg = load_config(None, ["data.prompts.files=[gsm8k]", "eval.num_problems=30", "data.mix.tasks=[arithmetic]"])
    gsm8k = eval_problems(cfg, "gsm8k")
    assert len(gsm8k) == 30 and all(is_heldout(p, 0.1) for p in gsm8k)  # a training source: held-out split only
    math500 = eval_problems(cfg, "math500")
    assert [p.id for p in math500] == [f"math500-{i}" for i in range(30)]  # not trained on: from the start
    arithmetic = eval_problems(cfg, "arithmetic")
    assert len(arithmetic) == 30 and {p.data_source for p in arithmetic} == {"arithmetic"}
    assert all(is_heldout(p, cfg.data.mix.heldout_fraction) for p in arithmetic)
    assert default_sets(cfg) == ["gsm8k"]
    assert default_sets(load_config(None, ["data.mix.tasks=[countdown]"])) == ["countdown"]


def test_unknown_set_is_a_config_error():
    with pytest.raises(ConfigError, match="eval.sets: unknown set 'gsm9k'"):
        load_config(None, ["eval.sets=[gsm9k]"])
