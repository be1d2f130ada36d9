"""SFT JSONL: strict reading (each fault names file:line), provenance kept; cold-start data built
from the training split with clean solutions in the cold-start form; overlong examples dropped and
counted, never truncated."""
import json

import pytest

from r1hpc.data.cold_start import build_cold_start
from r1hpc.data.corpus import parse_answer
from r1hpc.data.jsonl import DatasetError
from r1hpc.data.mix import is_heldout
from r1hpc.data.problem import Problem
from r1hpc.data.sft_data import SFTExample, file_sha256, load_sft_examples, load_sft_file
from r1hpc.data.tasks import get_task
from r1hpc.data.templates import TemplateConfig, render_prompt
from r1hpc.data.tokenizer import EOS, train_bpe
from r1hpc.rewards.format import format_reward
from r1hpc.run_config import load_run_config
from r1hpc.train.sft import encode_examples

GOOD = {"question": "Compute 1 + 2", "response": " |special_token| 1+2=3 |special_token| <answer> 3 </answer>"}


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_loads_examples_and_keeps_provenance(tmp_path):
    a = _write(tmp_path / "a.jsonl", [json.dumps({**GOOD, "id": "x1", "source": "cold_start"})])
    b = _write(tmp_path / "b.jsonl", [json.dumps(GOOD), json.dumps({**GOOD, "question": "Q2"})])
    examples = load_sft_examples([str(a), str(b)])
    assert [e.question for e in examples] == ["Compute 1 + 2", "Compute 1 + 2", "Q2"]
    assert examples[0] == SFTExample(GOOD["question"], GOOD["response"], {"id": "x1", "source": "cold_start"}, f"{a}:1")
    assert examples[2].origin == f"{b}:2"
    assert len(file_sha256(a)) == 64


@pytest.mark.parametrize("line, fault", [
    ('{"question": "q", "response": ', "bad JSON"),
    ('["q", "r"]', "expected a JSON object, got list"),
    ('{"question": "q"}', "missing key 'response'"),
    ('{"response": "r"}', "missing key 'question'"),
    ('{"question": "q", "response": 3}', "'response' must be a string, got int"),
    ('{"question": ["q"], "response": "r"}', "'question' must be a string, got list"),
    ('{"question": "q", "response": "  "}', "empty 'response'"),
    ("", "empty line"),
])
def test_bad_line_names_file_and_line(tmp_path, line, fault):
    path = _write(tmp_path / "sft.jsonl", [json.dumps(GOOD), line, json.dumps(GOOD)])
    with pytest.raises(DatasetError, match=f"^{tmp_path}/sft.jsonl:2: .*{fault}"):
        load_sft_file(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_sft_file(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="no examples"):
        load_sft_file(_write(tmp_path / "empty.jsonl", []))


def test_cold_start_data_is_clean_training_split_in_the_cold_start_form(tmp_path):
    cfg = load_run_config("configs/ci_r1zero.yaml", ["data.mix.tasks=[arithmetic, countdown, linear_equation]",
                                                 "data.mix.difficulty={}"])
    out = build_cold_start(cfg, 60, tmp_path / "cs.jsonl")
    examples = load_sft_file(out)
    assert len(examples) == 60
    assert {e.meta["data_source"] for e in examples} == {"arithmetic", "countdown", "linear_equation"}
    prov = json.loads((tmp_path / "cs.provenance.json").read_text())
    assert prov["records"] == 60 and prov["sha256"] == file_sha256(out) and prov["split"] == "train"
    for e in examples:
        problem = Problem(e.meta["id"], e.question, e.meta["answer"], e.meta["data_source"], e.meta["extra"])
        assert e.meta["source"] == "cold_start"
        assert not is_heldout(problem, cfg.data.mix.heldout_fraction)
        assert format_reward(e.response, style="cold_start") == 1.0
        # clean, never the flawed solution: the task's own checker accepts the answer in the summary
        assert get_task(problem.data_source).check(problem, parse_answer(e.response))
    again = load_sft_file(build_cold_start(cfg, 60, tmp_path / "again.jsonl"))
    assert [e.response for e in again] == [e.response for e in examples]  # seeded


def test_overlong_examples_are_dropped_and_counted():
    tok = train_bpe(["User: q\nAssistant: some text " * 20], vocab_size=300)
    template = TemplateConfig(kind="short")
    examples = [SFTExample("q", " short"), SFTExample("q", " some text" * 30), SFTExample("q", " a b")]
    prompt = len(tok.encode(render_prompt("q", template)))
    kept, dropped = encode_examples(tok, examples, template, max_len=prompt + 8)
    assert dropped == 1 and len(kept) == 2
    for (ids, n_prompt), e in zip(kept, [examples[0], examples[2]]):
        assert n_prompt == prompt and ids[-1] == tok.token_id(EOS)
        assert tok.decode(ids[n_prompt:-1]) == e.response  # whole, not truncated
