"""SFT datasets: JSONL lines ``{"question": str, "response": str, ...provenance}``, read strictly
(every bad line raises :class:`DatasetError` naming file:line), as the cold-start builder, rejection
sampling and distillation write them. The trainer renders ``question`` with the run's template;
``response`` is trained on as it is (plus EOS)."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from r1hpc.data.jsonl import DatasetError, read_record, require_strings

_REQUIRED = ("question", "response")


@dataclasses.dataclass(frozen=True)
class SFTExample:
    question: str
    response: str
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # provenance keys, kept as read
    origin: str = ""  # "file:line"


def load_sft_file(path: str | Path) -> list[SFTExample]:
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: SFT data file not found")
    examples = []
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                record = read_record(raw)
                require_strings(record, _REQUIRED)
            except ValueError as e:
                raise DatasetError(f"{p}:{lineno}: {e}") from None
            meta = {k: v for k, v in record.items() if k not in _REQUIRED}
            examples.append(SFTExample(record["question"], record["response"], meta, f"{p}:{lineno}"))
    if not examples:
        raise DatasetError(f"{p}: no examples")
    return examples


def load_sft_examples(paths: list[str]) -> list[SFTExample]:
    """Every example of every file, in order."""
    return [e for path in paths for e in load_sft_file(path)]


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
