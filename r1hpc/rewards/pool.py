"""A pool of killable worker processes with a hard wall-clock limit per task.

sympy can hang inside one C-level big-integer operation where no signal handler ever runs, and
SIGALRM only works in a main thread. So every risky check runs in a worker process; when a task
passes its deadline the parent SIGKILLs that worker and starts a fresh one, and the pool keeps
serving. ``map`` keeps every worker busy, so a batch uses all cores.
"""
from __future__ import annotations

import atexit
import dataclasses
import logging
import multiprocessing as mp
import os
import resource
import signal
import threading
import time
import weakref
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

_READY = "ready"


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """``status`` is "ok" (``value`` holds the return value), "error" (an exception or a crashed
    worker; ``value`` is its text) or "timeout"."""

    status: str
    value: Any = None


def _worker_main(conn: Connection, memory_mb: int, preload: tuple[str, ...]) -> None:
    """Worker loop: receive (fn, args), send back TaskResult. Never exits on a task's exception."""
    for sig in (signal.SIGUSR2, signal.SIGTERM):  # Slurm signals the whole step; the trainer owns preemption
        signal.signal(sig, signal.SIG_IGN)        # (inherited by sandboxed children); its exit ends us (EOF)
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logging.disable(logging.CRITICAL)  # math-verify logs every unparsable answer
    for module in preload:
        __import__(module)
    conn.send(_READY)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        fn, args = task
        try:
            result = TaskResult("ok", fn(*args))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - math-verify's TimeoutException is a BaseException
            result = TaskResult("error", f"{type(e).__name__}: {e}"[:500])
        conn.send(result)


class _Worker:
    def __init__(self, ctx: Any, memory_mb: int, preload: tuple[str, ...]) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, memory_mb, preload), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.task: int | None = None
        self.deadline = 0.0

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class WorkerPool:
    """``workers`` processes (default: the CPU count) started lazily with the ``spawn`` method
    (safe in a process that holds threads, e.g. a trainer). Each worker's address space is capped
    at ``memory_mb``; ``preload`` modules are imported before a worker reports ready, so import
    time never counts against a task's limit. Thread-safe; one ``map`` runs at a time."""

    def __init__(self, workers: int | None = None, *, memory_mb: int = 2048, preload: Sequence[str] = ()) -> None:
        self.size = workers or os.cpu_count() or 1
        if self.size < 1:
            raise ValueError(f"a pool needs at least one worker, got {workers}")
        self.memory_mb = memory_mb
        self.preload = tuple(preload)
        self.timeouts = 0
        self.crashes = 0
        self._start_failures = 0
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        atexit.register(WorkerPool._close_ref, weakref.ref(self))

    @staticmethod
    def _close_ref(ref: "weakref.ref[WorkerPool]") -> None:
        pool = ref()
        if pool is not None:
            pool.close()

    @property
    def started(self) -> int:
        """Worker processes started and not yet stopped (0 until the first task or ``start``)."""
        return len(self._workers)

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self.memory_mb, self.preload)

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers[self._workers.index(w)] = self._spawn()

    def start(self, timeout_s: float = 120.0) -> None:
        """Start every worker now and wait until each has finished importing (optional: ``map``
        starts them lazily)."""
        if self._closed:
            raise RuntimeError("WorkerPool is closed")
        end = time.monotonic() + timeout_s
        with self._lock:
            self._fill()
            while not all(w.ready for w in self._workers):
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"reward workers not ready after {timeout_s} s")
                for conn in wait([w.conn for w in self._workers if not w.ready], timeout=left):
                    self._receive(next(x for x in self._workers if x.conn is conn), [])

    def _fill(self) -> None:
        while len(self._workers) < self.size:
            self._workers.append(self._spawn())

    def map(self, fn: Callable, args: Sequence[tuple], *, timeout_s: float, deadline: float | None = None) -> list[TaskResult]:
        """Run ``fn(*a)`` for every ``a`` in ``args``: each task gets ``timeout_s`` of wall clock
        from the moment a ready worker takes it; ``deadline`` (a ``time.monotonic()`` value) bounds
        the whole call. A task past either limit is "timeout" (counted in ``timeouts``, whether it
        had started or not) and the worker running it is replaced."""
        if self._closed:
            raise RuntimeError("WorkerPool is closed")
        if not args:
            return []
        results: list[TaskResult | None] = [None] * len(args)
        with self._lock:
            self._fill()
            pending = list(range(len(args)))[::-1]
            while pending or any(w.task is not None for w in self._workers):
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    for i in pending:
                        results[i] = TaskResult("timeout")
                    self.timeouts += len(pending)
                    pending.clear()
                for w in list(self._workers):
                    if w.task is not None and (now >= w.deadline or (deadline is not None and now >= deadline)):
                        results[w.task] = TaskResult("timeout")
                        self.timeouts += 1
                        self._replace(w)
                for w in list(self._workers):
                    if w.ready and w.task is None and pending:
                        w.task = pending.pop()
                        w.deadline = now + timeout_s
                        try:
                            w.conn.send((fn, args[w.task]))
                        except OSError:  # died while idle: retry the task on a fresh worker
                            pending.append(w.task)
                            self.crashes += 1
                            self._replace(w)
                if not pending and all(w.task is None for w in self._workers):
                    break
                waits = [w.deadline for w in self._workers if w.task is not None]
                if deadline is not None:
                    waits.append(deadline)
                timeout = max(0.0, min(waits) - time.monotonic()) if waits else None
                for conn in wait([w.conn for w in self._workers], timeout=timeout):
                    w = next(x for x in self._workers if x.conn is conn)
                    self._receive(w, results)
        return [r if r is not None else TaskResult("timeout") for r in results]

    def _receive(self, w: _Worker, results: list[TaskResult | None]) -> None:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            if not w.ready:
                self._start_failures += 1
                if self._start_failures > 3 * self.size:
                    raise RuntimeError(f"reward workers keep dying at start (exit code {w.proc.exitcode})") from None
            if w.task is not None:
                results[w.task] = TaskResult("error", f"worker died (exit code {w.proc.exitcode})")
            self.crashes += 1
            log.warning("reward worker died (exit code %s); starting a new one", w.proc.exitcode)
            self._replace(w)
            return
        if msg == _READY:
            w.ready = True
        elif w.task is not None:
            results[w.task] = msg
            w.task = None

    def close(self) -> None:
        """Stop every worker (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            for w in self._workers:
                try:
                    w.conn.send(None)
                except (OSError, ValueError):
                    pass
            for w in self._workers:
                w.proc.join(1)
                w.kill()
            self._workers.clear()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
