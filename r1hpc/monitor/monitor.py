"""The aha-moment monitor: reads every GRPO rollout batch and returns metrics for the step.

Per batch (summed over data-parallel ranks): token entropy (mean, by quarter of the response,
share of high-entropy "forking" tokens), reflection markers (share of responses with one, count
per marker, accuracy with and without), entropy just before and after a marker, answer changes
after a marker and aha events (changed answer that ends correct), response-length growth, and
every ``attention_every`` steps the attention jump after markers on a few responses. Global rank
0 saves aha events and example responses under ``<run_dir>/monitor/``. Health alarms are judged
from all step metrics. ``timing/monitor_s`` is the monitor's own wall time in the step.
"""
from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from r1hpc.config import ConfigError
from r1hpc.data.problem import Problem
from r1hpc.device import HOST, collective_device
from r1hpc.monitor.aha import answer_changes
from r1hpc.monitor.alarms import AlarmConfig, HealthAlarms
from r1hpc.monitor.attention import attention_jump_sums
from r1hpc.monitor.entropy import POSITION_BINS, entropy_shift, position_bin_sums, top_forking_tokens
from r1hpc.monitor.markers import DEFAULT_MARKERS, TokenTexts, find_markers, marker_pattern, token_index
from r1hpc.rollout.generate import Sample


@dataclasses.dataclass
class MonitorConfig:
    """What the monitor looks for and how often it does the costlier parts."""

    enabled: bool = True
    markers: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_MARKERS))
    correct_key: str = "accuracy"  # the reward key that says a response is correct ...
    correct_threshold: float = 1.0  # ... when at least this
    forking_entropy: float = 0.672  # nats; a token above it is a forking token
    entropy_window: int = 8  # tokens before / after a marker for the entropy shift
    attention_every: int = 10  # steps between attention-jump measurements; 0 = off
    attention_samples: int = 4  # responses (with markers) per measurement, per data-parallel rank
    attention_window: int = 8  # queries before / after a marker
    attention_distance: int = 16  # a key at least this many tokens before the query is "distant"
    examples_every: int = 10  # steps between saved example responses; 0 = never
    examples_per_step: int = 4
    aha_examples_per_step: int = 4  # aha events saved per step (all are counted)
    alarms: AlarmConfig = dataclasses.field(default_factory=AlarmConfig)

    def validate(self) -> None:
        if not self.markers or any(not m.strip() for m in self.markers):
            raise ConfigError("markers must be a non-empty list of non-empty strings")
        if min(self.entropy_window, self.attention_window, self.attention_distance, self.attention_samples) < 1:
            raise ConfigError("entropy_window, attention_window, attention_distance and attention_samples must be >= 1")
        if min(self.attention_every, self.examples_every, self.examples_per_step, self.aha_examples_per_step) < 0:
            raise ConfigError("attention_every, examples_every, examples_per_step and aha_examples_per_step must be >= 0")
        self.alarms.validate()


@dataclasses.dataclass
class _Read:
    """One response as the monitor read it."""

    text: str
    hits: list  # MarkerHit
    token_pos: list[int]
    correct: bool
    changes: list  # AnswerChange


# the per-step sums reduced over data-parallel ranks, in this order
_SUMS = ("responses", "tokens", "entropy", "forking", "with_marker", "markers", "correct_with_marker",
         "correct_without_marker", "answer_changes", "aha", "shift_n", "shift_before", "shift_after")


class Monitor:
    def __init__(self, cfg: MonitorConfig, tokenizer, model: Optional[torch.nn.Module], run_dir: Optional[Path], *,
                 writer: bool, say=print) -> None:
        self.cfg, self.tok, self.model = cfg, tokenizer, model
        self.pattern = marker_pattern(cfg.markers)
        self.texts = TokenTexts(tokenizer)
        self.alarms = HealthAlarms(cfg.alarms)
        self.out_dir = Path(run_dir) / "monitor" if writer and run_dir is not None else None
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.say = say if writer else (lambda *a, **k: None)
        self.first_length: Optional[float] = None

    # ------------------------------------------------------------------ reading responses
    def read(self, sample: Sample, score: dict) -> _Read:
        ids = sample.response_ids[:-1] if sample.response_ids and sample.response_ids[-1] == self.tok.eos_id \
            else sample.response_ids
        text = self.tok.decode(ids)
        hits = find_markers(text, self.pattern, self.cfg.markers)
        ends = self.texts.token_ends(ids, text) if hits else []
        correct = float(score.get(self.cfg.correct_key, 0.0)) >= self.cfg.correct_threshold
        return _Read(text, hits, [token_index(ends, h.start) for h in hits], correct,
                     answer_changes(text, hits) if hits else [])

    # ------------------------------------------------------------------ the step
    def state_dict(self) -> dict:
        """What an exact resume needs: the length baseline and the alarms' history."""
        return {"first_length": self.first_length, "alarms": self.alarms.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.first_length = state["first_length"]
        self.alarms.load_state_dict(state["alarms"])

    def observe(self, step: int, samples: Sequence[Sample], scores: Sequence[dict], problems: Sequence[Problem],
                metrics: dict[str, float]) -> dict[str, float]:
        """Metrics for this step; ``problems`` holds one entry per sample, ``metrics`` the trainer's."""
        t0 = time.perf_counter()
        reads = [self.read(s, sc) for s, sc in zip(samples, scores)]
        sums = dict.fromkeys(_SUMS, 0.0)
        bins_sum = torch.zeros(POSITION_BINS, dtype=torch.float64, device=HOST)
        bins_n = torch.zeros(POSITION_BINS, dtype=torch.float64, device=HOST)
        per_marker = dict.fromkeys(self.cfg.markers, 0.0)
        for s, r in zip(samples, reads):
            ent = s.entropies.float()
            sums["responses"] += 1
            sums["tokens"] += len(ent)
            sums["entropy"] += float(ent.sum())
            sums["forking"] += float((ent > self.cfg.forking_entropy).sum())
            b_sum, b_n = position_bin_sums(ent)
            bins_sum += b_sum
            bins_n += b_n
            if r.hits:
                sums["with_marker"] += 1
                sums["correct_with_marker"] += r.correct
            else:
                sums["correct_without_marker"] += r.correct
            sums["markers"] += len(r.hits)
            for h, p in zip(r.hits, r.token_pos):
                per_marker[h.marker] += 1
                shift = entropy_shift(ent, p, self.cfg.entropy_window)
                if shift is not None:
                    sums["shift_n"] += 1
                    sums["shift_before"] += shift[0]
                    sums["shift_after"] += shift[1]
            sums["answer_changes"] += bool(r.changes)
            sums["aha"] += bool(r.changes) and r.correct
        flat = torch.tensor([sums[k] for k in _SUMS] + list(per_marker.values()), dtype=torch.float64, device=HOST)
        flat = _dp_sum(torch.cat([flat, bins_sum, bins_n]))
        total = dict(zip(_SUMS, flat[:len(_SUMS)].tolist()))
        marker_counts = flat[len(_SUMS):len(_SUMS) + len(per_marker)].tolist()
        bins_sum, bins_n = flat[-2 * POSITION_BINS:-POSITION_BINS], flat[-POSITION_BINS:]

        out = self._summarise(total, dict(zip(per_marker, marker_counts)), bins_sum, bins_n, metrics)
        if self.cfg.attention_every and step % self.cfg.attention_every == 0 and self.model is not None \
                and total["with_marker"]:  # the count is summed over DP ranks: every rank decides alike
            out.update(self._attention(step, samples, reads))
        self._save(step, samples, reads, problems)
        alarm_metrics, messages = self.alarms.update(step, {**metrics, **out})
        out.update(alarm_metrics)
        for m in messages:
            self.say(m)
        out["timing/monitor_s"] = time.perf_counter() - t0
        return out

    def _summarise(self, t: dict, per_marker: dict, bins_sum, bins_n, metrics: dict) -> dict[str, float]:
        nan = float("nan")
        n, tokens = max(t["responses"], 1.0), max(t["tokens"], 1.0)
        without = t["responses"] - t["with_marker"]
        out = {
            "monitor/entropy_mean": t["entropy"] / tokens,
            "monitor/forking_frac": t["forking"] / tokens,
            "monitor/marker_rate": t["with_marker"] / n,
            "monitor/markers_per_response": t["markers"] / n,
            "monitor/accuracy_with_marker": t["correct_with_marker"] / t["with_marker"] if t["with_marker"] else nan,
            "monitor/accuracy_without_marker": t["correct_without_marker"] / without if without else nan,
            "monitor/answer_changes": t["answer_changes"],
            "monitor/aha_events": t["aha"],
            "monitor/aha_rate": t["aha"] / n,
            "monitor/entropy_before_marker": t["shift_before"] / t["shift_n"] if t["shift_n"] else nan,
            "monitor/entropy_after_marker": t["shift_after"] / t["shift_n"] if t["shift_n"] else nan,
        }
        out["monitor/entropy_marker_delta"] = out["monitor/entropy_after_marker"] - out["monitor/entropy_before_marker"]
        for i in range(POSITION_BINS):
            out[f"monitor/entropy_q{i + 1}"] = float(bins_sum[i] / bins_n[i]) if bins_n[i] else nan
        for m, c in per_marker.items():
            out[f"monitor/marker_count/{m}"] = c
        length = metrics.get("response_length/mean")
        if length is not None:
            self.first_length = self.first_length or length
            out["monitor/length_growth"] = length / self.first_length if self.first_length else nan
        return out

    # ------------------------------------------------------------------ attention jumps
    def _attention(self, step: int, samples: Sequence[Sample], reads: Sequence[_Read]) -> dict[str, float]:
        """Every rank runs exactly one forward (collectives inside the model must match across
        ranks), on a seeded choice of responses with markers, or on a placeholder without any."""
        with_markers = [i for i, r in enumerate(reads) if r.token_pos]
        chosen = random.Random(step).sample(with_markers, min(self.cfg.attention_samples, len(with_markers)))
        seqs = [samples[i].prompt_ids + samples[i].response_ids for i in chosen]
        positions = [[len(samples[i].prompt_ids) + p for p in reads[i].token_pos] for i in chosen]
        if not seqs:
            seqs, positions = [samples[0].prompt_ids + samples[0].response_ids if samples else [self.tok.pad_id]], [[]]
        before, after, n = attention_jump_sums(self.model, seqs, positions, window=self.cfg.attention_window,
                                               distance=self.cfg.attention_distance, pad_id=self.tok.pad_id)
        t = torch.tensor([before, after, float(n)], dtype=torch.float64, device=collective_device())
        tp = 1
        if torch.distributed.is_initialized():  # over all ranks: TP ranks hold different heads of the same windows
            from megatron.core import parallel_state

            torch.distributed.all_reduce(t)
            tp = parallel_state.get_tensor_model_parallel_world_size()
        before, after, n = t.tolist()
        if not n:
            return {"monitor/attn_windows": 0.0}
        return {"monitor/attn_distant_before": before / n, "monitor/attn_distant_after": after / n,
                "monitor/attn_jump": (after - before) / n, "monitor/attn_windows": n / tp}

    # ------------------------------------------------------------------ saved examples
    def _record(self, step: int, s: Sample, r: _Read, problem: Optional[Problem]) -> dict:
        return {"step": step, "prompt": self.tok.decode(s.prompt_ids), "response": r.text,
                "reference_answer": problem.answer if problem is not None else None, "correct": r.correct,
                "markers": [{"marker": h.marker, "char": h.start, "token": p} for h, p in zip(r.hits, r.token_pos)],
                "answer_changes": [{"marker": c.marker.marker, "char": c.marker.start, "before": c.before,
                                    "after": c.after} for c in r.changes],
                "tokens": self.texts.pieces(s.response_ids), "entropies": [round(float(e), 4) for e in s.entropies]}

    def _save(self, step: int, samples, reads, problems) -> None:
        if self.out_dir is None:
            return
        problems = list(problems) + [None] * (len(samples) - len(problems))
        aha = [i for i, r in enumerate(reads) if r.changes and r.correct][:self.cfg.aha_examples_per_step]
        _append(self.out_dir / "aha_events.jsonl", [self._record(step, samples[i], reads[i], problems[i]) for i in aha])
        if self.cfg.examples_every and (step % self.cfg.examples_every == 0 or step == 1):
            order = sorted(range(len(reads)), key=lambda i: not reads[i].hits)  # responses with markers first
            chosen = order[:self.cfg.examples_per_step]
            _append(self.out_dir / "examples.jsonl", [self._record(step, samples[i], reads[i], problems[i])
                                                      for i in chosen])
            top = top_forking_tokens([(self.texts.pieces(s.response_ids), s.entropies) for s in samples],
                                     self.cfg.forking_entropy)
            _append(self.out_dir / "forking_tokens.jsonl", [{"step": step, "top": top}])


def _append(path: Path, records: list[dict]) -> None:
    if records:
        with path.open("a") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _dp_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over data-parallel ranks (tensor-parallel ranks hold identical samples)."""
    if not torch.distributed.is_initialized():
        return t
    from megatron.core import parallel_state

    if parallel_state.get_data_parallel_world_size() > 1:
        group = parallel_state.get_data_parallel_group()
        on = t.to(collective_device(group))
        torch.distributed.all_reduce(on, group=group)
        t = on.to(t.device)
    return t
