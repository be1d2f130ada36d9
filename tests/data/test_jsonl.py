"""JSONL problems: the real shared files, every kind of bad line (named by file:line), the writer."""
import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1hpc.data.jsonl import (
    DatasetError,
    load_problems,
    load_shared,
    problem_record,
    provenance_path,
    shared_data_dir,
    source_from_filename,
    write_jsonl,
)
from r1hpc.data.mix import TaskMixConfig, heldout_set
from r1hpc.data.problem import Problem

SHARED = shared_data_dir()
EXPECTED = {"gsm8k": 8792, "math500": 500, "aime24": 30, "amc23": 83}
GOOD = '{"id": "a", "problem": "1+1?", "answer": "2"}'


@pytest.mark.skipif(SHARED is None, reason="no shared/data (set R1HPC_SHARED_DATA)")
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_files_load_whole(name):
    path = SHARED / f"{name}.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    problems = load_problems(path)
    assert len(problems) == EXPECTED[name]
    assert all(p.data_source == name and p.question and p.answer for p in problems)
    assert len({p.id for p in problems}) == len(problems)


def test_shared_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("R1HPC_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    (tmp_path / "aime24.jsonl").write_text(GOOD + "\n")
    assert [p.data_source for p in load_shared("aime24")] == ["aime24"]
    with pytest.raises(FileNotFoundError, match="R1HPC_SHARED_DATA"):
        load_shared("amc23")
    monkeypatch.setenv("R1HPC_SHARED_DATA", str(tmp_path / "nope"))
    assert shared_data_dir() is None


def test_source_from_filename():
    assert source_from_filename("/x/gsm8k.jsonl") == "gsm8k"
    assert source_from_filename("MATH500_test.jsonl") == "math500"
    assert source_from_filename("mine.jsonl") == "mine"


@pytest.mark.parametrize(
    "bad,fault",
    [
        ('{"id": "b", "problem": "x", "answer": "1"', "bad JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"id": "b", "problem": "x"}', "missing key 'answer'"),
        ('{"id": "b", "answer": "1"}', "missing key 'problem'"),
        ('{"id": 7, "problem": "x", "answer": "1"}', "'id' must be a string, got int"),
        ('{"id": "b", "problem": "x", "answer": 1}', "'answer' must be a string, got int"),
        ('{"id": "b", "problem": "x", "answer": "  "}', "empty 'answer'"),
        ('{"id": "b", "problem": "", "answer": "1"}', "empty 'problem'"),
        ('{"id": "a", "problem": "x", "answer": "1"}', "duplicate id 'a' (first on line 1)"),
        ('{"id": "b", "problem": "x", "answer": "1", "extra": [1]}', "'extra' must be an object"),
        ("", "empty line"),
    ],
)
def test_bad_line_names_file_line_and_fault(tmp_path, bad, fault):
    path = tmp_path / "gsm8k_bad.jsonl"
    path.write_text(f"{GOOD}\n{GOOD.replace('a', 'c', 1)}\n{bad}\n")
    with pytest.raises(DatasetError) as e:
        load_problems(path)
    assert str(e.value).startswith(f"{path}:3: ") and fault in str(e.value)


def test_bad_utf8_names_its_line(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_bytes(GOOD.encode() + b'\n{"id": "\xff"}\n')
    with pytest.raises(DatasetError, match=r"gsm8k.jsonl:2: not UTF-8"):
        load_problems(path)


def test_skip_invalid_counts_what_it_skips(tmp_path, caplog):
    path = tmp_path / "amc23.jsonl"
    path.write_text(f"{GOOD}\nnot json\n{{}}\n")
    with caplog.at_level(logging.WARNING):
        problems = load_problems(path, skip_invalid=True)
    assert [p.id for p in problems] == ["a"]
    assert "skipped 2 invalid line(s)" in caplog.text and f"{path}:2:" in caplog.text


def test_given_source_and_extra_keys(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": "a", "problem": "p", "answer": "1", "level": 3}\n')
    (p,) = load_problems(path, data_source="math500")
    assert p.data_source == "math500" and p.extra == {"level": 3}


def test_writer_round_trips_problems_with_provenance(tmp_path):
    problems = heldout_set(TaskMixConfig(), 30)
    path = write_jsonl(tmp_path / "out" / "heldout.jsonl", map(problem_record, problems), {"made_by": "test", "seed": 0})
    assert load_problems(path) == problems
    meta = json.loads(provenance_path(path).read_text())
    assert meta["made_by"] == "test" and meta["records"] == 30 and meta["file"] == "heldout.jsonl"
    assert len(meta["sha256"]) == 64 and meta["created_utc"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["heldout.jsonl", "heldout.provenance.json"]


def test_writer_leaves_no_partial_file(tmp_path):
    def records():
        yield {"id": "a"}
        raise RuntimeError("generator failed")

    with pytest.raises(RuntimeError):
        write_jsonl(tmp_path / "x.jsonl", records(), {})
    assert list(tmp_path.iterdir()) == []


TEXT = st.text(min_size=1).filter(str.strip)


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.tuples(TEXT, TEXT, st.dictionaries(st.text(), st.integers() | st.text(), max_size=3)), max_size=8))
def test_any_problems_round_trip_through_the_writer(tmp_path_factory, rows):
    problems = [Problem(f"id{i}", q, a, "mine", extra) for i, (q, a, extra) in enumerate(rows)]
    path = write_jsonl(tmp_path_factory.mktemp("w") / "mine.jsonl", map(problem_record, problems), {})
    assert load_problems(path) == problems
