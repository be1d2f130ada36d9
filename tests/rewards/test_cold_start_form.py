"""The cold-start form |special_token|reasoning|special_token|summary: its format reward, its
spans, and both through RewardScorer (rewards.format.style), next to the R1-Zero form."""
import pytest

from r1hpc.data.cold_start import COLD_START_MARKER as M, answer_summary, format_cold_start
from r1hpc.data.problem import Problem
from r1hpc.rewards.format import FormatConfig, format_reward
from r1hpc.rewards.registry import RewardScorer, RewardsConfig, RewardTerm
from r1hpc.rewards.spans import select_span

GOOD = format_cold_start("2+3=5, write 5.", answer_summary("5"))
R1_ZERO = " <think> 2+3=5 </think> <answer> 5 </answer>"


@pytest.mark.parametrize("response", [
    GOOD,
    f"{M}plan{M}<answer>5</answer>",
    f"\n  {M} plan {M} The sum is five. <answer> 5 </answer> Done.",  # a summary may hold prose
])
def test_cold_start_format_accepts(response):
    assert format_reward(response, style="cold_start") == 1.0


@pytest.mark.parametrize("response", [
    R1_ZERO,  # the other form
    f"{M} plan <answer>5</answer>",  # one marker
    f"{M} a {M} b {M} <answer>5</answer>",  # three markers
    f"so {M} plan {M} <answer>5</answer>",  # text before the first marker
    f"{M}   {M} <answer>5</answer>",  # empty reasoning
    f"{M} plan {M} the answer is 5",  # no answer tag
    f"{M} plan {M} <answer>  </answer>",  # empty answer
    f"{M} plan <answer>5</answer> {M} done",  # the tag is not in the summary
    "",
])
def test_cold_start_format_rejects(response):
    assert format_reward(response, style="cold_start") == 0.0


def test_styles_do_not_accept_each_other_and_partial_credit():
    assert format_reward(R1_ZERO) == 1.0 and format_reward(GOOD) == 0.0
    assert format_reward(f"{M} plan {M} the answer is 5", style="cold_start", partial=0.4) == pytest.approx(0.3)
    assert format_reward(" plan {M} <answer>5</answer>".format(M=M), style="cold_start", starts_in_think=True) == 1.0
    with pytest.raises(ValueError, match="unknown format style"):
        format_reward(GOOD, style="chatml")


def test_cold_start_spans():
    r = f" {M} plan {M} summary <answer>42</answer>"
    assert select_span(r, "all", style="cold_start") == r
    assert select_span(r, "think", style="cold_start") == " plan "
    assert select_span(r, "summary", style="cold_start") == " summary <answer>42</answer>"
    assert select_span(r, "answer", style="cold_start") == "42"
    assert select_span(f"{M} unfinished", "think", style="cold_start") == " unfinished"
    assert select_span(f"{M} unfinished", "summary", style="cold_start") == ""
    assert select_span("no markers <answer>1</answer>", "think", style="cold_start") == ""
    assert select_span("no markers <answer>1</answer>", "answer", style="cold_start") == "1"
    assert select_span(f"plan {M} ok", "think", style="cold_start", starts_in_think=True) == "plan "
    assert select_span(r, "think") == ""  # the R1-Zero style sees no <think> here
    with pytest.raises(ValueError, match="unknown style"):
        select_span(r, "think", style="xml")


def _score(style: str, responses: list[str]) -> list[dict]:
    problem = Problem(id="p", question="2+3?", answer="5", data_source="arithmetic")
    config = RewardsConfig(sources={"arithmetic": [RewardTerm("math"), RewardTerm("format", 0.1),
                                                   RewardTerm("language", 0.1, span="think")]},
                           format=FormatConfig(style=style), workers=1)
    with RewardScorer(config) as scorer:
        return scorer.score_batch(responses, [problem] * len(responses))


def test_scorer_uses_the_configured_style():
    chinese = format_cold_start("二加三等于五", answer_summary("5"))  # reasoning not in English
    good, other, mixed = _score("cold_start", [GOOD, R1_ZERO, chinese])
    assert good == {"accuracy": 1.0, "format": 1.0, "language": pytest.approx(1.0), "total": pytest.approx(1.2)}
    assert other["accuracy"] == 1.0 and other["format"] == 0.0  # the math reward reads the <answer> of either form
    assert mixed["language"] == 0.0  # the language term read the reasoning between the markers
    good, other, mixed = _score("r1_zero", [GOOD, R1_ZERO, chinese])
    assert good["format"] == 0.0 and other["format"] == 1.0
    assert mixed["language"] == 1.0  # the R1-Zero style finds no <think> span there (empty counts as 1)
