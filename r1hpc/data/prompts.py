"""Where a run's prompts come from: the synthetic task mix (default) or JSONL problem files such as
GSM8K in ../shared/data. Files are split like the mix, by a hash of each problem's text
(:func:`r1hpc.data.mix.is_heldout`), so no training stream ever holds a held-out problem."""
from __future__ import annotations

import dataclasses
import random
from functools import partial
from pathlib import Path
from typing import Iterator

from r1hpc.config import ConfigError
from r1hpc.data.jsonl import KNOWN_SOURCES, load_problems, load_shared
from r1hpc.data.mix import Split, heldout_set, is_heldout, stream
from r1hpc.data.problem import Problem


@dataclasses.dataclass
class PromptFilesConfig:
    """``files``: shared math sets by name ("gsm8k", "math500", ...) or paths to JSONL files; empty
    means the synthetic mix (``data.mix``). ``heldout_fraction`` of each file (by hash) is kept for
    evaluation; the training stream goes over the rest in a fresh shuffled order every epoch."""

    files: list[str] = dataclasses.field(default_factory=list)
    heldout_fraction: float = 0.1
    # share of prompts drawn from the synthetic mix (data.mix) alongside the files: R1's RL for all
    # scenarios mixes reasoning prompts (rule rewards) with general ones (model-based rewards)
    synthetic_share: float = 0.0

    def validate(self) -> None:
        if not 0 < self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if not 0 <= self.synthetic_share < 1 or (self.synthetic_share and not self.files):
            raise ConfigError(f"synthetic_share must be in [0, 1) and needs files to mix with, got "
                              f"{self.synthetic_share} with files {self.files}")
        for name in self.files:
            if name not in KNOWN_SOURCES and not name.endswith(".jsonl"):
                raise ConfigError(f"files: {name!r} is neither a shared set ({', '.join(KNOWN_SOURCES)}) nor a "
                                  ".jsonl path")


def load_named(name: str) -> list[Problem]:
    """A shared set by name, or a JSONL file by path (errors name the file and line)."""
    if name.endswith(".jsonl"):
        if not Path(name).is_file():
            raise FileNotFoundError(f"{name}: no such problem file")
        return load_problems(name)
    return load_shared(name)


def file_split(cfg: PromptFilesConfig, split: Split, files: list[str] | None = None) -> list[Problem]:
    """Every problem of ``files`` (default: all configured) in ``split``, in file order."""
    want = split == "heldout"
    return [p for name in (files or cfg.files) for p in load_named(name)
            if is_heldout(p, cfg.heldout_fraction) == want]


def file_stream(cfg: PromptFilesConfig, seed: int) -> Iterator[Problem]:
    """Endless training problems: each epoch the training split in a new order fixed by ``seed``."""
    problems = file_split(cfg, "train")
    if not problems:
        raise ConfigError(f"data.prompts.files {cfg.files}: no training problems")
    rng = random.Random(f"prompts:{seed}")
    while True:
        order = list(problems)
        rng.shuffle(order)
        yield from order


def training_stream(data, seed: int) -> Iterator[Problem]:
    """The GRPO prompt stream of a run's ``data`` section (a :class:`r1hpc.data.DataConfig`)."""
    if not data.prompts.files:
        return stream(data.mix, "train", seed=seed)
    if not data.prompts.synthetic_share:
        return file_stream(data.prompts, seed)
    return _mixed(stream(data.mix, "train", seed=seed), file_stream(data.prompts, seed),
                  data.prompts.synthetic_share, random.Random(f"sources:{seed}"))


def training_problems(data, seed: int):
    """The GRPO prompt stream as a resumable iterator (``state_dict``/``load_state_dict``): the
    curriculum's when ``data.curriculum`` is on, else a cursor over ``training_stream``."""
    if data.curriculum.kind != "none":
        from r1hpc.data.curriculum import CurriculumStream

        return CurriculumStream(data.mix, data.curriculum, seed)
    from r1hpc.checkpoint.cursor import StreamCursor

    return StreamCursor(partial(training_stream, data, seed=seed))


def _mixed(synthetic: Iterator[Problem], files: Iterator[Problem], share: float, rng: random.Random) -> Iterator[Problem]:
    while True:
        yield next(synthetic) if rng.random() < share else next(files)


def run_data_sources(data) -> set[str]:
    """Every ``data_source`` a run's prompts can carry (the mix's tasks and the files' sources)."""
    sources = set(data.mix.tasks) if not data.prompts.files or data.prompts.synthetic_share else set()
    return sources | {p.data_source for name in data.prompts.files for p in load_named(name)}


def heldout_problems(data, n: int) -> list[Problem]:
    """The first ``n`` held-out problems of the run's prompt source (the same ones for every seed)."""
    if not data.prompts.files:
        return heldout_set(data.mix, n)
    n_synthetic = round(n * data.prompts.synthetic_share)
    synthetic = heldout_set(data.mix, n_synthetic) if n_synthetic else []
    return synthetic + file_split(data.prompts, "heldout")[:n - n_synthetic]
