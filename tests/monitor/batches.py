"""Constructed rollout batches for monitor tests: real BPE tokens, known markers, known answers
and entropies chosen per token (low before the first marker, high from it on)."""
from __future__ import annotations

import torch

from r1hpc.data.problem import Problem
from r1hpc.data.tokenizer import train_bpe
from r1hpc.rollout.generate import Sample

PROMPT = "User: 23+45=?\nAssistant:"
# (response, accuracy): an aha event, a changed answer that ends wrong, no marker, a marker that keeps its answer
RESPONSES = [
    (" <think>3+5=8, 2+4=6, so 67. Wait, 2+4=6 and 3+5=8 gives 68.</think><answer>68</answer>", 1.0),
    (" <think>so 68. Wait, it is 69.</think><answer>69</answer>", 0.0),
    (" <think>3+5=8, 2+4=6</think><answer>68</answer>", 1.0),
    (" <think>so 68. Let me verify: 8 and 6, 68.</think><answer>68</answer>", 1.0),
]
LOW, HIGH = 0.1, 0.9


def tokenizer():
    return train_bpe([PROMPT + r for r, _ in RESPONSES] * 20, vocab_size=300)


def batch(tok, marker_token: dict[int, int] | None = None):
    """Samples, scores and problems; ``marker_token[i]`` is the token where response i's first
    marker starts (entropy LOW before it, HIGH from it on); rows without one are all LOW."""
    marker_token = marker_token or {}
    samples, scores = [], []
    for i, (text, acc) in enumerate(RESPONSES):
        ids = tok.encode(text) + [tok.eos_id]
        ent = torch.full((len(ids),), LOW)
        if i in marker_token:
            ent[marker_token[i]:] = HIGH
        samples.append(Sample(tok.encode(PROMPT), ids, torch.full((len(ids),), -0.5), ent, truncated=False))
        scores.append({"accuracy": acc, "format": 1.0, "total": acc + 0.1})
    problems = [Problem(id="p0", question="23+45=?", answer="68", data_source="arithmetic")] * len(RESPONSES)
    return samples, scores, problems
