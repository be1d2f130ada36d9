"""The SFT trainer: packing is exact (a packed example's loss equals its loss alone), the loss covers
exactly the response tokens and EOS, TP=2 (sequence parallel) and DP=2 steps equal one process, and
`r1hpc cold-start` + `r1hpc sft` teach a model that never wrote it the cold-start form."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r1hpc.train.sft import SFTConfig, pack_examples, packed_batch, step_batches
from tests.multiproc import run_workers
from tests.train import sft_workers

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs/ci_r1zero.yaml")


def test_pack_examples_first_fit_and_unpacked():
    lengths = [11, 6, 9, 3, 11]  # an example of n tokens fills n - 1 positions
    assert pack_examples(lengths, 16) == [[0, 1], [2, 3], [4]]
    assert pack_examples(lengths, 16, packing=False) == [[0], [1], [2], [3], [4]]
    with pytest.raises(ValueError, match="example 0 needs 11 positions"):
        pack_examples([12], 10)


def test_loss_mask_is_exactly_response_and_eos():
    eos = 99
    a = ([1, 2, 3, 10, 11, eos], 3)  # prompt 1 2 3, response 10 11 + EOS
    b = ([4, 5, 20, eos], 2)
    batch = packed_batch([[a, b]], pad_id=0, width_multiple=4)
    trained = batch["labels"][batch["loss_mask"].bool()].tolist()
    assert trained == [10, 11, eos, 20, eos]
    assert batch["tokens"].shape == (1, 8)  # 5 + 3 positions, already a multiple of 4
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    mask = batch["attention_mask"][0, 0]
    assert mask.shape == (8, 8)
    assert not mask[5, 5] and mask[5, 4] and mask[4, 5] and not mask[4, 0]  # b sees only itself, causally
    wide = packed_batch([[b]], pad_id=0, width_multiple=4, width=5)
    assert wide["tokens"].shape == (1, 8) and wide["loss_mask"].sum() == 2


def test_epochs_are_seeded_shuffles_of_every_example():
    plan = step_batches(10, SFTConfig(epochs=2, batch_size=4), seed=1)
    assert [len(b) for _, b in plan] == [4, 4, 2, 4, 4, 2] and [e for e, _ in plan] == [0, 0, 0, 1, 1, 1]
    first, second = [i for _, b in plan[:3] for i in b], [i for _, b in plan[3:] for i in b]
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    assert plan == step_batches(10, SFTConfig(epochs=2, batch_size=4), seed=1)
    assert plan != step_batches(10, SFTConfig(epochs=2, batch_size=4), seed=2)


@pytest.mark.multiproc
def test_packing_is_exact_and_tp2_sp_and_dp2_steps_equal_one_process(tmp_path):
    ckpt = str(tmp_path / "w")
    (ref,) = run_workers(sft_workers.parallel_sft_steps, 1, {}, ckpt, "save")
    packing = ref["packing"]
    assert packing["rows"] < 24 / 2  # several examples really shared rows
    diff = (packing["packed"] - packing["alone"]).abs().max().item()
    assert diff < 1e-5, diff  # fp32: the mask and position ids isolate each example exactly
    leak = (packing["leaky"] - packing["alone"]).abs().max().item()
    assert leak > 1e-2, leak  # control: a plain causal mask lets examples see each other

    tp = run_workers(sft_workers.parallel_sft_steps, 2, {"tensor_model_parallel_size": 2, "sequence_parallel": True},
                     ckpt, "load")
    dp = run_workers(sft_workers.parallel_sft_steps, 2, {}, ckpt, "load")
    losses = [m["loss"] for m in ref["metrics"]]
    assert losses[2] < losses[0]
    for run in (tp, dp):
        for rank in run:
            for m, m_ref in zip(rank["metrics"], ref["metrics"]):
                assert m["tokens"] == m_ref["tokens"] and m["examples"] == m_ref["examples"] == 12
                # the TP=2 vocabulary is padded to 256, TP=1's to 128: equal losses show the padding is masked
                assert m["loss"] == pytest.approx(m_ref["loss"], rel=1e-5, abs=1e-6)
                assert m["grad_norm"] == pytest.approx(m_ref["grad_norm"], rel=1e-4)
            torch.testing.assert_close(rank["logits"], ref["logits"], rtol=1e-4, atol=1e-4)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "SLURM_", "MASTER_"))}
    proc = subprocess.run([sys.executable, "-m", "r1hpc.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_cold_start_and_sft_commands(tmp_path):
    data = tmp_path / "cs.jsonl"
    out = _cli("cold-start", CONFIG, "run.seed=3", "--out", str(data), "--n", "5")
    assert f"5 cold-start examples in {data}" in out.stdout
    records = [json.loads(x) for x in data.read_text().splitlines()]
    assert len(records) == 5 and {r["source"] for r in records} == {"cold_start"}
    assert json.loads(data.with_suffix(".provenance.json").read_text())["seed"] == 3
    proc = subprocess.run([sys.executable, "-m", "r1hpc.cli", "sft", CONFIG], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "sft.data: no SFT data files given" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "r1hpc.cli", "sft", CONFIG, f"sft.data=[{data}]",
                           "parallel.pipeline_model_parallel_size=2"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "SFT does not support pipeline parallelism" in proc.stderr
    with data.open("a") as f:
        f.write('{"question": "q"}\n')
    proc = subprocess.run([sys.executable, "-m", "r1hpc.cli", "sft", CONFIG, f"sft.data=[{data}]",
                           f"run.output_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and f"r1hpc: bad SFT data: {data}:6: missing key 'response'" in proc.stderr, proc.stderr[-2000:]


# the ci recipe with a fast tokenizer and room for the cold-start form: its responses are 66-85
# tokens in this BPE (15 bytes per marker), so greedy decoding gets 100 new tokens, never cut short
TINY = ["data.corpus.size=400", "data.tokenizer.train_examples=400", "model.max_seq_length=160",
        "rollout.max_new_tokens=100"]


@pytest.mark.multiproc
def test_cold_start_sft_teaches_the_cold_start_form(tmp_path):
    data = tmp_path / "cold_start.jsonl"
    overrides = TINY + [f"run.output_dir={tmp_path}", "run.name=cold", f"pretrain.base_dir={tmp_path / 'base'}",
                        "sft.epochs=2", "sft.batch_size=8", "sft.micro_batch_size=8", "sft.optim.lr=0.003",
                        "sft.optim.warmup_steps=5", "sft.max_examples=400", f"sft.data=[{data}]"]
    (r,) = run_workers(sft_workers.cold_start_learning, 1, CONFIG, overrides, 16)
    run_dir, meta = tmp_path / "cold", r["meta"]
    assert meta["steps"] == 100 and meta["examples"] == 400 and meta["dropped_too_long"] == 0
    assert json.loads((run_dir / "sft_meta.json").read_text()) == meta
    assert meta["data"][0]["sha256"] == json.loads(data.with_suffix(".provenance.json").read_text())["sha256"]
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 101))
    assert all(m["tokens"] > 0 and m["lr"] > 0 for m in metrics)
    first, last = metrics[0]["loss"], metrics[-1]["loss"]
    assert last < first / 3, (first, last)  # from ~ln(vocab) = 5.8
    assert (run_dir / "tokenizer.json").is_file() and any((run_dir / "weights").iterdir())
    # random weights never emit two 15-byte markers, a reasoning and an <answer> tag in that order
    # (each marker alone is ~1e-37 likely per position at uniform odds); after 100 SFT steps (two
    # epochs; seeds 0-4 and 1234 all gave 1.0, while one epoch gave 0.0 or 1.0 by seed) greedy
    # decoding writes the form on most held-out prompts
    assert r["before"]["format"] == 0.0, r["before"]["example"]
    assert r["after"]["format"] >= 0.75, r["after"]["example"]
