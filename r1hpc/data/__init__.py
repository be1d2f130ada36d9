"""Problems, tasks, prompt templates, datasets and tokenizers."""
from r1hpc.data.config import DataConfig
from r1hpc.data.corpus import CorpusConfig, build_corpus, format_completion, oracle_accuracy, parse_answer, worked_solution
from r1hpc.data.jsonl import DatasetError, load_problems, load_shared, problem_record, shared_data_dir, write_jsonl
from r1hpc.data.mix import TaskMixConfig, heldout_set, is_heldout, stream, train_problems
from r1hpc.data.problem import Problem
from r1hpc.data.tasks import TASKS, Task, get_task
from r1hpc.data.templates import TemplateConfig, render_prompt
from r1hpc.data.tokenizer import TextTokenizer, TokenizerConfig, build_tokenizer, train_bpe

__all__ = [
    "TASKS",
    "CorpusConfig",
    "DataConfig",
    "DatasetError",
    "Problem",
    "Task",
    "TaskMixConfig",
    "TemplateConfig",
    "TextTokenizer",
    "TokenizerConfig",
    "build_corpus",
    "build_tokenizer",
    "format_completion",
    "get_task",
    "heldout_set",
    "is_heldout",
    "load_problems",
    "load_shared",
    "oracle_accuracy",
    "parse_answer",
    "problem_record",
    "render_prompt",
    "shared_data_dir",
    "stream",
    "train_bpe",
    "train_problems",
    "worked_solution",
    "write_jsonl",
]
