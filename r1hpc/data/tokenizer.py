"""Tokenizers: a small byte-level BPE trained here on the synthetic corpus, or a real model's
local ``tokenizer.json`` (with its chat template from ``tokenizer_config.json``). Nothing is
fetched from a hub.

The tags <think> </think> <answer> </answer> are single tokens in the trained BPE, so format
rewards and stopping at </answer> see them as one step; digits are split one per token, so
the model sees every column of the worked additions.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from r1hpc.config import ConfigError

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
STOP_STRINGS = ("</answer>",)
_MIN_VOCAB = 256 + 3 + len(TAGS)  # every byte, the special tokens and the tags


@dataclasses.dataclass
class TokenizerConfig:
    """``path``: a tokenizer.json or a directory holding one (a real model's, or one saved by
    :meth:`TextTokenizer.save`); None trains a byte-level BPE on the synthetic corpus."""

    path: str | None = None
    vocab_size: int = 1024
    min_frequency: int = 2
    train_examples: int = 5000
    split_digits: bool = True
    # more single tokens beside the tags, e.g. R1's cold-start marker "|special_token|" (the R1
    # pipeline's cold start teaches a base that never saw it to write it: one token, not fifteen)
    extra_tokens: list[str] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        if not _MIN_VOCAB <= self.vocab_size <= 1 << 20:
            raise ConfigError(f"vocab_size must be in [{_MIN_VOCAB}, {1 << 20}], got {self.vocab_size}")
        if self.min_frequency < 1 or self.train_examples < 1:
            raise ConfigError("min_frequency and train_examples must be >= 1")
        if self.path and not (Path(self.path).is_file() or (Path(self.path) / "tokenizer.json").is_file()):
            raise ConfigError(f"key 'path': no tokenizer.json at {self.path}")
        if any(not t or t in (PAD, BOS, EOS, *TAGS) for t in self.extra_tokens):
            raise ConfigError(f"extra_tokens must be non-empty and differ from the built-in ones, got {self.extra_tokens}")


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


class TextTokenizer:
    """What rollout and training need from a tokenizer, the same for ours and a real model's."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        eos_token: str,
        pad_token: str | None = None,
        bos_token: str | None = None,
        chat_template: str | None = None,
    ):
        self.tokenizer = tokenizer
        self.eos_token, self.pad_token, self.bos_token = eos_token, pad_token, bos_token
        self.chat_template = chat_template
        self.eos_id = self._require(eos_token)
        self.pad_id = self._require(pad_token) if pad_token else self.eos_id
        self.bos_id = self._require(bos_token) if bos_token else None

    def _require(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"token {token!r} is not in the vocabulary")
        return token_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` alone: no BOS/EOS added (the caller decides)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Exact inverse of :meth:`encode` (special tokens are kept, not dropped)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def token_id(self, token: str) -> int | None:
        """The id of a single-token string, or None if it takes several tokens."""
        return self.tokenizer.token_to_id(token)

    @property
    def stop_token_ids(self) -> list[int]:
        """EOS and each stop string that is one token: generation may end at any of them."""
        ids = [self.eos_id] + [self.token_id(s) for s in STOP_STRINGS]
        return list(dict.fromkeys(i for i in ids if i is not None))

    def save(self, directory: str | Path) -> Path:
        """Write tokenizer.json and tokenizer_config.json (the layout :meth:`load` reads)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(out / "tokenizer.json"))
        config = {"eos_token": self.eos_token, "pad_token": self.pad_token, "bos_token": self.bos_token}
        if self.chat_template:
            config["chat_template"] = self.chat_template
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
        return out / "tokenizer.json"

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        """Load ``tokenizer.json`` (or a directory with one) and, if beside it, tokenizer_config.json
        for the special tokens and chat template (or chat_template.jinja, as transformers saves it).
        Without a config, our own token names are used."""
        p = Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {p}")
        config_file = file.with_name("tokenizer_config.json")
        if config_file.is_file():
            config = json.loads(config_file.read_text())
        else:
            config = {"eos_token": EOS, "pad_token": PAD, "bos_token": BOS}
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        jinja = file.with_name("chat_template.jinja")  # where transformers >= 4.43 saves it
        if template is None and jinja.is_file():
            template = jinja.read_text()
        eos = _token_text(config.get("eos_token"))
        if not eos:
            raise ValueError(f"{config_file}: no eos_token")
        try:
            return cls(
                Tokenizer.from_file(str(file)),
                eos_token=eos,
                pad_token=_token_text(config.get("pad_token")),
                bos_token=_token_text(config.get("bos_token")),
                chat_template=template,
            )
        except ValueError as e:
            raise ValueError(f"{file}: {e} (special tokens are read from {config_file.name} beside it)") from None


def train_bpe(texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2, split_digits: bool = True,
              extra_tokens: Iterable[str] = ()) -> TextTokenizer:
    """A byte-level BPE over ``texts`` with <pad> <bos> <eos>, the four tags and ``extra_tokens`` as
    single tokens."""
    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]) if split_digits else byte_level
    )
    tokenizer.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t in (PAD, BOS, EOS)]
    tags = [AddedToken(t, special=False, normalized=False) for t in (*TAGS, *extra_tokens)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials + tags,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return TextTokenizer(tokenizer, eos_token=EOS, pad_token=PAD, bos_token=BOS)


def build_tokenizer(cfg: TokenizerConfig, corpus: Iterable[tuple[str, str]] = ()) -> TextTokenizer:
    """Load ``cfg.path``, or train on the first ``cfg.train_examples`` (prompt, completion) pairs."""
    if cfg.path:
        return TextTokenizer.load(cfg.path)
    pairs = list(corpus)[: cfg.train_examples]
    if not pairs:
        raise ValueError("training a tokenizer needs a corpus (see r1hpc.data.corpus.build_corpus)")
    return train_bpe((p + c for p, c in pairs), cfg.vocab_size, cfg.min_frequency, cfg.split_digits, cfg.extra_tokens)
