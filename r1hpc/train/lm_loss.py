"""Next-token cross-entropy as a megatron forward step (pretraining and SFT).

Batches are dicts of ``tokens``, ``labels`` (tokens shifted left) and ``loss_mask`` ([b, s] each);
the loss is the mean over unmasked tokens of each micro-batch, computed by megatron's
vocab-parallel cross entropy so no rank ever holds the full vocabulary of logits.
"""
from __future__ import annotations

from functools import partial

import torch

from r1hpc.model.provider import causal_attention_mask


def position_ids(tokens: torch.Tensor) -> torch.Tensor:
    return torch.arange(tokens.shape[1], device=tokens.device)[None].expand_as(tokens)


def _masked_mean(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    loss = (per_token_loss.float() * loss_mask).sum() / loss_mask.sum().clamp(min=1)
    return loss, {"lm_loss": loss.detach().clone()}  # clone: megatron divides the loss in place


def lm_forward_step(data_iterator, model):
    batch = next(data_iterator)
    tokens = batch["tokens"]
    out = model(tokens, position_ids(tokens), causal_attention_mask(tokens.shape[1], tokens.device),
                labels=batch["labels"])
    return out, partial(_masked_mean, batch["loss_mask"].float())


def make_lm_batch(sequences: torch.Tensor, loss_mask: torch.Tensor | None = None) -> dict:
    """[b, s+1] token ids -> inputs, next-token labels and a loss mask aligned with the labels."""
    mask = torch.ones_like(sequences[:, 1:], dtype=torch.float) if loss_mask is None else loss_mask[:, 1:].float()
    return {"tokens": sequences[:, :-1].contiguous(), "labels": sequences[:, 1:].contiguous(), "loss_mask": mask}
