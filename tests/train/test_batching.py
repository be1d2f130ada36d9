"""Rollout samples -> padded rows and micro-batches: alignment of targets, masks and log-probs."""
import torch

from r1hpc.rollout.generate import Sample
from r1hpc.train.batching import pack_rows, split_rows


def _sample(prompt, response):
    return Sample(prompt, response, torch.arange(len(response), dtype=torch.float) + 0.5,
                  torch.zeros(len(response)), truncated=False)


def test_targets_mask_and_logprobs_line_up():
    rows = pack_rows([_sample([1, 2, 3], [7, 8]), _sample([4], [9, 10, 11, 12])], pad_id=0)
    assert rows["tokens"].shape == (2, 4)
    # row 0: tokens 1 2 3 7 | targets 2 3 7 8 | trained on predicting 7 and 8
    assert rows["tokens"][0].tolist() == [1, 2, 3, 7]
    assert rows["targets"][0].tolist() == [2, 3, 7, 8]
    assert rows["response_mask"][0].tolist() == [False, False, True, True]
    assert rows["rollout_logp"][0].tolist() == [0.0, 0.0, 0.5, 1.5]
    # row 1: prompt of one token: every target is a response token
    assert rows["targets"][1].tolist() == [9, 10, 11, 12]
    assert rows["response_mask"][1].all()


def test_split_pads_with_zero_weight_filler_and_trims_width():
    rows = pack_rows([_sample([1], [2]), _sample([1], [2]), _sample([1, 2, 3, 4], [5, 6, 7])], pad_id=0)
    micro = split_rows(rows, micro_batch_size=2, num_micro=3)
    assert len(micro) == 3
    assert micro[0]["tokens"].shape == (2, 1)  # trimmed to the longest row of the micro-batch
    assert micro[1]["tokens"].shape == (1, 6)
    assert not micro[2]["response_mask"].any()  # filler


def test_split_rounds_widths_up_for_sequence_parallelism():
    rows = pack_rows([_sample([1], [2]), _sample([1], [2]), _sample([1, 2, 3, 4], [5, 6, 7])], pad_id=0)
    micro = split_rows(rows, micro_batch_size=2, num_micro=3, width_multiple=4)
    assert [m["tokens"].shape[1] for m in micro] == [4, 8, 4]
    assert micro[1]["response_mask"].dtype == torch.bool
    assert micro[1]["response_mask"].sum() == rows["response_mask"][2].sum()  # padding is never trained on
    assert micro[1]["targets"][0, :6].tolist() == rows["targets"][2].tolist()


def test_routing_rows_line_up_with_tokens_and_split_like_them():
    """Routing replay: each fed position's experts [layers, topk] sit at its token's column; past a
    row's end -1; micro-batches trim, pad (to the width multiple) and fill it like the 2-D tensors."""
    samples = [_sample([1], [2]), _sample([1], [2]), _sample([1, 2, 3, 4], [5, 6, 7])]
    for i, s in enumerate(samples):
        n = len(s.prompt_ids) + len(s.response_ids) - 1
        s.routing = (torch.arange(n * 3 * 2, dtype=torch.int16).view(n, 3, 2) + 100 * i)
    rows = pack_rows(samples, pad_id=0)
    assert rows["routing"].shape == (3, 6, 3, 2) and rows["routing"].dtype == torch.int16
    assert torch.equal(rows["routing"][2], samples[2].routing)
    assert torch.equal(rows["routing"][0, :1], samples[0].routing) and (rows["routing"][0, 1:] == -1).all()
    micro = split_rows(rows, micro_batch_size=2, num_micro=3, width_multiple=4)
    assert micro[0]["routing"].shape == (2, 4, 3, 2) and micro[0]["tokens"].shape == (2, 4)
    assert torch.equal(micro[1]["routing"][0, :6], samples[2].routing) and (micro[1]["routing"][0, 6:] == 0).all()
    assert micro[2]["routing"].shape == (1, 4, 3, 2)  # the filler
