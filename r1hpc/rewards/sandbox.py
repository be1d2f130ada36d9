"""Run untrusted Python in a fresh, isolated, resource-limited process.

Layers, outermost first (see docs/rewards.md for what holds where):
- bubblewrap (when installed): a root holding only read-only /usr (system Python and its standard
  library), /dev and /proc, and a size-capped tmpfs /tmp with the working dir (no home, venvs,
  checkout, data, /run or /var); no network (even loopback), own PID namespace, so every process of
  the run dies with it (double-forked daemons included);
- a throwaway uid (when we are root and ``setpriv`` exists): cannot read other users' files or
  signal our processes, and its RLIMIT_NPROC counts only the run's own processes;
- rlimits via ``prlimit``: CPU seconds, address space, processes, file size, open files, no core;
- its own session, killed as a whole at the end; a scrubbed environment; stdin only from the given
  text; stdout/stderr read with a cap; without bubblewrap, a host temp working dir removed afterwards.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import random
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Literal

from r1hpc.config import ConfigError

log = logging.getLogger(__name__)

STATUSES = ("ok", "error", "timeout", "memory", "output_limit")
_SANDBOX_DIR = "/tmp/work"  # the working dir as the program sees it under bubblewrap
_MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc")
_UID_RANGE = (200_000, 299_999)
_uids_in_use: set[int] = set()
_uid_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class ExecResult:
    """Outcome of one run. ``status`` is one of ok/error/timeout/memory/output_limit; ``exit_code``
    is negative for a signal (as in ``subprocess``), also under bubblewrap."""

    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    wall_s: float


@dataclasses.dataclass
class SandboxConfig:
    """Isolation and limits. ``isolation``: "auto" uses bubblewrap when installed (warning once
    when not), "bwrap" requires it, "none" runs with rlimits and a session only. ``python`` is the
    interpreter (default: /usr/bin/python3.11 when present, since a throwaway uid cannot run an
    interpreter under /root; else this interpreter)."""

    isolation: Literal["auto", "bwrap", "none"] = "auto"
    python: str = ""
    max_output_bytes: int = 1_000_000
    max_processes: int = 64
    max_file_mb: int = 64
    max_open_files: int = 128
    tmpfs_mb: int = 64

    def validate(self) -> None:
        for name in ("max_output_bytes", "max_processes", "max_file_mb", "max_open_files", "tmpfs_mb"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.isolation == "bwrap" and shutil.which("bwrap") is None:
            raise ConfigError("isolation 'bwrap' asked for but bubblewrap (bwrap) is not installed")


_warned = False


@functools.lru_cache(maxsize=None)
def bwrap_usable() -> bool:
    """bwrap is installed and may create namespaces here (a cluster may forbid user namespaces)."""
    if shutil.which("bwrap") is None:
        return False
    try:
        probe = subprocess.run(["bwrap", "--ro-bind", "/", "/", "--unshare-net", "--unshare-pid", "true"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("bubblewrap probe failed: %s", e)
        return False
    if probe.returncode != 0:
        log.warning("bubblewrap is installed but cannot sandbox here: %s", probe.stderr.strip()[:300])
    return probe.returncode == 0


def _interpreter(cfg: SandboxConfig) -> str:
    if cfg.python:
        return cfg.python
    return "/usr/bin/python3.11" if os.access("/usr/bin/python3.11", os.X_OK) else sys.executable


def _use_bwrap(cfg: SandboxConfig) -> bool:
    global _warned
    if cfg.isolation == "none":
        return False
    if bwrap_usable():
        return True
    if cfg.isolation == "bwrap":
        raise RuntimeError("bubblewrap (bwrap) is missing or cannot create namespaces here; fix that or set isolation='none'")
    if not _warned:
        _warned = True
        log.warning("bubblewrap unusable: sandboxed code runs WITHOUT network, filesystem or PID isolation "
                    "(rlimits, a session and, as root, a throwaway uid only). Install bubblewrap.")
    return False


def _limits(timeout_s: float, memory_mb: int, cfg: SandboxConfig) -> dict[int, int]:
    cpu = int(timeout_s) + 1
    return {
        resource.RLIMIT_CPU: cpu,
        resource.RLIMIT_AS: memory_mb * 1024 * 1024,
        resource.RLIMIT_NPROC: cfg.max_processes,
        resource.RLIMIT_FSIZE: cfg.max_file_mb * 1024 * 1024,
        resource.RLIMIT_NOFILE: cfg.max_open_files,
        resource.RLIMIT_CORE: 0,
    }


_PRLIMIT_FLAGS = {
    resource.RLIMIT_CPU: "--cpu", resource.RLIMIT_AS: "--as", resource.RLIMIT_NPROC: "--nproc",
    resource.RLIMIT_FSIZE: "--fsize", resource.RLIMIT_NOFILE: "--nofile", resource.RLIMIT_CORE: "--core",
}


def _visible_roots(python: str) -> list[str]:
    """What the program sees of the host besides /dev, /proc and its tmpfs: the system's /usr (for
    the interpreter, its standard library and basic tools), plus the interpreter's own prefix when it
    lives elsewhere. The merged-/usr symlinks (/bin, /lib, ...) are recreated in ``_command``."""
    roots = ["/usr"]
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(python)))
    if not (prefix + "/").startswith("/usr/"):
        roots.append(prefix)
    return roots


# Hidden even under /usr: other Python packages (the program gets the standard library only).
_HIDDEN = ("/usr/local", "/usr/lib/python3/dist-packages")


def _command(workdir: str | None, uid: int | None, limits: dict[int, int], bwrap: bool, prlimit: bool,
             cfg: SandboxConfig, code_fd: int | None = None) -> tuple[list[str], str]:
    """The argv and the working dir as the program sees it. Under bubblewrap the root is an empty
    tmpfs holding only an allow-list of read-only binds (no home, checkout, venvs, data, /run or
    /var: no unix socket at a file path is reachable); /tmp (the working dir below it) is a
    size-capped tmpfs that vanishes with the run, so cleanup costs nothing on the host."""
    inner_dir = _SANDBOX_DIR if bwrap else workdir
    cmd: list[str] = []
    if bwrap:
        python = _interpreter(cfg)
        cmd += ["bwrap"]
        for root in _visible_roots(python):
            cmd += ["--ro-bind", root, root]
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            target = f"/{name}"
            if os.path.islink(target):
                cmd += ["--symlink", os.readlink(target), target]
            elif os.path.isdir(target):
                cmd += ["--ro-bind", target, target]
        for hidden in _HIDDEN:
            if os.path.isdir(hidden):
                cmd += ["--tmpfs", hidden]
        cmd += ["--dev", "/dev", "--proc", "/proc",
                "--perms", "1777", "--size", str(cfg.tmpfs_mb * 1024 * 1024), "--tmpfs", "/tmp",
                "--perms", "0777", "--dir", _SANDBOX_DIR, "--perms", "0644", "--file", str(code_fd),
                f"{_SANDBOX_DIR}/main.py", "--chdir", _SANDBOX_DIR,
                "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--die-with-parent", "--new-session", "--"]
    if prlimit:
        cmd += ["prlimit"] + [f"{_PRLIMIT_FLAGS[k]}={v}" for k, v in limits.items()] + ["--"]
    if uid is not None:
        cmd += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    cmd += [_interpreter(cfg), "-I", "-B", "main.py"]
    return cmd, inner_dir


def _preexec(limits: dict[int, int]):
    """rlimits set in the child, used only when the ``prlimit`` tool is missing."""
    def apply() -> None:
        for k, v in limits.items():
            resource.setrlimit(k, (v, v))
    return apply


def _take_uid() -> int | None:
    """A throwaway uid no other run of this process holds (only as root, with setpriv)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    with _uid_lock:
        uid = random.randint(*_UID_RANGE)
        while uid in _uids_in_use:
            uid = random.randint(*_UID_RANGE)
        _uids_in_use.add(uid)
        return uid


def _live_pids(uid: int) -> list[int]:
    """Processes (zombies aside) whose real uid is ``uid``."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if line.startswith(("State:", "Uid:")))
            if int(fields["Uid"].split()[0]) == uid and fields["State"].split()[0] not in ("Z", "X"):
                pids.append(int(pid))
        except (OSError, ValueError, KeyError):
            continue
    return pids


def _kill_uid(uid: int, patience_s: float = 2.0) -> None:
    """SIGKILL every process of the run's throwaway uid (escaped daemons included) and wait until
    they are gone, so nothing of the run is left when ``run_python`` returns."""
    end = time.monotonic() + patience_s
    while (pids := _live_pids(uid)) and time.monotonic() < end:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)
    if pids:
        log.warning("sandbox uid %d still has processes %s after SIGKILL", uid, pids)


def run_python(code: str, *, stdin: str = "", timeout_s: float = 10.0, memory_mb: int = 1024,
               config: SandboxConfig | None = None) -> ExecResult:
    """Run ``code`` as a script in a fresh sandboxed interpreter; never raises for what the code does
    (its leftovers included: under bubblewrap they vanish with its tmpfs, otherwise their removal
    cannot raise)."""
    cfg = config or SandboxConfig()
    bwrap = _use_bwrap(cfg)
    limits = _limits(timeout_s, memory_mb, cfg)
    prlimit = shutil.which("prlimit") is not None
    preexec = None if prlimit else _preexec(limits)
    uid = _take_uid()
    workdir = code_fd = None
    try:
        if bwrap:  # the code reaches the sandbox's own tmpfs through a memfd; nothing on the host disk
            code_fd = os.memfd_create("r1hpc-main.py", 0)
            os.write(code_fd, code.encode())
            os.lseek(code_fd, 0, os.SEEK_SET)
        else:
            workdir = tempfile.mkdtemp(prefix="r1hpc-sbx-")
            with open(os.path.join(workdir, "main.py"), "w") as f:
                f.write(code)
            if uid is not None:
                os.chown(workdir, uid, uid)
                os.chown(os.path.join(workdir, "main.py"), uid, uid)
        cmd, inner_dir = _command(workdir, uid, limits, bwrap, prlimit, cfg, code_fd)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": inner_dir,
               "TMPDIR": "/tmp", "PYTHONIOENCODING": "utf-8"}
        return _execute(cmd, workdir or "/", env, stdin.encode(), timeout_s, uid, preexec, cfg,
                        () if code_fd is None else (code_fd,))
    finally:
        if code_fd is not None:
            os.close(code_fd)
        if workdir is not None:
            _remove_tree(workdir)
        _uids_in_use.discard(uid)


def _remove_tree(path: str) -> None:
    """Remove a run's working dir however deep it nests (``rm`` walks iteratively; 3.11's ``rmtree``
    recurses and raises ``RecursionError`` past ~1,000 levels); logs instead of raising."""
    try:
        subprocess.run(["rm", "-rf", "--one-file-system", "--", path], capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("could not remove sandbox dir %s: %s", path, e)
    if os.path.lexists(path):
        log.warning("sandbox dir %s is left behind (the program made it unremovable)", path)


def _execute(cmd: list[str], cwd: str, env: dict[str, str], stdin: bytes, timeout_s: float, uid: int | None,
             preexec, cfg: SandboxConfig, pass_fds: tuple[int, ...] = ()) -> ExecResult:
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                            preexec_fn=preexec, pass_fds=pass_fds)
    out = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    sel = selectors.DefaultSelector()
    try:
        timed_out, overflow = _pump(proc, sel, stdin, out, start, timeout_s, cfg.max_output_bytes)
    finally:
        sel.close()
        _kill_group(proc, uid)
    wall = time.monotonic() - start
    stdout = bytes(out[proc.stdout.fileno()][: cfg.max_output_bytes]).decode("utf-8", "replace")
    stderr = bytes(out[proc.stderr.fileno()][: cfg.max_output_bytes]).decode("utf-8", "replace")
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        stream.close()
    code = proc.returncode
    if cmd[0] == "bwrap" and 128 < code <= 128 + 64:
        code = 128 - code  # bwrap reports a signal as 128 + n; report -n as subprocess does
    return ExecResult(_status(code, stderr, timed_out, overflow), code, stdout, stderr, wall)


def _pump(proc: subprocess.Popen, sel: selectors.BaseSelector, stdin: bytes, out: dict[int, bytearray],
          start: float, timeout_s: float, max_output: int) -> tuple[bool, bool]:
    """Feed ``stdin`` and collect stdout/stderr into ``out`` until the program ends, the time is up
    or an output passes ``max_output`` bytes; returns (timed_out, overflow)."""
    for stream in (proc.stdout, proc.stderr):
        os.set_blocking(stream.fileno(), False)
        sel.register(stream, selectors.EVENT_READ)
    os.set_blocking(proc.stdin.fileno(), False)
    if stdin:
        sel.register(proc.stdin, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    pending = memoryview(stdin)
    exited_at = None
    while sel.get_map():
        now = time.monotonic()
        if now - start >= timeout_s:
            return True, False
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        elif exited_at is not None and now - exited_at > 0.2:
            return False, False  # the program is gone; something it left behind holds the pipes
        for key, _ in sel.select(min(0.05, timeout_s - (now - start))):
            if key.fileobj is proc.stdin:
                pending = _write_stdin(proc, sel, pending)
                continue
            fd = key.fileobj.fileno()
            data = os.read(fd, 65536)
            if not data:
                sel.unregister(key.fileobj)
                continue
            out[fd] += data
            if len(out[fd]) > max_output:
                return False, True
    if exited_at is None:
        try:  # the program closed its pipes but may still be running
            proc.wait(timeout=max(0.0, timeout_s - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            return True, False
    return False, False


def _write_stdin(proc: subprocess.Popen, sel: selectors.BaseSelector, pending: memoryview) -> memoryview:
    """Write what the pipe takes of ``pending``; close stdin once all is written or the program
    stopped reading. Returns what is left."""
    try:
        pending = pending[os.write(proc.stdin.fileno(), pending[:65536]):]
    except (BrokenPipeError, BlockingIOError, OSError):
        pending = pending[:0]
    if not pending:
        sel.unregister(proc.stdin)
        proc.stdin.close()
    return pending


def _kill_group(proc: subprocess.Popen, uid: int | None) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if uid is not None:
        _kill_uid(uid)
    proc.wait()


def _status(code: int | None, stderr: str, timed_out: bool, overflow: bool) -> str:
    if overflow:
        return "output_limit"
    if timed_out or code == -signal.SIGXCPU:
        return "timeout"
    if code == 0:
        return "ok"
    if any(m in stderr[-4000:] for m in _MEMORY_MARKERS):
        return "memory"
    return "error"
