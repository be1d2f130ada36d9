"""Rejection sampling (R1's SFT data): keep the correct samples of a rollout and drop the unreadable ones.

Input is a merged rollout (``r1hpc rollout`` array + ``r1hpc merge``: k scored samples per prompt
from one checkpoint); output is an SFT JSONL dataset, one kept sample per line with its provenance
(checkpoint, prompt id, sample index, rewards). Distillation uses the same path to turn a teacher's
samples into the student's data. Each sample is counted under the first filter that drops it.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Iterable

from r1hpc.config import ConfigError
from r1hpc.data.jsonl import provenance_path, write_jsonl
from r1hpc.rewards.language import language_share
from r1hpc.rewards.spans import select_span

# the reasons a sample is dropped, in the order the filters run
REASONS = ("score", "format", "language", "paragraph", "code_block", "duplicate", "max_per_prompt")
_FENCE_RE = re.compile(r"^[ \t]*```", re.M)
_BLANK_LINE_RE = re.compile(r"\n[ \t]*\n")


@dataclasses.dataclass
class RejectionConfig:
    """Which samples become SFT data. A sample is correct when ``scores[score_key] >= min_accuracy``
    ("accuracy" for rule-checked sources, e.g. "judge" for a source scored by the generative judge).
    Each readability filter can be switched off (``language: false``, ``max_paragraph_chars: 0``, ...)."""

    score_key: str = "accuracy"
    min_accuracy: float = 1.0
    # drop samples whose "format" reward (when their source scores one) is below this: a correct
    # answer in the wrong form (e.g. not in the cold-start form) is not SFT data; 0 = off
    min_format: float = 1.0
    # kept samples per prompt, the first ones in sample order; 0 = all
    max_per_prompt: int = 0
    # drop chains of thought (the think span) whose share in rewards.language is below min_language_share
    language: bool = True
    min_language_share: float = 0.95
    # drop responses with a paragraph (text between blank lines) longer than this; 0 = off
    max_paragraph_chars: int = 2000
    # drop responses with fenced ``` code blocks unless the prompt's data_source is in code_sources
    code_blocks: bool = True
    code_sources: list[str] = dataclasses.field(default_factory=lambda: ["humaneval"])
    # drop repeats of a prompt's response after whitespace normalisation
    dedupe: bool = True

    def validate(self) -> None:
        if not self.score_key:
            raise ConfigError("key 'score_key' must name a reward key, e.g. 'accuracy' or 'judge'")
        if self.max_per_prompt < 0 or self.max_paragraph_chars < 0:
            raise ConfigError("max_per_prompt and max_paragraph_chars must be >= 0 (0 = no limit)")
        if not 0.0 <= self.min_language_share <= 1.0:
            raise ConfigError(f"min_language_share must be in [0, 1], got {self.min_language_share}")


def longest_paragraph(text: str) -> int:
    """Characters in the longest blank-line-separated paragraph (surrounding whitespace excluded)."""
    return max((len(p.strip()) for p in _BLANK_LINE_RE.split(text)), default=0)


def has_code_block(text: str) -> bool:
    """A line opening with ``` (a fenced block, closed or not)."""
    return _FENCE_RE.search(text) is not None


def normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


def _drop_reason(response: str, score: dict, data_source: str, cfg: RejectionConfig, language: str,
                 starts_in_think: bool) -> str | None:
    if score[cfg.score_key] < cfg.min_accuracy:
        return "score"
    if score.get("format", cfg.min_format) < cfg.min_format:
        return "format"
    if cfg.language and language_share(select_span(response, "think", starts_in_think=starts_in_think),
                                       language) < cfg.min_language_share:
        return "language"
    if cfg.max_paragraph_chars and longest_paragraph(response) > cfg.max_paragraph_chars:
        return "paragraph"
    if cfg.code_blocks and data_source not in cfg.code_sources and has_code_block(response):
        return "code_block"
    return None


def _check_record(r: dict, cfg: RejectionConfig) -> None:
    missing = [k for k in ("id", "data_source", "question", "answer", "responses", "scores") if k not in r]
    if missing:
        raise ValueError(f"rollout record {r.get('index', '?')} lacks {missing}: not a rollout merge")
    if len(r["responses"]) != len(r["scores"]):
        raise ValueError(f"prompt {r['id']!r}: {len(r['responses'])} responses but {len(r['scores'])} scores")
    for s in r["scores"]:
        if cfg.score_key not in s:
            raise ValueError(f"prompt {r['id']!r} (data_source {r['data_source']!r}) has no {cfg.score_key!r} "
                             f"score (it has {sorted(s)}); set rejection.score_key to the key its rewards report")


def filter_samples(records: Iterable[dict], cfg: RejectionConfig, weights: str, *, language: str = "en",
                   starts_in_think: bool = False) -> tuple[list[dict], dict[str, Any]]:
    """Rollout records (index, id, data_source, question, answer, responses, scores) -> the kept
    SFT rows and the counts: samples dropped per reason, kept/total per data_source, prompts with
    a kept sample. ``language`` and ``starts_in_think`` are the run's rewards settings."""
    cfg.validate()
    rows: list[dict] = []
    dropped = dict.fromkeys(REASONS, 0)
    per_source: dict[str, dict[str, int]] = {}
    prompts = prompts_kept = samples = 0
    for r in records:
        _check_record(r, cfg)
        prompts += 1
        counts = per_source.setdefault(r["data_source"], {"kept": 0, "total": 0})
        seen: set[str] = set()
        kept_here = 0
        for j, (response, score) in enumerate(zip(r["responses"], r["scores"])):
            samples += 1
            counts["total"] += 1
            reason = _drop_reason(response, score, r["data_source"], cfg, language, starts_in_think)
            if reason is None and cfg.dedupe:
                key = normalise_whitespace(response)
                reason = "duplicate" if key in seen else None
                seen.add(key)
            if reason is None and cfg.max_per_prompt and kept_here >= cfg.max_per_prompt:
                reason = "max_per_prompt"
            if reason is not None:
                dropped[reason] += 1
                continue
            kept_here += 1
            counts["kept"] += 1
            rows.append({"question": r["question"], "response": response, "answer": r["answer"], "id": r["id"],
                         "data_source": r["data_source"], "sample_index": j, "rewards": dict(score),
                         "checkpoint": weights})
        prompts_kept += kept_here > 0
    stats = {"checkpoint": weights, "samples": samples, "kept": len(rows), "prompts": prompts,
             "prompts_with_kept": prompts_kept, "dropped": dropped,
             "per_source": dict(sorted(per_source.items())), "config": dataclasses.asdict(cfg)}
    return rows, stats


def load_rollout(samples_dir: str | Path) -> tuple[list[dict], str]:
    """The records and checkpoint of ``<samples_dir>/merged.json`` written by ``r1hpc merge``."""
    from r1hpc.eval.shard_io import MERGED

    path = Path(samples_dir) / MERGED
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run the rollout array, then `r1hpc merge {samples_dir}`)")
    try:
        merged = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(merged, dict) or merged.get("kind") != "rollout" or "records" not in merged:
        kind = merged.get("kind") if isinstance(merged, dict) else type(merged).__name__
        raise ValueError(f"{path}: not a rollout merge (kind {kind!r}); rejection sampling reads `r1hpc rollout` output")
    return merged["records"], merged["weights"]


def write_dataset(rows: list[dict], stats: dict, out_path: str | Path) -> Path:
    """``out_path`` (JSONL, one row per line) and its provenance file holding ``stats``, each atomic."""
    return write_jsonl(out_path, rows, {"kind": "rejection_sampling", "checkpoint": stats["checkpoint"], "stats": stats})


def read_stats(out_path: str | Path) -> dict:
    """The counts a dataset written by :func:`write_dataset` was made with."""
    return json.loads(provenance_path(out_path).read_text())["stats"]


def format_stats(stats: dict) -> str:
    """One line for the log: kept / total, prompts covered, drops by reason."""
    drops = ", ".join(f"{k} {v}" for k, v in stats["dropped"].items() if v) or "none"
    return (f"kept {stats['kept']} of {stats['samples']} samples; {stats['prompts_with_kept']} of "
            f"{stats['prompts']} prompts have one; dropped: {drops}")


def run_rejection(cfg, samples_dir: str | Path, out_path: str | Path) -> dict:
    """``r1hpc reject``: filter a merged rollout with ``cfg.rejection`` and write the dataset."""
    records, weights = load_rollout(samples_dir)
    rows, stats = filter_samples(records, cfg.rejection, weights, language=cfg.rewards.language,
                                 starts_in_think=cfg.rewards.format.starts_in_think)
    write_dataset(rows, stats, out_path)
    return stats
