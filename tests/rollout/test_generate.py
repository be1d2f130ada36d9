"""KV-cached rollout on the megatron model equals recomputing the whole prefix each step, and
tensor parallelism (gathered vocab-parallel logits) changes nothing."""
import pytest
import torch

from tests.multiproc import run_workers
from tests.rollout.workers import greedy_both_ways

pytestmark = pytest.mark.multiproc


# A rare stop token (rows run to the limit) and a dense stop set (rows stop at different steps, so
# finished rows are compacted out of the KV cache mid-decode).
@pytest.mark.parametrize("stop", [[96], list(range(0, 97, 5))], ids=["rare-stop", "staggered-stops"])
def test_kv_cache_greedy_equals_full_recompute_and_tp2_equals_tp1(tmp_path, stop):
    ckpt = str(tmp_path / "w")
    (one,) = run_workers(greedy_both_ways, 1, {}, ckpt, "save", stop)
    assert one["cached"] == one["naive"]
    assert one["logp_finite"]
    assert all(len(r) == 12 or not t for r, t in zip(one["cached"], one["truncated"]))
    assert one["cached"][0] == one["cached"][1]  # identical prompts, greedy: identical responses
    if stop != [96]:
        stopped_early = sum(len(r) < 12 for r in one["cached"])
        # at least a quarter of the rows stopped while others ran on: the cache was compacted
        assert 2 <= stopped_early < len(one["cached"]), one["cached"]
    two = run_workers(greedy_both_ways, 2, {"tensor_model_parallel_size": 2}, ckpt, "load", stop)
    for r in two:
        assert r["cached"] == one["cached"]


def test_native_sampler_draws_do_not_depend_on_how_prompts_are_batched():
    """The compiled sampler keys each prompt's draws by its index in the call: splitting the rows
    into batches of 3 (different neighbours, KV-cache compaction at other steps) changes nothing.
    The torch reference draws from one stream for the whole batch, so there it does change."""
    from tests.rollout.workers import sample_in_chunks

    (out,) = run_workers(sample_in_chunks, 1)
    assert out["native/64"] == out["native/3"]
    assert out["native/64"][0] != out["native/64"][1]  # same prompt, different request: different draws
    assert out["torch/64"] != out["torch/3"]


def test_a_group_prefills_its_prompt_once_and_samples_as_if_every_row_had():
    """Rows with the same prompt share one prefill (KV-cache rows copied): the same tokens, log-probs
    (1e-5) and recorded MoE routing as prefilling every row, with a quarter of the prefill rows."""
    from tests.rollout.workers import shared_prefill_or_not

    (out,) = run_workers(shared_prefill_or_not, 1)
    shared, every = out["shared"], out["every-row"]
    assert (shared["prefill_rows"], every["prefill_rows"]) == (4, 16)
    assert shared["tokens"] == every["tokens"]
    assert len(set(map(tuple, shared["tokens"]))) > 4  # a group's rows drew different responses
    for a, b in zip(shared["logprobs"], every["logprobs"]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    for a, b in zip(shared["routing"], every["routing"]):
        assert a is not None and torch.equal(a, b)


def test_keys_rotated_once_as_they_enter_the_cache_decode_bit_for_bit_as_megatrons():
    """r1hpc's self-attention rotates each key once, when it is stored in the static KV cache;
    megatron's rotates the whole cached history at every step. Same tokens, same log-probs to the
    bit (RoPE is per position), one key position rotated per decode step instead of all of them. The
    direct inference forward (both caches) gives megatron's forward's tokens and log-probs to the bit."""
    from tests.rollout.workers import rotated_key_cache_or_megatrons

    (out,) = run_workers(rotated_key_cache_or_megatrons, 1)
    ours, megatrons = out["rotated-cache"], out["megatron"]
    assert out["layers"] == 2
    assert ours["tokens"] == megatrons["tokens"]
    assert len(set(map(len, ours["tokens"]))) > 1  # rows stopped at different steps
    for a, b in zip(ours["logprobs"], megatrons["logprobs"]):
        assert torch.equal(a, b)
    assert ours["decode_key_positions"] == 1
    assert megatrons["decode_key_positions"] > 10
    if "dynamic" in ours:  # the paged cache's direct forward against megatron's
        assert ours["dynamic"][0] == megatrons["dynamic"][0]
        for a, b in zip(ours["dynamic"][1], megatrons["dynamic"][1]):
            assert torch.equal(a, b)
