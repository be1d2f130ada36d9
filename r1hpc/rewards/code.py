"""Code accuracy: run the program and its tests in the sandbox; pass means every test ran.

Passing is proven by a random per-run sentinel that the harness prints after the tests returned,
never by the exit code, so ``sys.exit(0)``/``os._exit(0)`` before the tests earns nothing. The
sentinel reaches the harness through stdin (consumed before the program starts) and lives only in
a local of the harness, so it is neither in the source on disk nor in the program's globals.
The program runs as module "solution" (as HumanEval's harness does), so its own
``if __name__ == "__main__":`` demo block does not run and cannot block on input.
"""
from __future__ import annotations

import dataclasses
import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from r1hpc.config import ConfigError
from r1hpc.rewards.sandbox import ExecResult, SandboxConfig, run_python

_FENCE_RE = re.compile(r"```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.S)
_PYTHON_TAGS = {"python", "py", "python3"}

_HARNESS = """\
import sys
def _r1hpc_run(token):
    exec(compile(SOURCE, "solution.py", "exec"), {{"__name__": "solution"}})
    sys.stdout.flush()
    print("\\n" + token, flush=True)
SOURCE = {source!r}
_r1hpc_run(sys.stdin.readline().strip())
"""


@dataclasses.dataclass
class CodeConfig:
    """``speed_bonus`` (off at 0): a passing program earns up to this much extra, linearly more the
    less of ``timeout_s`` it used."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    speed_bonus: float = 0.0
    sandbox: SandboxConfig = dataclasses.field(default_factory=SandboxConfig)

    def validate(self) -> None:
        if self.timeout_s <= 0 or self.memory_mb < 64:
            raise ConfigError(f"timeout_s must be > 0 and memory_mb >= 64, got {self.timeout_s}, {self.memory_mb}")
        if not 0.0 <= self.speed_bonus <= 1.0:
            raise ConfigError(f"speed_bonus must be in [0, 1], got {self.speed_bonus}")
        self.sandbox.validate()


def extract_code(text: str) -> str:
    """The last fenced python block; else the last untagged fenced block; else the text itself."""
    blocks = _FENCE_RE.findall(text)
    for wanted in (lambda tag: tag.lower() in _PYTHON_TAGS, lambda tag: tag == ""):
        chosen = [body for tag, body in blocks if wanted(tag)]
        if chosen:
            return chosen[-1]
    return text


def run_tests(program: str, tests: str, *, entry_point: str | None = None, timeout_s: float = 10.0,
              config: CodeConfig | None = None) -> tuple[bool, ExecResult]:
    """(passed, raw result) for the extracted program followed by ``tests`` (and ``check(entry_point)``)."""
    cfg = config or CodeConfig()
    source = extract_code(program) + "\n\n" + tests + "\n"
    if entry_point:
        source += f"\ncheck({entry_point})\n"
    token = secrets.token_hex(16)
    result = run_python(_HARNESS.format(source=source), stdin=token + "\n", timeout_s=timeout_s,
                        memory_mb=cfg.memory_mb, config=cfg.sandbox)
    lines = result.stdout.rstrip("\n").rsplit("\n", 1)
    passed = result.status != "output_limit" and lines[-1] == token
    return passed, result


def code_reward(program: str, tests: str, *, entry_point: str | None = None, timeout_s: float = 10.0,
                config: CodeConfig | None = None) -> float:
    """1.0 if all tests ran to the end, else 0.0 (plus the optional speed bonus when passing)."""
    cfg = config or CodeConfig()
    passed, result = run_tests(program, tests, entry_point=entry_point, timeout_s=timeout_s, config=cfg)
    if not passed:
        return 0.0
    return 1.0 + cfg.speed_bonus * max(0.0, 1.0 - result.wall_s / timeout_s)


def code_reward_batch(programs: Sequence[str], tests: Sequence[str], entry_points: Sequence[str | None], *,
                      timeout_s: float | None = None, config: CodeConfig | None = None,
                      workers: int | None = None) -> list[float]:
    """``code_reward`` for many programs, ``workers`` sandboxes at a time (default: one per core)."""
    if not len(programs) == len(tests) == len(entry_points):
        raise ValueError("programs, tests and entry_points must have the same length")
    cfg = config or CodeConfig()
    limit = timeout_s or cfg.timeout_s
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as ex:
        return list(ex.map(lambda a: code_reward(*a[:2], entry_point=a[2], timeout_s=limit, config=cfg),
                           zip(programs, tests, entry_points)))
