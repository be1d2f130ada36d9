"""JSONL problem files: strict reading (every bad line is reported by file:line, none is dropped
unnoticed) and writing with a provenance record beside the data.

Input format (../shared/data): ``{"id": str, "problem": str, "answer": str}`` per line; optional
``data_source`` (str) and ``extra`` (object); any other key is kept in ``Problem.extra``.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from r1hpc.data.problem import Problem

log = logging.getLogger(__name__)
KNOWN_SOURCES = ("gsm8k", "math500", "aime24", "amc23")
_REQUIRED = ("id", "problem", "answer")


class DatasetError(ValueError):
    """A malformed dataset line; the message starts with ``file:line:``."""


def source_from_filename(path: str | Path) -> str:
    """``gsm8k.jsonl`` or ``gsm8k_test.jsonl`` -> "gsm8k"; an unknown name -> its stem."""
    stem = Path(path).name.split(".")[0].lower()
    return next((s for s in KNOWN_SOURCES if stem.startswith(s)), stem)


def shared_data_dir() -> Path | None:
    """The shared math data: $R1HPC_SHARED_DATA, else the nearest shared/data above this checkout."""
    env = os.environ.get("R1HPC_SHARED_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    repo = Path(__file__).resolve().parents[2]
    return next((d / "shared" / "data" for d in repo.parents if (d / "shared" / "data").is_dir()), None)


def load_shared(name: str) -> list[Problem]:
    """One of the shared math sets by name ("gsm8k", "math500", "aime24", "amc23")."""
    directory = shared_data_dir()
    if directory is None or not (directory / f"{name}.jsonl").is_file():
        raise FileNotFoundError(f"{name}.jsonl not found: set R1HPC_SHARED_DATA to the folder holding it")
    return load_problems(directory / f"{name}.jsonl")


def read_record(raw: bytes) -> dict[str, Any]:
    """One line -> its JSON object; raises ValueError saying what is wrong (without the place)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise ValueError("empty line")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"bad JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    return record


def require_strings(record: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Each of ``keys`` present, a string and not blank; raises ValueError naming the first fault."""
    for key in keys:
        if key not in record:
            raise ValueError(f"missing key {key!r} (have: {', '.join(sorted(record)) or 'none'})")
        value = record[key]
        if not isinstance(value, str):
            raise ValueError(f"{key!r} must be a string, got {type(value).__name__} {value!r}")
        if not value.strip():
            raise ValueError(f"empty {key!r}")


def _parse_line(raw: bytes, data_source: str, seen: dict[str, int], lineno: int) -> Problem:
    """One line -> Problem; raises ValueError saying what is wrong (without the place)."""
    record = read_record(raw)
    require_strings(record, _REQUIRED)
    if record["id"] in seen:
        raise ValueError(f"duplicate id {record['id']!r} (first on line {seen[record['id']]})")
    source = record.get("data_source", data_source)
    extra = record.get("extra", {})
    if not isinstance(source, str) or not source:
        raise ValueError(f"'data_source' must be a non-empty string, got {source!r}")
    if not isinstance(extra, dict):
        raise ValueError(f"'extra' must be an object, got {type(extra).__name__}")
    rest = {k: v for k, v in record.items() if k not in (*_REQUIRED, "data_source", "extra")}
    seen[record["id"]] = lineno
    return Problem(id=record["id"], question=record["problem"], answer=record["answer"], data_source=source, extra={**extra, **rest})


def load_problems(path: str | Path, data_source: str | None = None, *, skip_invalid: bool = False) -> list[Problem]:
    """Every problem in ``path``. A bad line raises :class:`DatasetError` naming file:line and the
    fault; with ``skip_invalid`` bad lines are left out and counted in a warning instead."""
    p = Path(path)
    source = data_source or source_from_filename(p)
    problems: list[Problem] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                problems.append(_parse_line(raw, source, seen, lineno))
            except ValueError as e:
                if not skip_invalid:
                    raise DatasetError(f"{p}:{lineno}: {e}") from None
                errors.append(f"{p}:{lineno}: {e}")
    if errors:
        log.warning("skipped %d invalid line(s) of %s, first: %s", len(errors), p, "; ".join(errors[:3]))
    return problems


def problem_record(problem: Problem) -> dict[str, Any]:
    """A Problem as a line :func:`load_problems` reads back unchanged."""
    record: dict[str, Any] = {"id": problem.id, "problem": problem.question, "answer": problem.answer}
    record["data_source"] = problem.data_source
    if problem.extra:
        record["extra"] = problem.extra
    return record


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]], provenance: Mapping[str, Any]) -> Path:
    """Write ``records`` one per line and ``<name>.provenance.json`` beside them with ``provenance``
    (what made the data: config, checkpoint, sources, counts), time, count and sha256. Each file is
    either the old one or the complete new one, never a partial one (a job killed mid-write)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    digest, count = hashlib.sha256(), 0

    def lines():
        nonlocal count
        for record in records:
            line = json.dumps(record, ensure_ascii=False) + "\n"
            digest.update(line.encode("utf-8"))
            count += 1
            yield line

    write_atomic(p, lines())
    meta = {
        **provenance,
        "file": p.name,
        "records": count,
        "sha256": digest.hexdigest(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_atomic(provenance_path(p), [json.dumps(meta, indent=1, default=str) + "\n"])
    return p


def write_atomic(path: Path, lines: Iterable[str]) -> None:
    """Write to a temporary file beside ``path``, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a crash
    finally:
        os.close(fd)


def provenance_path(path: str | Path) -> Path:
    """``data/x.jsonl`` -> ``data/x.provenance.json``."""
    return Path(path).with_suffix(".provenance.json")
