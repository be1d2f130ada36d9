"""The synthetic verifiable tasks, by name (the name is also the Problem's data_source)."""
from r1hpc.data.tasks import arithmetic, countdown, linear_equation
from r1hpc.data.tasks.base import Solution, Task

TASKS: dict[str, Task] = {t.TASK.name: t.TASK for t in (arithmetic, countdown, linear_equation)}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}") from None


__all__ = ["TASKS", "Solution", "Task", "get_task"]
