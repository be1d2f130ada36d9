"""Model-based rewards: a scalar reward model (value head on a backbone) and a generative judge.

Both run in the caller's process: they are the trainer's own models, not untrusted code.
"""
from __future__ import annotations

import logging
import re
from typing import Callable, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

ScoreFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]

JUDGE_TEMPLATE = """You are grading an answer against a reference.
Question: {question}
Reference answer: {reference}
Predicted answer: {prediction}
Is the predicted answer equivalent to the reference? Reply with one final line:
VERDICT: CORRECT or VERDICT: INCORRECT"""

_VERDICT_RE = re.compile(r"verdict\W{0,5}(not\s+correct|incorrect|correct|yes|no|true|false|right|wrong)", re.I)
_POSITIVE = {"correct", "yes", "true", "right"}


class ScalarRewardModel(nn.Module):
    """A backbone mapping token ids [B, T] to hidden states [B, T, H], plus a linear value head
    read at each sequence's last real token: one scalar per prompt+response."""

    def __init__(self, backbone: nn.Module, hidden_size: int, tokenize: Callable[[str], list[int]], *,
                 max_tokens: int = 4096, pad_id: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(hidden_size, 1)
        self.tokenize = tokenize
        self.max_tokens = max_tokens
        self.pad_id = pad_id

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids)
        values = self.value_head(hidden).squeeze(-1)
        return values.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Scores for each prompt+response (the last ``max_tokens`` tokens are kept)."""
        ids = [self.tokenize(p + r)[-self.max_tokens :] or [self.pad_id] for p, r in zip(prompts, responses)]
        lengths = torch.tensor([len(x) for x in ids])
        batch = torch.full((len(ids), int(lengths.max())), self.pad_id, dtype=torch.long)
        for i, x in enumerate(ids):
            batch[i, : len(x)] = torch.tensor(x)
        device = next(self.parameters()).device
        return self(batch.to(device), lengths.to(device)).float().cpu().tolist()


def as_score_fn(model: ScalarRewardModel | ScoreFn) -> ScoreFn:
    """Any ``(prompts, responses) -> scores`` callable, or a ScalarRewardModel."""
    return model.score if isinstance(model, ScalarRewardModel) else model


def parse_verdict(text: str) -> float:
    """1.0 for a final positive verdict, 0.0 for a negative, a missing or an ambiguous one. The
    last "VERDICT: ..." wins; otherwise the last line must be a lone yes/correct/no/incorrect."""
    found = _VERDICT_RE.findall(text)
    if found:
        return float(found[-1].lower() in _POSITIVE)
    lines = text.strip().splitlines()
    last = re.sub(r"[^a-z ]", "", lines[-1].lower()).strip() if lines else ""
    return float(last in _POSITIVE)


class JudgeReward:
    """A generative judge: ``generate(prompt) -> str`` is shown the question, the reference and the
    prediction; its verdict is parsed by ``parse_verdict``. A failing generator scores 0."""

    def __init__(self, generate: Callable[[str], str], template: str = JUDGE_TEMPLATE) -> None:
        self.generate = generate
        self.template = template

    def __call__(self, question: str, reference: str, prediction: str) -> float:
        try:
            reply = self.generate(self.template.format(question=question, reference=reference, prediction=prediction))
        except Exception as e:  # noqa: BLE001 - a judge outage must not stop training
            log.warning("judge failed (%s: %s); scoring 0", type(e).__name__, e)
            return 0.0
        return parse_verdict(reply)
