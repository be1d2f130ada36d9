import pytest
from hypothesis import given, settings, strategies as st

from r1hpc.rewards.countdown import countdown_reward
from r1hpc.rewards.format import format_reward
from r1hpc.rewards.language import language_share
from r1hpc.rewards.spans import select_span

GOOD = "<think>\nadd them: 2+3=5\n</think>\n<answer>5</answer>\n"


@pytest.mark.parametrize("response", [GOOD, "<think>x</think><answer>y</answer>", "  <think>a</think>\n\n<answer> 7 </answer>  "])
def test_format_accepts_exact_structure(response):
    assert format_reward(response) == 1.0


@pytest.mark.parametrize("response", [
    "<answer>5</answer>",  # no think
    "<think>a</think>",  # no answer
    "<answer>5</answer><think>a</think>",  # wrong order
    "hello <think>a</think><answer>5</answer>",  # text outside
    "<think>a</think> so <answer>5</answer>",
    "<think>a</think><answer>5</answer> bye",
    "<think>a</think><answer>5</answer><answer>6</answer>",  # twice
    "<think><think>a</think></think><answer>5</answer>",
    "<think>a</think><answer>  </answer>",  # empty answer
    "",
])
def test_format_rejects_malformed(response):
    assert format_reward(response) == 0.0


def test_format_partial_credit_and_prompt_opened_think():
    assert format_reward("<answer>5</answer>", partial=0.4) == pytest.approx(0.2)
    assert format_reward("<think>a</think> x <answer>5</answer>", partial=0.4) == pytest.approx(0.4)
    assert format_reward("so 2+3=5</think><answer>5</answer>", starts_in_think=True) == 1.0
    assert format_reward(GOOD, starts_in_think=True) == 0.0  # the opening tag must not repeat
    assert format_reward("so 2+3=5</think><answer>5</answer>") == 0.0


@settings(deadline=None)  # correctness, not speed: a busy machine must not fail it
@given(st.text(max_size=80))
def test_format_score_is_bounded(text):
    assert 0.0 <= format_reward(text, partial=0.5) <= 1.0
    assert format_reward(f"<think>{text}</think><answer>1</answer>") in (0.0, 1.0)


@pytest.mark.parametrize("expr,numbers,target,score", [
    ("(1+2)*3", [1, 2, 3], 9, 1.0),
    ("3*(1+2) = 9", [1, 2, 3], 9, 1.0),
    ("100 / (7 - 2) + 3", [100, 7, 2, 3], 23, 1.0),
    ("(6 - 4) / 8 * 44", [6, 4, 8, 44], 11, 1.0),  # exact rationals, no float error
    ("2*3", [2, 3, 7], 6, 1.0),  # at most once by default
    ("3*3", [1, 2, 3], 9, 0.0),  # 3 reused
    ("4+5", [1, 2, 3], 9, 0.0),  # numbers not given
    ("-1+10", [1, 10], 9, 0.0),  # unary minus
    ("2**3+1", [2, 3, 1], 9, 0.0),  # power not allowed
    ("10/(5-5)", [10, 5, 5], 1, 0.0),
    ("__import__('os').system('true')", [1], 1, 0.0),
    ("1.5*6", [6], 9, 0.0),
    ("(1+2)*3", [1, 2, 3], 10, 0.0),
    ("", [1], 1, 0.0),
    ("(" * 150 + "1" + ")" * 150, [1], 1, 0.0),  # over the length cap
])
def test_countdown(expr, numbers, target, score):
    assert countdown_reward(f"<think>...</think><answer>{expr}</answer>", numbers, target) == score


def test_countdown_exact_use_and_missing_tag():
    assert countdown_reward("<answer>2*3</answer>", [2, 3, 7], 6, exact_use=True) == 0.0
    assert countdown_reward("<answer>2*3+7-7</answer>", [2, 3, 7, 7], 6, exact_use=True) == 1.0
    assert countdown_reward("(1+2)*3", [1, 2, 3], 9) == 0.0


@settings(deadline=None)  # correctness, not speed: a busy machine must not fail it
@given(st.lists(st.integers(1, 100), min_size=2, max_size=4))
def test_countdown_sum_of_all_numbers(numbers):
    expr = "+".join(map(str, numbers))
    assert countdown_reward(f"<answer>{expr}</answer>", numbers, sum(numbers), exact_use=True) == 1.0
    assert countdown_reward(f"<answer>{expr}</answer>", numbers, sum(numbers) + 1) == 0.0


@pytest.mark.parametrize("text,lang,share", [
    ("Let me add the numbers first", "en", 1.0),
    ("我们先计算", "zh", 1.0),
    ("我们先计算 then add", "zh", 5 / 7),
    ("我们先计算 then add", "en", 2 / 7),
    ("Давайте сложим числа", "ru", 1.0),
    ("Давайте сложим numbers", "ru", 2 / 3),
    ("Je pense que le café est chaud", "fr", 1.0),
    ("Je pense que le café", "en", 4 / 5),
    ("ひらがなとカタカナと漢字", "ja", 1.0),
    ("한국어 문장", "ko", 1.0),
    ("نحن نحسب", "ar", 1.0),
    (r"2 + 3 = 5, \frac{1}{2}", "zh", 1.0),  # no words: nothing in a wrong language
])
def test_language_share(text, lang, share):
    assert language_share(text, lang) == pytest.approx(share)


def test_language_unknown_code():
    with pytest.raises(ValueError, match="unknown language"):
        language_share("x", "xx")


def test_spans():
    r = "<think>plan</think> summary <answer>42</answer>"
    assert select_span(r, "all") == r
    assert select_span(r, "think") == "plan"
    assert select_span(r, "summary") == " summary <answer>42</answer>"
    assert select_span(r, "answer") == "42"
    assert select_span("plan</think>ok", "think", starts_in_think=True) == "plan"
    assert select_span("no tags", "think") == ""
    with pytest.raises(ValueError):
        select_span(r, "middle")
