from hypothesis import given, settings, strategies as st

from r1hpc.rewards.extract import boxed_answers, extract_answer, match_braces


def test_nested_boxed_and_fbox():
    text = r"first \boxed{1} then \fbox{\frac{a}{b}} and \boxed{\frac{\sqrt{2}}{\{x\}}}"
    assert boxed_answers(text) == ["1", r"\frac{a}{b}", r"\frac{\sqrt{2}}{\{x\}}"]


def test_boxed_without_braces_and_unclosed():
    assert boxed_answers(r"so \boxed 42.") == ["42"]
    assert boxed_answers(r"\boxed{12") == []


def test_answer_tag_wins_and_box_inside_preferred():
    assert extract_answer(r"\boxed{3} <answer>7</answer>").answer == "7"
    assert extract_answer(r"<answer>so it is \boxed{8}</answer>").answer == "8"
    assert extract_answer(r"<answer>1</answer> x <answer> 2 </answer>").answer == "2"


def test_fallbacks_are_opt_in_and_ordered():
    text = "we get 3 apples. The answer is 12. Then 5."
    assert extract_answer(text, ()).answer is None
    assert extract_answer(text, ("answer_is",)).answer == "12"
    assert extract_answer(text, ("last_number",)).answer == "5"
    assert extract_answer("work\n#### 1,234", ("gsm8k_hash",)).answer == "1,234"
    assert extract_answer(r"the answer is $\frac{1}{2}$.", ("answer_is",)).answer == r"\frac{1}{2}"
    assert extract_answer("the answer isn't obvious", ("answer_is",)).answer is None


def test_unknown_fallback_is_a_clear_error():
    import pytest

    with pytest.raises(ValueError, match="unknown answer fallback"):
        extract_answer("no answer", ("guess",))


@settings(deadline=None)  # correctness, not speed: a busy machine must not fail it
@given(st.text(alphabet="{}\\ab", max_size=200))
def test_match_braces_pairs_are_balanced(text):
    for open_, close in match_braces(text).items():
        assert text[open_] == "{" and text[close] == "}" and open_ < close
