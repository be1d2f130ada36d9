"""Next-token cross-entropy as a megatron forward step (pretraining and SFT).

Batches are dicts of ``tokens``, ``labels`` (tokens shifted left), ``loss_mask`` ([b, s] each) and
``vocab_size`` (the tokenizer's): megatron pads the vocabulary to a multiple of 128 x TP, and the
logits of the padding rows are kept out of the softmax (as the GRPO log-probs keep them out), so the
loss is that of the real vocabulary and does not depend on the TP size. The loss is computed by
megatron's vocab-parallel cross entropy, so no rank ever holds the full vocabulary of logits; it is
the mean over unmasked tokens of each micro-batch.

Optional keys (SFT with packed rows, r1hpc.train.sft): ``position_ids`` [b, s] and
``attention_mask`` [b, 1, s, s] (True = masked) replace the plain causal ones. With ``loss_scale``
(a float) the loss is ``sum(masked token losses) * loss_scale`` instead of the micro-batch mean, so
a step can average over all its tokens rather than over micro-batches.
"""
from __future__ import annotations

from functools import partial

import torch

from r1hpc.model.provider import causal_attention_mask


def position_ids(tokens: torch.Tensor) -> torch.Tensor:
    return torch.arange(tokens.shape[1], device=tokens.device)[None].expand_as(tokens)


_MASKED_LOGIT = -1e4  # exp() is exactly 0 in fp32 and bf16, yet finite


def mask_vocab_padding(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """This TP rank's [..., V_local] logits with the entries past the real vocabulary masked out."""
    from megatron.core import parallel_state

    real = vocab_size - parallel_state.get_tensor_model_parallel_rank() * logits.shape[-1]
    if real >= logits.shape[-1]:
        return logits
    return logits.masked_fill(torch.arange(logits.shape[-1], device=logits.device) >= real, _MASKED_LOGIT)


def _token_losses(batch: dict, logits: torch.Tensor) -> torch.Tensor:
    """[b, s] cross entropy of each label over the real vocabulary (padding masked), fp32."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    return vocab_parallel_cross_entropy(mask_vocab_padding(logits, batch["vocab_size"]), batch["labels"]).float()


def _masked_mean(batch: dict, logits: torch.Tensor):
    loss_mask = batch["loss_mask"].float()
    loss = (_token_losses(batch, logits) * loss_mask).sum() / loss_mask.sum().clamp(min=1)
    return loss, {"lm_loss": loss.detach().clone()}  # clone: megatron divides the loss in place


def _scaled_sum(batch: dict, logits: torch.Tensor):
    loss_mask = batch["loss_mask"].float()
    total = (_token_losses(batch, logits) * loss_mask).sum()
    return total * batch["loss_scale"], {"lm_loss_sum": total.detach().clone(), "lm_tokens": loss_mask.sum()}


def lm_forward_step(data_iterator, model):
    batch = next(data_iterator)
    tokens = batch["tokens"]
    positions = batch["position_ids"] if "position_ids" in batch else position_ids(tokens)
    mask = batch["attention_mask"] if "attention_mask" in batch else causal_attention_mask(tokens.shape[1], tokens.device)
    # logits out (on the last pipeline stage); the loss function masks the vocabulary padding
    return model(tokens, positions, mask), partial(_scaled_sum if "loss_scale" in batch else _masked_mean, batch)


def make_lm_batch(sequences: torch.Tensor, loss_mask: torch.Tensor | None = None, *, vocab_size: int) -> dict:
    """[b, s+1] token ids -> inputs, next-token labels and a loss mask aligned with the labels;
    ``vocab_size``: the tokenizer's (the logits past it are megatron's padding)."""
    mask = torch.ones_like(sequences[:, 1:], dtype=torch.float) if loss_mask is None else loss_mask[:, 1:].float()
    return {"tokens": sequences[:, :-1].contiguous(), "labels": sequences[:, 1:].contiguous(), "loss_mask": mask,
            "vocab_size": vocab_size}
