"""``algo.fused_output``: the GRPO trainer's forwards stop at the hidden states and the loss and
log-prob functions apply the output weight themselves (r1hpc.algo.fused_linear), so no
``[tokens, V/TP]`` logits or logit gradient exist in the update or the old/reference passes.

The decoder runs as megatron runs it (embedding, layers, final norm) through the model's own
forward with its output layer switched off for the call (``post_process`` off: GPTModel then
returns the final-norm hidden states ``[s, b, H]``), which works on every megatron-core version
r1hpc supports. What the column-parallel output layer would do with its input is done here:
gather the sequence-parallel shards (backward: reduce-scatter), or, without sequence parallelism,
all-reduce the hidden states' gradient over the TP group (each vocabulary shard contributes a part).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor

from r1hpc.algo.fused_linear import fused_linear_grpo_loss, fused_linear_logprobs
from r1hpc.model.provider import unwrap


@contextlib.contextmanager
def _output_layer_off(gpt):
    saved = gpt.post_process
    gpt.post_process = False
    try:
        yield
    finally:
        gpt.post_process = saved


class FusedOutputLayer:
    """This rank's output layer as the loss applies it. ``forward`` returns what the pipeline stage
    hands on: the TP-complete hidden states ``[b, s, H]`` on the last stage; ``logp`` and ``loss``
    take the hidden states where :func:`r1hpc.algo.token_logp` and :func:`r1hpc.algo.grpo_loss`
    take logits, and leave megatron's vocabulary padding (ids >= ``vocab_size``) out of the softmax."""

    def __init__(self, model: torch.nn.Module, vocab_size: int) -> None:
        self.model, self.gpt, self.vocab_size = model, unwrap(model), vocab_size

    def weight(self) -> Tensor:
        """[V/TP, H]: the output layer's, or the (last stage's copy of the) embedding when tied."""
        gpt = self.gpt
        return gpt.shared_embedding_or_output_weight() if gpt.share_embeddings_and_output_weights \
            else gpt.output_layer.weight

    def forward(self, *args: Tensor) -> Tensor:
        """``args``: the model's (tokens, position ids, attention mask)."""
        from megatron.core import parallel_state, tensor_parallel

        if not self.gpt.post_process:  # an earlier pipeline stage: its output goes to the next one as usual
            return self.model(*args)
        with _output_layer_off(self.gpt):
            hidden = self.model(*args)  # [s, b, H] (s / TP with sequence parallelism)
        if self._tp_size() > 1 and self.gpt.config.sequence_parallel:
            hidden = tensor_parallel.gather_from_sequence_parallel_region(
                hidden, tensor_parallel_output_grad=True, group=parallel_state.get_tensor_model_parallel_group())
        return hidden.transpose(0, 1)

    def logp(self, hidden: Tensor, target: Tensor, mask: Optional[Tensor] = None, **kw):
        return fused_linear_logprobs(hidden, self.weight(), target, mask, vocab_size=self.vocab_size, **kw)

    def loss(self, hidden: Tensor, *args, **kw):
        from megatron.core import parallel_state, tensor_parallel

        if self._tp_size() > 1 and not self.gpt.config.sequence_parallel:
            # all-reduce the vocabulary shards' parts of grad_hidden. Here, on the selected tokens, not in
            # forward: megatron's reduce all-reduces a contiguous copy of a non-contiguous gradient (the
            # transposed [s, b, H] one would be) and returns the unreduced original
            hidden = tensor_parallel.copy_to_tensor_model_parallel_region(
                hidden, group=parallel_state.get_tensor_model_parallel_group())
        return fused_linear_grpo_loss(hidden, self.weight(), *args, vocab_size=self.vocab_size, **kw)

    @staticmethod
    def _tp_size() -> int:
        from megatron.core import parallel_state

        return parallel_state.get_tensor_model_parallel_world_size()
