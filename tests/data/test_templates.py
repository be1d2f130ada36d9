"""Prompt templates: the paper's text verbatim, the short variant, and chat templates."""
import pytest

from r1hpc.config import ConfigError, from_dict
from r1hpc.data.templates import TemplateConfig, chatml, render_prompt

# DeepSeek-R1 paper, Table 1, typed out independently of the module under test.
PAPER = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: prompt. Assistant:"
)


def test_r1_zero_is_the_paper_text_and_the_default():
    assert TemplateConfig().kind == "r1_zero"
    assert render_prompt("prompt", TemplateConfig()) == PAPER
    q = "What is {x} in \\frac{1}{2}?"  # braces and backslashes pass through untouched
    assert render_prompt(q, TemplateConfig()) == PAPER.replace("User: prompt.", f"User: {q}.")


def test_short_template():
    assert render_prompt("Compute 1 + 2", from_dict(TemplateConfig, {"kind": "short"})) == "User: Compute 1 + 2\nAssistant:"


def test_chat_falls_back_to_chatml():
    cfg = TemplateConfig(kind="chat", system_prompt="Think first.")
    assert render_prompt("Hi", cfg) == (
        "<|im_start|>system\nThink first.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert chatml([{"role": "user", "content": "Hi"}]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


JINJA = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<|User|>{{ m['content'] }}"
    "{% elif m['role'] == 'system' %}{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|>{% endif %}"
)


def test_jinja_chat_template_from_tokenizer_or_config():
    cfg = TemplateConfig(kind="chat")
    assert render_prompt("Hi", cfg, chat_template=JINJA, bos_token="<s>") == "<s><|User|>Hi<|Assistant|>"
    override = TemplateConfig(kind="chat", chat_template="{{ messages[0]['content'] | upper }}")
    assert render_prompt("hi", override, chat_template=JINJA) == "HI"


def test_a_template_is_compiled_once_for_many_prompts(monkeypatch):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from r1hpc.data import templates

    templates.compiled_chat_template.cache_clear()
    compiled = []
    original = ImmutableSandboxedEnvironment.from_string
    monkeypatch.setattr(ImmutableSandboxedEnvironment, "from_string",
                        lambda self, source, *a, **k: compiled.append(source) or original(self, source, *a, **k))
    cfg = TemplateConfig(kind="chat")
    prompts = [render_prompt(f"Q{i}", cfg, chat_template=JINJA, bos_token="<s>") for i in range(5)]
    assert prompts == [f"<s><|User|>Q{i}<|Assistant|>" for i in range(5)]
    assert compiled == [JINJA]


def test_chat_template_errors_are_config_errors():
    bad = TemplateConfig(kind="chat", chat_template="{{ raise_exception('no system role') }}")
    with pytest.raises(ConfigError, match="no system role"):
        render_prompt("Hi", bad)
    with pytest.raises(ConfigError, match="chat template"):
        render_prompt("Hi", TemplateConfig(kind="chat", chat_template="{% for %}"))
    with pytest.raises(ConfigError):  # the sandbox refuses attribute escapes
        render_prompt("Hi", TemplateConfig(kind="chat", chat_template="{{ messages.__class__.__mro__ }}"))


def test_chat_options_only_with_chat_kind():
    with pytest.raises(ConfigError, match="kind 'chat'"):
        from_dict(TemplateConfig, {"kind": "short", "system_prompt": "x"})
    with pytest.raises(ConfigError):
        from_dict(TemplateConfig, {"kind": "qwen"})
