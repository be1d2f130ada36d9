import pytest
import torch
from torch import nn

from r1hpc.data.problem import Problem
from r1hpc.rewards.model_based import JudgeReward, ScalarRewardModel, parse_verdict
from r1hpc.rewards.registry import RewardScorer, RewardsConfig, RewardTerm


class TinyBackbone(nn.Module):
    """Byte embeddings + a causal GRU: hidden state at t depends only on tokens <= t."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.rnn(self.embed(ids))[0]


@pytest.fixture
def rm():
    torch.manual_seed(0)
    return ScalarRewardModel(TinyBackbone(), 16, lambda s: list(s.encode())).eval()


def test_scalar_reward_model_scores_and_ignores_padding(rm):
    alone = rm.score(["Q: "], ["short"])
    batch = rm.score(["Q: ", "Q: "], ["short", "a much longer response that forces padding"])
    assert len(batch) == 2 and all(isinstance(x, float) for x in batch)
    assert batch[0] == pytest.approx(alone[0], abs=1e-6)
    assert batch[0] != pytest.approx(batch[1])


def test_value_head_gradients_flow(rm):
    out = rm(torch.tensor([[1, 2, 3, 0]]), torch.tensor([3]))
    out.sum().backward()
    assert rm.value_head.weight.grad is not None and out.shape == (1,)


@pytest.mark.parametrize("reply,score", [
    ("The prediction matches.\nVERDICT: CORRECT", 1.0),
    ("VERDICT: INCORRECT", 0.0),
    ("verdict - **correct**", 1.0),
    ("Verdict: not correct", 0.0),
    ("At first VERDICT: INCORRECT, but on reflection VERDICT: CORRECT", 1.0),
    ("Yes", 1.0),
    ("no.", 0.0),
    ("I think it is correct but maybe incorrect", 0.0),  # no parsable verdict
    ("", 0.0),
])
def test_parse_verdict(reply, score):
    assert parse_verdict(reply) == score


def test_judge_sees_reference_and_prediction_and_survives_failures():
    seen = []

    def generate(prompt: str) -> str:
        seen.append(prompt)
        return "VERDICT: CORRECT" if "Predicted answer: 42" in prompt else "VERDICT: INCORRECT"

    judge = JudgeReward(generate)
    assert judge("What?", "42", "42") == 1.0 and judge("What?", "42", "41") == 0.0
    assert "Reference answer: 42" in seen[0]

    def broken(prompt: str) -> str:
        raise RuntimeError("judge server down")

    assert JudgeReward(broken)("q", "a", "a") == 0.0


def test_scorer_spans_for_helpfulness_and_harmlessness():
    seen: dict[str, list[str]] = {"helpful": [], "harmless": []}

    def recorder(name: str, value: float):
        def fn(prompts, responses):
            seen[name].extend(responses)
            return [value] * len(responses)
        return fn

    cfg = RewardsConfig(sources={"chat": [
        RewardTerm("reward_model", 1.0, span="summary", key="helpfulness", model="helpful"),
        RewardTerm("reward_model", 0.5, span="all", key="harmlessness", model="harmless"),
        RewardTerm("judge", 2.0, span="answer"),
    ]})
    models = {"helpful": recorder("helpful", 0.25), "harmless": recorder("harmless", 1.0),
              "judge": lambda prompt: "VERDICT: CORRECT" if "Predicted answer: Paris" in prompt else "VERDICT: INCORRECT"}
    response = "<think>secret plan</think>The capital is <answer>Paris</answer>"
    with RewardScorer(cfg, models=models) as s:
        out = s.score_batch([response], [Problem("1", "Capital of France?", "Paris", "chat")])
    assert seen["helpful"] == ["The capital is <answer>Paris</answer>"]
    assert seen["harmless"] == [response]
    assert out[0] == {"helpfulness": 0.25, "harmlessness": 1.0, "judge": 1.0, "total": 0.25 + 0.5 + 2.0}


def test_scorer_accepts_an_nn_module_reward_model(rm):
    cfg = RewardsConfig(sources={"chat": [RewardTerm("reward_model")]})
    with RewardScorer(cfg, models={"reward_model": rm}) as s:
        out = s.score_batch(["hello"], [Problem("1", "Q: ", "", "chat")])
    assert out[0]["total"] == pytest.approx(rm.score(["Q: "], ["hello"])[0], abs=1e-6)
