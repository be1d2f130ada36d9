"""Problems, tasks, prompt templates, datasets and tokenizers."""
from r1hpc.data.problem import Problem

__all__ = ["Problem"]
