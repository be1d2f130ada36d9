"""Training-health alarms, judged from the step metrics against a baseline of the first steps.

Each alarm is a 0/1 metric every step (``alarm/<name>``) and is announced once when it starts and
once when it clears, so a long run does not drown its log in repeats.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from r1hpc.config import ConfigError


@dataclasses.dataclass
class AlarmConfig:
    """Thresholds. Baselines are the means over the first ``baseline_steps`` steps; the reward-hacking
    check compares the first and second half of the last ``window`` steps."""

    baseline_steps: int = 3
    entropy_collapse_frac: float = 0.2  # token entropy below this share of its baseline
    length_collapse_frac: float = 0.3  # mean response length below this share of its baseline
    length_runaway_clip: float = 0.5  # share of responses cut at max_new_tokens above this
    window: int = 10
    hack_format_rise: float = 0.1  # format reward rose at least this much over the window ...
    hack_accuracy_rise: float = 0.01  # ... while accuracy rose less than this
    clip_frac_min: float = 0.0  # PPO clip fraction (low + high) outside [min, max]
    clip_frac_max: float = 0.3

    def validate(self) -> None:
        if self.baseline_steps < 1 or self.window < 2:
            raise ConfigError("baseline_steps must be >= 1 and window >= 2")
        if not self.clip_frac_min <= self.clip_frac_max:
            raise ConfigError(f"clip_frac_min ({self.clip_frac_min}) must be <= clip_frac_max ({self.clip_frac_max})")


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


class HealthAlarms:
    """Feed it each step's metrics; it returns ``alarm/*`` metrics and the messages to print."""

    def __init__(self, cfg: AlarmConfig) -> None:
        self.cfg = cfg
        self.history: dict[str, list[float]] = {}
        self.active: set[str] = set()

    def state_dict(self) -> dict:
        return {"history": {k: list(v) for k, v in self.history.items()}, "active": sorted(self.active)}

    def load_state_dict(self, state: dict) -> None:
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.active = set(state["active"])

    def _series(self, key: str) -> list[float]:
        return self.history.get(key, [])

    def _baseline(self, key: str) -> Optional[float]:
        xs = self._series(key)
        return _mean(xs[:self.cfg.baseline_steps]) if len(xs) > self.cfg.baseline_steps else None

    def _below_baseline(self, key: str, frac: float) -> Optional[str]:
        base, xs = self._baseline(key), self._series(key)
        if base is None or base <= 0 or xs[-1] >= frac * base:
            return None
        return f"{key} {xs[-1]:.4g} < {frac} x baseline {base:.4g}"

    def _checks(self, metrics: dict) -> dict[str, Callable[[], Optional[str]]]:
        c = self.cfg

        def runaway():
            v = metrics.get("response_length/clip_ratio")
            return f"{v:.0%} of responses hit max_new_tokens (> {c.length_runaway_clip:.0%})" \
                if v is not None and v > c.length_runaway_clip else None

        def hacking():
            fmt, acc = self._series("reward/format")[-c.window:], self._series("reward/accuracy")[-c.window:]
            if len(fmt) < c.window or len(acc) < c.window:
                return None
            h = c.window // 2
            d_fmt, d_acc = _mean(fmt[h:]) - _mean(fmt[:h]), _mean(acc[h:]) - _mean(acc[:h])
            return (f"format reward rose {d_fmt:+.3f} over the last {c.window} steps while accuracy moved "
                    f"{d_acc:+.3f}") if d_fmt >= c.hack_format_rise and d_acc < c.hack_accuracy_rise else None

        def clipping():
            keys = [k for k in ("actor/pg_clipfrac_low", "actor/pg_clipfrac_high") if k in metrics]
            if not keys or not metrics.get("actor/updates"):
                return None
            v = sum(metrics[k] for k in keys)
            return f"clip fraction {v:.3f} outside [{c.clip_frac_min}, {c.clip_frac_max}]" \
                if not c.clip_frac_min <= v <= c.clip_frac_max else None

        return {"entropy_collapse": lambda: self._below_baseline("monitor/entropy_mean", c.entropy_collapse_frac),
                "length_collapse": lambda: self._below_baseline("response_length/mean", c.length_collapse_frac),
                "length_runaway": runaway, "reward_hacking": hacking, "clip_fraction": clipping}

    def update(self, step: int, metrics: dict) -> tuple[dict[str, float], list[str]]:
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self.history.setdefault(k, []).append(float(v))
        out, messages = {}, []
        for name, check in self._checks(metrics).items():
            why = check()
            out[f"alarm/{name}"] = float(why is not None)
            if why is not None and name not in self.active:
                self.active.add(name)
                messages.append(f"[alarm] step {step}: {name.replace('_', ' ')}: {why}")
            elif why is None and name in self.active:
                self.active.discard(name)
                messages.append(f"[alarm] step {step}: {name.replace('_', ' ')} cleared")
        return out, messages
