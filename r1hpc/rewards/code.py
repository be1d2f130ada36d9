"""Code accuracy: the tests run in a harness process the program cannot reach; pass means they all ran.

Inside the sandbox two processes run. The harness (trusted) makes itself non-dumpable (so a same-uid
process cannot read its memory, its ``/proc/<pid>/fd`` or ptrace it), forks the program's process
(which drops stdin and the harness's stdout at once) and only then reads the tests and a random
per-run sentinel from stdin. The program's process gets the program over a pipe and runs it as
module "solution" (its ``if __name__ == "__main__":`` block does not run). The
tests run in the harness: every name they use that they do not define themselves (``candidate``,
the entry point, prompt helpers) is fetched from the program's process, calls go over the pipe and
only plain data comes back (exact ``None``/``bool``/``int``/``float``/``complex``/``str``/``bytes``
and lists, tuples, dicts, sets of them; anything else, e.g. an object overriding ``__eq__``, fails
the call). The comparisons (``==``, ``abs``, ``math.isclose``) are the harness's own, which the
program cannot patch. The program never holds the harness's stdout, where the sentinel is
written once the tests returned, and never sees the sentinel or the tests: they are not on disk, not
in its memory, not in any frame it can walk. The exit code never counts.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Sequence

from r1hpc.config import ConfigError
from r1hpc.rewards.sandbox import ExecResult, SandboxConfig, run_python

log = logging.getLogger(__name__)

_FENCE_RE = re.compile(r"```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.S)
_PYTHON_TAGS = {"python", "py", "python3"}

# Plain data across the process boundary, exact types only (a subclass is refused). Shared by both sides.
_CODEC = r'''
import builtins, json, os, sys
_MAX_LINE = 1 << 26
def _enc(v):
    t = type(v)
    if v is None or t is bool or t is str:
        return v
    if t is int:
        return ["i", format(v, "x")]
    if t is float:
        return ["f", v.hex()]
    if t is complex:
        return ["c", [v.real.hex(), v.imag.hex()]]
    if t is bytes:
        return ["b", v.hex()]
    if t in (list, tuple, set, frozenset):
        return ["lts"[(list, tuple, set).index(t)] if t is not frozenset else "z", [_enc(x) for x in v]]
    if t is dict:
        return ["d", [[_enc(k), _enc(x)] for k, x in v.items()]]
    raise TypeError(f"a {t.__name__} cannot leave the program's process (plain data only)")
_SEQ = {"l": list, "t": tuple, "s": set, "z": frozenset}
def _dec(v):
    if v is None or v is True or v is False or type(v) is str:
        return v
    if type(v) is not list or len(v) != 2 or type(v[0]) is not str:
        raise TypeError("malformed value from the program's process")
    tag, p = v
    if tag == "i" and type(p) is str:
        return int(p, 16)
    if tag == "f" and type(p) is str:
        return float.fromhex(p)
    if tag == "c" and type(p) is list and len(p) == 2 and all(type(x) is str for x in p):
        return complex(float.fromhex(p[0]), float.fromhex(p[1]))
    if tag == "b" and type(p) is str:
        return bytes.fromhex(p)
    if tag in _SEQ and type(p) is list:
        return _SEQ[tag](_dec(x) for x in p)
    if tag == "d" and type(p) is list and all(type(kv) is list and len(kv) == 2 for kv in p):
        return {_dec(k): _dec(x) for k, x in p}
    raise TypeError("malformed value from the program's process")
def _send(f, msg):
    f.write(json.dumps(msg).encode() + b"\n")
    f.flush()
def _recv(f):
    line = f.readline(_MAX_LINE)
    if not line.endswith(b"\n"):
        raise EOFError("the program's process closed its pipe")
    return json.loads(line)
'''

# The harness: main.py of the sandbox run.
_HARNESS = _CODEC + r'''
import ctypes
if ctypes.CDLL(None).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 0, inherited by the fork below
    sys.exit("harness: cannot make itself non-dumpable")
_verdict = os.dup(1)
os.dup2(2, 1)  # the tests' own prints go to stderr; stdout carries only the sentinel

def _serve(rq, rp):
    # the program's process: run the program as module "solution", then answer the harness
    ns = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(compile(_recv(rq)[1], "solution.py", "exec"), ns)
        _send(rp, ["ok"])
    except BaseException as e:
        _send(rp, ["raise", repr(e)[:500]])
        return
    while True:
        try:
            op, name, args, kwargs = _recv(rq)
        except EOFError:
            return
        try:
            obj = ns[name]
        except KeyError:
            _send(rp, ["missing"])
            continue
        try:
            if op == "get":
                _send(rp, ["callable"] if callable(obj) else ["value", _enc(obj)])
            else:
                _send(rp, ["value", _enc(obj(*_dec(args), **_dec(kwargs)))])
        except BaseException as e:
            _send(rp, ["raise", repr(e)[:500]])

# Forked before stdin (tests, sentinel) is read, so the program's process never held them; it drops
# stdin and the sentinel's fd before any of the program runs.
_req_r, _req_w = os.pipe()
_rep_r, _rep_w = os.pipe()
if os.fork() == 0:
    try:
        _null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(_null, 0)
        for _fd in (_null, _verdict, _req_w, _rep_r):
            os.close(_fd)
        _serve(os.fdopen(_req_r, "rb"), os.fdopen(_rep_w, "wb"))
    finally:
        try:  # what the program printed (to the run's stderr), then exit without the harness's atexit
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(0)
os.close(_req_r)
os.close(_rep_w)
_rq, _rp = os.fdopen(_req_w, "wb"), os.fdopen(_rep_r, "rb")

class RemoteError(Exception):
    """The program raised (or its process died) while the tests called it."""

def _ask(msg):
    _send(_rq, msg)
    return _recv(_rp)

class _Remote:
    """A function of the program: called over the pipe; only plain data crosses."""
    def __init__(self, name):
        self.__name__ = name
    def __call__(self, *args, **kwargs):
        reply = _ask(["call", self.__name__, _enc(list(args)), _enc(kwargs)])
        if reply[0] != "value":
            raise RemoteError(f"{self.__name__}: {str(reply)[:500]}")
        return _dec(reply[1])
    def __repr__(self):
        return f"<program function {self.__name__}>"

class _Names(dict):
    """The tests' globals: builtins stay the harness's own; other unknown names come from the program."""
    def __missing__(self, name):
        if hasattr(builtins, name):
            raise KeyError(name)
        reply = _ask(["get", name, None, None])
        if reply[0] == "callable":
            value = _Remote(name)
        elif reply[0] == "value":
            value = _dec(reply[1])
        else:
            raise KeyError(name)
        self[name] = value
        return value

def _main():
    job = json.loads(sys.stdin.buffer.read())
    loaded = _ask(["exec", job["program"], None, None])
    if loaded != ["ok"]:
        sys.exit(f"harness: the program did not load: {str(loaded)[:500]}")
    exec(compile(job["tests"], "tests.py", "exec"), _Names(__name__="__main__"))
    os.write(_verdict, job["token"].encode() + b"\n")

_main()
'''


@dataclasses.dataclass
class CodeConfig:
    """``speed_bonus`` (off at 0): a passing program earns up to this much extra, linearly more the
    less of ``timeout_s`` it used. ``batch_timeout_s`` bounds one ``code_reward_batch``."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    speed_bonus: float = 0.0
    batch_timeout_s: float = 300.0
    sandbox: SandboxConfig = dataclasses.field(default_factory=SandboxConfig)

    def validate(self) -> None:
        if self.timeout_s <= 0 or self.memory_mb < 64:
            raise ConfigError(f"timeout_s must be > 0 and memory_mb >= 64, got {self.timeout_s}, {self.memory_mb}")
        if not 0.0 <= self.speed_bonus <= 1.0:
            raise ConfigError(f"speed_bonus must be in [0, 1], got {self.speed_bonus}")
        if self.batch_timeout_s <= 0:
            raise ConfigError(f"batch_timeout_s must be > 0, got {self.batch_timeout_s}")
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
    """(passed, raw result) for the extracted program checked by ``tests`` (and ``check(entry_point)``)."""
    cfg = config or CodeConfig()
    tests = tests + "\n"
    if entry_point:
        tests += f"\ncheck({entry_point})\n"
    token = secrets.token_hex(16)
    job = json.dumps({"program": extract_code(program), "tests": tests, "token": token})
    result = run_python(_HARNESS, stdin=job, timeout_s=timeout_s,
                        memory_mb=cfg.memory_mb, config=cfg.sandbox)
    return result.status == "ok" and result.stdout == token + "\n", result


def code_reward(program: str, tests: str, *, entry_point: str | None = None, timeout_s: float = 10.0,
                config: CodeConfig | None = None) -> float:
    """1.0 if all tests ran to the end, else 0.0 (plus the optional speed bonus when passing)."""
    cfg = config or CodeConfig()
    passed, result = run_tests(program, tests, entry_point=entry_point, timeout_s=timeout_s, config=cfg)
    if not passed:
        return 0.0
    return 1.0 + cfg.speed_bonus * max(0.0, 1.0 - result.wall_s / timeout_s)


@dataclasses.dataclass
class CodeBatchStats:
    """What went wrong in one batch (each such program scored 0): runs cut by the batch deadline,
    runs whose checking raised."""

    timeouts: int = 0
    errors: int = 0


def code_reward_batch(programs: Sequence[str], tests: Sequence[str], entry_points: Sequence[str | None], *,
                      timeout_s: float | None = None, config: CodeConfig | None = None,
                      workers: int | None = None, deadline: float | None = None,
                      stats: CodeBatchStats | None = None) -> list[float]:
    """``code_reward`` for many programs, ``workers`` sandboxes at a time (default: one per core).
    Returns by ``deadline`` (``time.monotonic()``; default: ``config.batch_timeout_s`` from now):
    a run not finished by then, or one whose checking raised, scores 0 and is counted in ``stats``."""
    if not len(programs) == len(tests) == len(entry_points):
        raise ValueError("programs, tests and entry_points must have the same length")
    cfg = config or CodeConfig()
    limit = timeout_s or cfg.timeout_s
    deadline = time.monotonic() + cfg.batch_timeout_s if deadline is None else deadline
    stats = stats if stats is not None else CodeBatchStats()

    def one(program: str, test: str, entry: str | None) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return code_reward(program, test, entry_point=entry, timeout_s=max(0.1, min(limit, left)), config=cfg)

    ex = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1)
    futures = [ex.submit(one, *a) for a in zip(programs, tests, entry_points)]
    wait(futures, timeout=max(0.0, deadline - time.monotonic()))
    ex.shutdown(wait=False, cancel_futures=True)
    out = []
    for f in futures:
        if not f.done() or f.cancelled() or isinstance(f.exception(), TimeoutError):
            stats.timeouts += 1
            out.append(0.0)
        elif f.exception() is not None:
            log.warning("code check raised, scored 0: %r", f.exception())
            stats.errors += 1
            out.append(0.0)
        else:
            out.append(f.result())
    return out
