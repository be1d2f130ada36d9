"""`r1hpc pretrain`: trains the recipe's base once, writes everything a GRPO run loads, and reuses
it (by fingerprint) instead of training again; a changed setting trains a new base."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.multiproc import run_workers
from tests.train.workers import lm_loss_vs_real_vocabulary

ROOT = Path(__file__).resolve().parents[2]
TINY = ["pretrain.steps=40", "data.corpus.size=400", "data.tokenizer.train_examples=400"]


def _pretrain(base_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "SLURM_", "MASTER_"))}
    proc = subprocess.run([sys.executable, "-m", "r1hpc.cli", "pretrain", str(ROOT / "configs/ci_r1zero.yaml"),
                           f"pretrain.base_dir={base_dir}", *TINY, *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_pretrain_writes_a_base_and_reuses_it(tmp_path):
    base = tmp_path / "base"
    first = _pretrain(base)
    meta = json.loads((base / "meta.json").read_text())
    assert meta["steps"] == 40 and meta["params"] > 0
    assert meta["final_loss"] < 3.0  # from ~ln(vocab) = 5.8 at the start: it did learn something
    assert (base / "tokenizer.json").is_file() and any((base / "weights").iterdir())
    assert "pretraining a weak base" in first.stdout
    again = _pretrain(base)
    assert f"[base] reusing {base}" in again.stdout
    changed = _pretrain(base, "pretrain.optim.lr=0.001")
    assert "pretraining a weak base" in changed.stdout
    assert json.loads((base / "meta.json").read_text())["fingerprint"] != meta["fingerprint"]


@pytest.mark.multiproc
def test_pretraining_loss_leaves_the_vocabulary_padding_out():
    """megatron pads a 100-token vocabulary to 128 rows; their logits must not enter the softmax."""
    (r,) = run_workers(lm_loss_vs_real_vocabulary, 1, 100)
    assert r["padded_vocab"] == 128
    assert r["lm_loss"] == pytest.approx(r["real"], rel=1e-5, abs=1e-6)
    assert abs(r["padded"] - r["real"]) > 1e-3, r  # the check can tell the two apart
