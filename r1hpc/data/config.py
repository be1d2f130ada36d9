"""The data section of a run config: one place for the mix (or prompt files), corpus, template and tokenizer."""
from __future__ import annotations

import dataclasses

from r1hpc.data.corpus import CorpusConfig
from r1hpc.data.mix import TaskMixConfig
from r1hpc.data.prompts import PromptFilesConfig
from r1hpc.data.templates import TemplateConfig
from r1hpc.data.tokenizer import TokenizerConfig


@dataclasses.dataclass
class DataConfig:
    mix: TaskMixConfig = dataclasses.field(default_factory=TaskMixConfig)
    prompts: PromptFilesConfig = dataclasses.field(default_factory=PromptFilesConfig)
    corpus: CorpusConfig = dataclasses.field(default_factory=CorpusConfig)
    template: TemplateConfig = dataclasses.field(default_factory=TemplateConfig)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
