"""Prompt templates: the R1-Zero paper's (default), a short one for tiny models, or a chat template.

The R1-Zero template costs ~300 characters per prompt, which a character-level CPU model pays in
every rollout; ``kind: short`` keeps only the roles. Completions start right after the prompt
(with " <think>" for the R1-Zero and short templates).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

from r1hpc.config import ConfigError

# DeepSeek-R1 paper, Table 1, with "prompt" replaced by the question.
R1_ZERO_PREFIX = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user "
    "with the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>. User: "
)
R1_ZERO_SUFFIX = ". Assistant:"
SHORT_PREFIX = "User: "
SHORT_SUFFIX = "\nAssistant:"


@dataclasses.dataclass
class TemplateConfig:
    """``chat_template`` is Jinja source (as in a tokenizer_config.json); with ``kind: chat`` and
    none here, the tokenizer's own is used, else a built-in ChatML."""

    kind: Literal["r1_zero", "short", "chat"] = "r1_zero"
    chat_template: str | None = None
    system_prompt: str | None = None

    def validate(self) -> None:
        if self.kind != "chat" and (self.chat_template is not None or self.system_prompt is not None):
            raise ConfigError(f"chat_template and system_prompt apply only to kind 'chat', not {self.kind!r}")


def render_prompt(question: str, cfg: TemplateConfig, chat_template: str | None = None, **special: Any) -> str:
    """The text a model is given for ``question``. ``chat_template`` is the tokenizer's (used when
    the config names none); ``special`` are template variables such as ``bos_token``."""
    if cfg.kind == "r1_zero":
        return R1_ZERO_PREFIX + question + R1_ZERO_SUFFIX
    if cfg.kind == "short":
        return SHORT_PREFIX + question + SHORT_SUFFIX
    messages = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + [
        {"role": "user", "content": question}
    ]
    source = cfg.chat_template or chat_template
    return render_chat(messages, source, **special) if source else chatml(messages)


def chatml(messages: list[dict[str, str]]) -> str:
    """ChatML with the assistant turn opened: the fallback when no chat template is known."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def render_chat(messages: list[dict[str, str]], source: str, **special: Any) -> str:
    """Render a Hugging Face style Jinja chat template with the generation prompt added, in a
    sandbox (templates come with downloaded checkpoints)."""
    try:
        from jinja2 import TemplateError
    except ImportError as e:
        raise ConfigError("a Jinja chat template needs the jinja2 package (pip install jinja2)") from e
    try:
        return compiled_chat_template(source).render(messages=messages, add_generation_prompt=True, **special)
    except TemplateError as e:
        raise ConfigError(f"chat template: {e}") from e


@functools.lru_cache(maxsize=8)
def compiled_chat_template(source: str):
    """The sandboxed Jinja template for ``source``, compiled once: Jinja turns a template into Python
    code, which costs more than rendering it, and a rollout renders the same template per prompt."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_template_exception
    return env.from_string(source)


def _raise_template_exception(message: str) -> None:
    raise ConfigError(f"chat template: {message}")
