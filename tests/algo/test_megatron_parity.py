"""Our vocab-parallel log-probs use Megatron-core's sharding convention: with its TP group and its
vocabulary ranges, token_logp equals minus Megatron's vocab_parallel_cross_entropy."""
import pytest
import torch

from tests.algo.dist_utils import run_gloo


def megatron_worker(rank, world):
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.core.tensor_parallel.utils import VocabUtility

    from r1hpc.algo import token_logp

    ps.initialize_model_parallel(tensor_model_parallel_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        t, v = 10, 64
        logits = torch.randn(t, v, generator=g) * 3
        target = torch.randint(0, v, (t,), generator=g)
        start, end = VocabUtility.vocab_range_from_global_vocab_size(v, rank, world)
        shard = logits[:, start:end]
        ce = tensor_parallel.vocab_parallel_cross_entropy(shard.clone()[:, None, :], target[:, None]).squeeze(1)
        logp, _ = token_logp(shard, target, tp_group=ps.get_tensor_model_parallel_group(),
                             vocab_start_index=start, impl="torch")
        torch.testing.assert_close(logp, -ce, rtol=1e-5, atol=1e-5)  # fp32, different op order
    finally:
        ps.destroy_model_parallel()


@pytest.mark.multiproc
def test_matches_megatron_vocab_parallel_cross_entropy():
    run_gloo(megatron_worker)
