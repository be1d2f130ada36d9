"""Generative judges backed by a megatron checkpoint, built from ``rewards.judges``: the model-based
reward for data without a rule (R1 scores its general data with DeepSeek-V3 as the judge; here the
judge may be the run's own base, or any converted checkpoint). Greedy decoding, so a verdict is a
function of its prompt. Every rank of a model-parallel group must score the same batch (they do in
GRPO, where tensor-parallel ranks hold the same responses)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Optional

from r1hpc.config import ConfigError
from r1hpc.rewards.model_based import JUDGE_TEMPLATE, JudgeReward


@dataclasses.dataclass
class JudgeModelConfig:
    """``base_dir``: a model folder (``r1hpc convert`` output or a pretrained base with tokenizer.json);
    empty = the run's own base. ``weights``: default ``<base_dir>/weights``. ``template`` must hold
    {prediction} (the scored span) and may use {question} and {reference} (the problem's answer
    field); the reply's last "VERDICT: ..." decides."""

    base_dir: Optional[str] = None
    weights: Optional[str] = None
    template: str = JUDGE_TEMPLATE
    max_new_tokens: int = 64

    def validate(self) -> None:
        if "{prediction}" not in self.template:
            raise ConfigError("template lacks {prediction}, the response span it judges")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


class MegatronGenerator:
    """``prompt -> reply`` with a frozen megatron model (greedy)."""

    def __init__(self, engine, tok, max_new_tokens: int, max_seq_length: int) -> None:
        self.engine, self.tok = engine, tok
        self.max_new_tokens, self.max_seq_length = max_new_tokens, max_seq_length

    def __call__(self, prompt: str) -> str:
        from r1hpc.rollout.generate import generate, response_text

        ids = self.tok.encode(prompt)[-(self.max_seq_length - self.max_new_tokens):]
        sample = generate(self.engine.module, [ids], vocab_size=self.tok.vocab_size, stop_ids=self.tok.stop_token_ids,
                          temperature=0.0, max_new_tokens=self.max_new_tokens, max_seq_length=self.max_seq_length)[0]
        return response_text(self.tok, sample)


def build_judges(cfg, data_sources: Iterable[str]) -> dict[str, JudgeReward]:
    """A JudgeReward for each ``rewards.judges`` entry that a judge term of ``data_sources`` uses, each
    on a frozen copy of its model (collective: call after ``init_distributed``, on every rank)."""
    from r1hpc.model.base import base_dir_of
    from r1hpc.train.policy import load_policy

    wanted = {t.model_name for source in data_sources for t in cfg.rewards.sources.get(source, []) if t.name == "judge"}
    unknown = sorted(wanted - set(cfg.rewards.judges))
    if unknown:
        raise ConfigError(f"rewards.judges: no judge named {', '.join(unknown)} (used by a judge term of rewards.sources)")
    judges = {}
    for name in sorted(wanted):
        j = cfg.rewards.judges[name]
        base_dir = Path(j.base_dir) if j.base_dir else base_dir_of(cfg)
        if not (base_dir / "tokenizer.json").is_file():
            raise ConfigError(f"rewards.judges.{name}.base_dir: {base_dir} holds no model (no tokenizer.json)")
        engine, tok, model_cfg = load_policy(cfg, Path(j.weights) if j.weights else base_dir / "weights",
                                             trainable=False, base_dir=base_dir)
        judges[name] = JudgeReward(MegatronGenerator(engine, tok, j.max_new_tokens, model_cfg.max_seq_length),
                                   template=j.template)
    return judges
