import time

import pytest

from r1hpc.config import ConfigError, from_dict
from r1hpc.data.problem import Problem
from r1hpc.rewards.registry import RewardScorer, RewardsConfig, RewardTerm, default_sources

FMT = "<think>{think}</think><answer>{answer}</answer>"


def _p(source: str, answer: str = "", **extra) -> Problem:
    return Problem(id=f"{source}-{answer}", question="Q?", answer=answer, data_source=source, extra=extra)


@pytest.fixture(scope="module")
def scorer():
    with RewardScorer(RewardsConfig(workers=2)) as s:
        yield s


def test_defaults_cover_every_source():
    assert set(default_sources()) == {"arithmetic", "linear_equation", "countdown", "gsm8k", "math500", "aime24",
                                      "amc23", "humaneval"}
    RewardsConfig().validate()


def test_weighted_sum_and_keys(scorer):
    responses = [FMT.format(think="3+4", answer="7"), "the answer is 7", FMT.format(think="x", answer="8"),
                 FMT.format(think="...", answer="(1+2)*3"), FMT.format(think="...", answer="1+2+3")]
    problems = [_p("arithmetic", "7"), _p("arithmetic", "7"), _p("gsm8k", "7"),
                _p("countdown", numbers=[1, 2, 3], target=9), _p("countdown", numbers=[1, 2, 3], target=9)]
    out = scorer.score_batch(responses, problems)
    assert out[0] == {"accuracy": 1.0, "format": 1.0, "total": pytest.approx(1.1)}
    assert out[1] == {"accuracy": 1.0, "format": 0.0, "total": pytest.approx(1.0)}
    assert out[2] == {"accuracy": 0.0, "format": 1.0, "total": pytest.approx(0.1)}
    assert out[3]["accuracy"] == 1.0 and out[4]["accuracy"] == 0.0


def test_code_source(scorer):
    prog = "```python\ndef add(a, b):\n    return a + b\n```"
    tests = "def check(f):\n    assert f(2, 3) == 5\n"
    out = scorer.score_batch([prog, prog.replace("a + b", "a - b")],
                             [_p("humaneval", tests=tests, entry_point="add")] * 2)
    assert [o["total"] for o in out] == [1.0, 0.0]


def test_language_term_on_think_span():
    cfg = RewardsConfig(sources={"gsm8k": [RewardTerm("math"), RewardTerm("language", 0.5, span="think")]}, language="en")
    with RewardScorer(cfg) as s:
        out = s.score_batch([FMT.format(think="add them", answer="7"), FMT.format(think="我们 add", answer="7")],
                            [_p("gsm8k", "7")] * 2)
    assert out[0] == {"accuracy": 1.0, "language": 1.0, "total": 1.5}
    assert out[1]["language"] == pytest.approx(1 / 3) and out[1]["total"] == pytest.approx(1 + 0.5 / 3)


def test_synthetic_batch_never_touches_the_pool():
    with RewardScorer(RewardsConfig()) as s:
        problems = [_p("arithmetic", str(n)) for n in range(256)]
        out = s.score_batch([FMT.format(think="t", answer=str(n)) for n in range(256)], problems)
        assert all(o["accuracy"] == 1.0 for o in out)
        assert s.pool.started == 0  # no worker process was ever started


def test_batch_deadline_bounds_a_hanging_batch():
    with RewardScorer(RewardsConfig(workers=2, batch_timeout_s=3.0)) as s:
        s.pool.start()
        t0 = time.monotonic()
        out = s.score_batch([r"\boxed{\sqrt{4}}"] + [r"\boxed{9^{9^{9^{9}}}}"] * 4,
                            [_p("math500", "2")] + [_p("math500", "3")] * 4)
        assert time.monotonic() - t0 < 3.0 + 1.0
        assert [o["accuracy"] for o in out] == [1.0] + [0.0] * 4
        assert s.timeouts == 4  # two killed while running, two never started before the deadline


def test_config_from_dict_and_errors():
    cfg = from_dict(RewardsConfig, {"sources": {"gsm8k": [{"name": "math"}, {"name": "format", "weight": 0.5}]},
                                    "format": {"partial": 0.2}})
    assert cfg.sources["gsm8k"][1].weight == 0.5 and cfg.format.partial == 0.2
    with pytest.raises(ConfigError, match="unknown reward"):
        from_dict(RewardsConfig, {"sources": {"x": [{"name": "magic"}]}})
    with pytest.raises(ConfigError, match="used twice"):
        from_dict(RewardsConfig, {"sources": {"x": [{"name": "math"}, {"name": "code"}]}})
    with pytest.raises(ConfigError, match="span must be 'all'"):
        from_dict(RewardsConfig, {"sources": {"x": [{"name": "math", "span": "answer"}]}})
    with pytest.raises(ConfigError, match="language"):
        from_dict(RewardsConfig, {"language": "klingon"})
    with pytest.raises(ConfigError, match="needs models"):
        RewardScorer(RewardsConfig(sources={"chat": [RewardTerm("reward_model")]}))


def test_unknown_data_source_is_a_clear_error(scorer):
    with pytest.raises(ValueError, match="no rewards configured for data_source 'poetry'"):
        scorer.score_batch(["x"], [_p("poetry")])


def test_missing_problem_extra_is_a_clear_error(scorer):
    with pytest.raises(ValueError, match=r"lacks extra\['numbers'\]"):
        scorer.score_batch(["<answer>1</answer>"], [_p("countdown")])


def test_yaml_config_with_overrides(tmp_path):
    from r1hpc.config import load_config

    path = tmp_path / "rewards.yaml"
    path.write_text("language: zh\nsources:\n  countdown:\n    - {name: countdown}\n    - {name: format, weight: 0.2}\n"
                    "  gsm8k:\n    - {name: math}\n    - {name: language, weight: 0.1, span: think}\n")
    cfg = load_config(path, ["batch_timeout_s=30", "math.fallbacks=[answer_is, last_number]"], cls=RewardsConfig)
    assert cfg.language == "zh" and cfg.batch_timeout_s == 30.0 and cfg.math.fallbacks == ["answer_is", "last_number"]
    assert [t.out_key for t in cfg.sources["gsm8k"]] == ["accuracy", "language"]
    path.write_text("sources:\n  gsm8k:\n    - {name: math, wieght: 2}\n")
    with pytest.raises(ConfigError, match="wieght"):
        load_config(path, cls=RewardsConfig)


def test_a_response_that_breaks_its_checker_scores_0_and_is_counted(scorer, monkeypatch):
    import r1hpc.rewards.registry as registry

    deep = "import os\nfor _ in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\ndef f():\n    return 1\n"
    tests = "def check(f):\n    assert f() == 1\n"
    out = scorer.score_batch([deep], [_p("humaneval", tests=tests, entry_point="f")])  # sandbox cleanup holds
    assert out[0]["total"] == 1.0

    real = registry.countdown_reward

    def fragile(response, *a, **k):
        if "boom" in response:
            raise RecursionError("a checker bug a response can trigger")
        return real(response, *a, **k)

    monkeypatch.setattr(registry, "countdown_reward", fragile)
    errors = scorer.errors
    out = scorer.score_batch([FMT.format(think="boom", answer="(1+2)*3"), FMT.format(think="ok", answer="(1+2)*3")],
                             [_p("countdown", numbers=[1, 2, 3], target=9)] * 2)
    assert [o["accuracy"] for o in out] == [0.0, 1.0] and [o["format"] for o in out] == [1.0, 1.0]
    assert scorer.errors == errors + 1 and scorer.state_dict()["errors"] == errors + 1


def test_code_reward_batch_has_a_deadline():
    from r1hpc.rewards.code import CodeBatchStats, CodeConfig, code_reward_batch

    stats = CodeBatchStats()
    t0 = time.monotonic()
    out = code_reward_batch(["def f():\n    return 1\n"] + ["while True: pass"] * 4, ["assert f() == 1"] * 5,
                            [None] * 5, config=CodeConfig(batch_timeout_s=2.0), workers=2, stats=stats)
    print(f"batch of 5 with 4 hanging programs returned in {time.monotonic() - t0:.2f} s")
    # the last two never start before the deadline; the two running then may end on their own shortened limit
    assert out == [1.0, 0.0, 0.0, 0.0, 0.0] and 2 <= stats.timeouts <= 4
