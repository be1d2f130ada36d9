"""The data section loads from YAML like every other section, with errors naming the key."""
import pytest

from r1hpc.config import ConfigError, load_config
from r1hpc.data.config import DataConfig


def test_yaml_section_with_overrides(tmp_path):
    path = tmp_path / "data.yaml"
    path.write_text(
        "mix:\n  tasks: [arithmetic, countdown]\n  weights: [2, 1]\n  difficulty: {countdown: 3}\n"
        "corpus:\n  flaw_rate: 0.7\ntemplate:\n  kind: short\n"
    )
    cfg = load_config(path, ["tokenizer.vocab_size=512", "mix.options.arithmetic.ops=[+, '-']"], cls=DataConfig)
    assert cfg.mix.weights == [2.0, 1.0] and cfg.mix.difficulty == {"countdown": 3}
    assert cfg.mix.options == {"arithmetic": {"ops": ["+", "-"]}}
    assert (cfg.corpus.flaw_rate, cfg.template.kind, cfg.tokenizer.vocab_size) == (0.7, "short", 512)


def test_mistakes_name_file_and_key(tmp_path):
    path = tmp_path / "data.yaml"
    path.write_text("mix:\n  seed: 1\n  heldout_fraction: 2\n")
    with pytest.raises(ConfigError, match=r"data.yaml: section 'mix': heldout_fraction"):
        load_config(path, cls=DataConfig)
    path.write_text("corpus:\n  flaw: 0.5\n")
    with pytest.raises(ConfigError, match=r"data.yaml:2: key 'corpus.flaw'.*did you mean 'corpus.flaw_rate'"):
        load_config(path, cls=DataConfig)
