"""The data section of a run config: one place for the mix (or prompt files), corpus, template and tokenizer."""
from __future__ import annotations

import dataclasses

from r1hpc.config import ConfigError

from r1hpc.data.corpus import CorpusConfig
from r1hpc.data.curriculum import CurriculumConfig
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
    curriculum: CurriculumConfig = dataclasses.field(default_factory=CurriculumConfig)

    def validate(self) -> None:
        if self.curriculum.kind != "none":
            if self.prompts.files:
                raise ConfigError("data.curriculum re-weights the synthetic task mix; it does not apply to data.prompts.files")
            self.curriculum.check_tasks(len(self.mix.tasks))
