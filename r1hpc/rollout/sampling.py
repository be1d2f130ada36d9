"""Sampling one token per row from logits: temperature, top-k, top-p (the reference every faster
sampler must match). The log-prob and entropy returned are those of the temperature-scaled
distribution before top-k/top-p truncation: the same quantity the trainer recomputes, so the
rollout-vs-trainer importance ratio compares like with like."""
from __future__ import annotations

import torch


def sample_tokens(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [B, V] -> (tokens [B], logprobs [B], entropies [B]). temperature 0 means greedy."""
    logits = logits.float()
    scaled = logits / temperature if temperature > 0 else logits
    logp_all = torch.log_softmax(scaled, dim=-1)
    entropy = -(logp_all.exp() * logp_all).nan_to_num().sum(-1)
    if temperature <= 0:
        tokens = scaled.argmax(-1)
    else:
        probs = truncated_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, logp_all.gather(-1, tokens[:, None]).squeeze(-1), entropy


def truncated_probs(logits: torch.Tensor, *, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The distribution a token is drawn from (temperature > 0): softmax(logits / T) restricted to
    the top-k tokens (ties with the k-th kept), then to the smallest prefix of them, by
    probability, whose mass reaches top_p; renormalised. [B, V] fp32."""
    filtered = logits.float() / temperature
    if top_k and top_k < filtered.shape[-1]:
        kth = torch.topk(filtered, top_k, dim=-1).values[:, -1:]
        filtered[filtered < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = torch.sort(filtered, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        filtered[drop] = float("-inf")
    return torch.softmax(filtered, dim=-1)
