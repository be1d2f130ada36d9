"""`r1hpc eval` and `r1hpc rollout` (the pipeline's rejection and distillation stages) on a converted
SmolLM2-135M-Instruct: the shard builds the checkpoint's own architecture (not the recipe's model
keys) and renders prompts with the tokenizer's chat template. Without a system prompt SmolLM2's
template inserts its own ("... named SmolLM ..."), which the plain ChatML fallback would not."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.smollm2 import clean_env

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "smollm2_gsm8k.yaml"
ARCH = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "vocab_size",
        "tie_embeddings")


@pytest.mark.parametrize("kind", ["eval", "rollout"])
def test_shard_builds_the_converted_architecture_and_its_chat_template(smollm2_converted, tmp_path, kind):
    from r1hpc.data.templates import TemplateConfig, render_prompt
    from r1hpc.data.tokenizer import TextTokenizer

    out = tmp_path / kind
    proc = subprocess.run([sys.executable, "-m", "r1hpc.cli", kind, str(RECIPE), f"pretrain.base_dir={smollm2_converted}",
                           f"run.output_dir={tmp_path}", "data.template.system_prompt=null", "eval.num_problems=1",
                           "eval.samples_per_problem=1", "eval.max_new_tokens=2", "rollout.group_size=1",
                           "rollout.max_new_tokens=2", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=clean_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    shard = json.loads(next(out.glob("shard-*.json")).read_text())
    meta = json.loads((smollm2_converted / "convert.json").read_text())["model"]
    assert {k: shard["model"][k] for k in ARCH} == {k: meta[k] for k in ARCH}
    assert shard["weights"] == str(smollm2_converted / "weights")
    tok = TextTokenizer.load(smollm2_converted)
    (record,) = shard["records"]
    expected = render_prompt(record["question"], TemplateConfig(kind="chat"), tok.chat_template)
    assert shard["example_prompt"] == expected and "SmolLM" in expected
    assert len(record["responses"]) == 1
