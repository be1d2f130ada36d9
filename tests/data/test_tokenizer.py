"""The BPE trained on the synthetic corpus, and loading a real model's tokenizer files."""
import json
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1hpc.config import ConfigError, from_dict
from r1hpc.data.corpus import CorpusConfig, build_corpus
from r1hpc.data.mix import TaskMixConfig
from r1hpc.data.templates import TemplateConfig, render_prompt
from r1hpc.data.tokenizer import BOS, EOS, PAD, TAGS, TextTokenizer, TokenizerConfig, build_tokenizer, train_bpe

TASK_ALPHABET = "0123456789+-*/=().,:? \nabcdefghijklmnopqrstuvwxyzACSUXyz<>"
PIECES = st.sampled_from([*TAGS, " ", "\n", "User:", "Assistant:", "carry", "write"])


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(TaskMixConfig(), CorpusConfig(size=2000), TemplateConfig())


@pytest.fixture(scope="module")
def tok(corpus):
    return build_tokenizer(TokenizerConfig(vocab_size=1024), corpus)


def test_tags_and_specials_are_single_tokens(tok):
    for t in (*TAGS, PAD, BOS, EOS):
        assert tok.encode(t) == [tok.token_id(t)]
    assert tok.encode(" <think> 1 </think> <answer> 2 </answer>") == [
        tok.token_id(t) for t in ["Ġ", "<think>", "Ġ", "1", "Ġ", "</think>", "Ġ", "<answer>", "Ġ", "2", "Ġ", "</answer>"]
    ]
    assert len({tok.pad_id, tok.eos_id, tok.bos_id}) == 3
    assert tok.stop_token_ids == [tok.eos_id, tok.token_id("</answer>")]


def test_training_is_deterministic(tok, corpus):
    assert build_tokenizer(TokenizerConfig(vocab_size=1024), corpus).tokenizer.to_str() == tok.tokenizer.to_str()


def test_vocab_size_is_bounded_and_digits_are_split(tok):
    assert 300 < tok.vocab_size <= 1024
    assert len(tok.encode("12345")) == 5
    assert train_bpe(["aaaa bbbb"] * 5, vocab_size=270).vocab_size <= 270


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(alphabet=TASK_ALPHABET) | st.lists(PIECES | st.text(alphabet=TASK_ALPHABET, max_size=5)).map("".join))
def test_round_trip_on_task_text(tok, text):
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=200, deadline=None, database=None)
@given(st.text())
def test_round_trip_on_any_unicode(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_corpus_round_trips_and_splits_cleanly_at_the_prompt(tok, corpus):
    """Prompt and completion tokenized apart equal the whole tokenized: loss masks and rollouts
    can concatenate ids."""
    for prompt, completion in corpus[:500]:
        assert tok.decode(tok.encode(prompt + completion)) == prompt + completion
        assert tok.encode(prompt) + tok.encode(completion) == tok.encode(prompt + completion)
        assert len(tok.encode(completion)) < len(completion)


def test_save_and_load(tok, tmp_path):
    path = tok.save(tmp_path / "tok")
    again = TextTokenizer.load(path.parent)
    text = "User: Compute 12 + 34\nAssistant: <think> 2+4=6 </think> <answer> 46 </answer>"
    assert again.encode(text) == tok.encode(text)
    assert (again.pad_id, again.eos_id, again.bos_id, again.vocab_size) == (tok.pad_id, tok.eos_id, tok.bos_id, tok.vocab_size)
    bare = tmp_path / "bare.json"  # a lone tokenizer.json: our token names are assumed
    shutil.copy(path, bare)
    assert (TextTokenizer.load(bare).eos_id, TextTokenizer.load(bare).bos_id) == (tok.eos_id, tok.bos_id)


def test_load_a_real_model_layout(tok, tmp_path):
    """A model directory as Hugging Face writes it: special tokens as objects, a chat template."""
    model = tmp_path / "model"
    tok.save(model)
    template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}{% if add_generation_prompt %}{{ eos_token }}{% endif %}"
    (model / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": {"content": "<bos>"}, "bos_token": None, "chat_template": [{"name": "default", "template": template}]})
    )
    real = TextTokenizer.load(model)
    assert real.eos_id == real.pad_id == tok.bos_id and real.bos_id is None
    assert render_prompt("Hi", TemplateConfig(kind="chat"), real.chat_template, eos_token=real.eos_token) == "[Hi]<bos>"
    assert TextTokenizer.load(model / "tokenizer.json").chat_template == template


def test_chat_template_from_its_jinja_file(tok, tmp_path):
    """transformers >= 4.43 saves the chat template as chat_template.jinja beside tokenizer_config.json."""
    model = tmp_path / "model"
    tok.save(model)
    (model / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    template = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}"
    (model / "chat_template.jinja").write_text(template)
    assert TextTokenizer.load(model).chat_template == template
    (model / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "chat_template": "inline"}))
    assert TextTokenizer.load(model).chat_template == "inline"  # the config's own wins, as in transformers


def test_load_errors(tok, tmp_path):
    with pytest.raises(FileNotFoundError):
        TextTokenizer.load(tmp_path / "missing")
    tok.save(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    with pytest.raises(ValueError, match="not in the vocabulary.*tokenizer_config.json"):
        TextTokenizer.load(tmp_path)


def test_config():
    with pytest.raises(ConfigError, match="vocab_size"):
        from_dict(TokenizerConfig, {"vocab_size": 100})
    with pytest.raises(ValueError, match="corpus"):
        build_tokenizer(TokenizerConfig())


def test_a_configured_tokenizer_must_be_the_bases(tmp_path):
    from r1hpc.config import ConfigError
    from r1hpc.data.tokenizer import train_bpe
    from r1hpc.model.base import prepare_tokenizer
    from r1hpc.run_config import load_run_config

    texts = ["1 + 2 = 3", "4 * 5 = 20", "the answer is 7"] * 20
    train_bpe(texts, vocab_size=300).save(tmp_path / "base")
    train_bpe(texts + ["zebra quagga okapi"] * 20, vocab_size=300).save(tmp_path / "other")
    overrides = ["data.corpus.size=50", f"pretrain.base_dir={tmp_path / 'base'}"]
    same = load_run_config(None, [*overrides, f"data.tokenizer.path={tmp_path / 'base'}"])
    assert prepare_tokenizer(same, tmp_path / "base")[0].vocab_size == train_bpe(texts, vocab_size=300).vocab_size
    other = load_run_config(None, [*overrides, f"data.tokenizer.path={tmp_path / 'other'}"])
    with pytest.raises(ConfigError, match=r"data.tokenizer.path: .*other is not the tokenizer of the base"):
        prepare_tokenizer(other, tmp_path / "base")
    with pytest.raises(ConfigError, match=r"section 'data.tokenizer': key 'path': no tokenizer.json at .*missing"):
        load_run_config(None, [f"data.tokenizer.path={tmp_path / 'missing'}"])
