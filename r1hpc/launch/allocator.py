"""tcmalloc for r1hpc's compute processes on the host, where it is installed.

glibc's malloc hands large freed blocks back to the kernel, so every training step's activations
come back as fresh pages the kernel faults in and zeroes: GRPO on SmolLM2-135M (16 rows x 64 tokens,
2-core Intel Xeon), 0.3-1.1M page faults and 4-12 s of kernel time in an update of 11-15 s. glibc's
``mallopt`` thresholds and ``MALLOC_MMAP_MAX_=0`` leave them. tcmalloc keeps freed memory for reuse
(``TCMALLOC_RELEASE_RATE=0``: never handed back, as the CUDA caching allocator does on a GPU): by the
third step the update faults 9k pages and takes 8.9 s.

An allocator must be loaded before anything allocates, so ``r1hpc`` re-executes itself once with
``LD_PRELOAD`` (same process id, same arguments). ``R1HPC_ALLOCATOR=system`` keeps glibc's; without
tcmalloc installed (Debian: libtcmalloc-minimal4) nothing changes.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping, Optional

from r1hpc.config import ConfigError

LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")
CHOICES = ("tcmalloc", "system")
GLIBC = "glibc malloc"


def find_tcmalloc() -> Optional[str]:
    """The first installed tcmalloc library, or None."""
    for folder in LIBRARY_DIRS:
        for name in LIBRARIES:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    return None


def tcmalloc_env(environ: Mapping[str, str], library: Optional[str]) -> Optional[dict]:
    """The environment to run under ``library``, or None: opted out, no library, or a tcmalloc or
    jemalloc already preloaded (as in the re-executed process itself)."""
    choice = environ.get("R1HPC_ALLOCATOR", "tcmalloc")
    if choice not in CHOICES:
        raise ConfigError(f"environment variable R1HPC_ALLOCATOR must be one of {', '.join(CHOICES)}, got {choice!r}")
    preload = environ.get("LD_PRELOAD", "")
    if choice == "system" or library is None or "tcmalloc" in preload or "jemalloc" in preload:
        return None
    return {**environ, "LD_PRELOAD": f"{library}:{preload}" if preload else library,
            "TCMALLOC_RELEASE_RATE": environ.get("TCMALLOC_RELEASE_RATE", "0"),
            # tcmalloc prints a line for every allocation above 1 GiB by default
            "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": environ.get("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD",
                                                                 str(1 << 40))}


def compute_allocator(environ: Mapping[str, str] = os.environ) -> str:
    """What a compute command started with ``environ`` allocates with: the preloaded library, or glibc's malloc."""
    return (tcmalloc_env(environ, find_tcmalloc()) or environ).get("LD_PRELOAD") or GLIBC


def reexec_under_tcmalloc(args: list[str], program: Optional[list[str]] = None) -> None:
    """Replace this process by ``program args`` (default ``python -m r1hpc.cli``) under tcmalloc;
    returns where that does not apply."""
    env = tcmalloc_env(os.environ, find_tcmalloc())
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [*(program or [sys.executable, "-m", "r1hpc.cli"]), *args], env)
