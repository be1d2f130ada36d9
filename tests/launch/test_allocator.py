"""Compute commands re-execute under tcmalloc where it is installed (r1hpc.launch.allocator)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from r1hpc.config import ConfigError
from r1hpc.launch.allocator import find_tcmalloc, tcmalloc_env

LIB = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def test_env_preloads_tcmalloc_once_and_keeps_what_the_user_set():
    env = tcmalloc_env({"PATH": "/bin", "LD_PRELOAD": "/opt/other.so", "TCMALLOC_RELEASE_RATE": "3"}, LIB)
    assert env["LD_PRELOAD"] == f"{LIB}:/opt/other.so" and env["PATH"] == "/bin"
    assert env["TCMALLOC_RELEASE_RATE"] == "3"  # the user's setting stands
    assert tcmalloc_env({}, LIB)["TCMALLOC_RELEASE_RATE"] == "0"  # default: freed memory is kept
    assert tcmalloc_env(env, LIB) is None  # the re-executed process does not loop
    assert tcmalloc_env({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, LIB) is None
    assert tcmalloc_env({"R1HPC_ALLOCATOR": "system"}, LIB) is None
    assert tcmalloc_env({}, None) is None  # not installed: nothing changes
    with pytest.raises(ConfigError, match="R1HPC_ALLOCATOR"):
        tcmalloc_env({"R1HPC_ALLOCATOR": "jemalloc"}, LIB)


@pytest.mark.skipif(find_tcmalloc() is None, reason="tcmalloc is not installed (scripts/install_system_deps.sh)")
def test_a_compute_command_reexecutes_under_tcmalloc_once(tmp_path):
    """``r1hpc train`` with a missing config: the dynamic loader (LD_DEBUG, inherited through the
    exec) loads tcmalloc, and the config error comes out once, from the re-executed process."""
    cmd = [sys.executable, "-m", "r1hpc.cli", "train", str(tmp_path / "missing.yaml")]
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "R1HPC_ALLOCATOR")}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2 and out.stderr.count("r1hpc: config error") == 1, out.stderr
    traced = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**env, "LD_DEBUG": "files"})
    assert f"calling init: {find_tcmalloc()}" in traced.stderr
    system = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                            env={**env, "LD_DEBUG": "files", "R1HPC_ALLOCATOR": "system"})
    assert "tcmalloc" not in system.stderr and system.returncode == 2


def test_info_names_the_allocator():
    from r1hpc.info import _allocator

    assert _allocator().startswith("tcmalloc" if find_tcmalloc() else "glibc")


@pytest.mark.skipif(find_tcmalloc() is None, reason="tcmalloc is not installed (scripts/install_system_deps.sh)")
def test_a_script_reexecutes_itself_under_tcmalloc(tmp_path):
    """``program``: a script (benchmarks/profile_grpo_step.py does this) replaces itself by itself under
    tcmalloc, with its arguments, once."""
    script = tmp_path / "probe.py"
    script.write_text("import os, sys\n"
                      "from r1hpc.launch.allocator import reexec_under_tcmalloc\n"
                      "print('run', sys.argv[1:], os.environ.get('LD_PRELOAD', ''), flush=True)\n"
                      "reexec_under_tcmalloc(sys.argv[1:], program=[sys.executable, __file__])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "R1HPC_ALLOCATOR")}
    out = subprocess.run([sys.executable, str(script), "--a", "1"], capture_output=True, text=True, timeout=60,
                         env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["run ['--a', '1'] ", f"run ['--a', '1'] {find_tcmalloc()}"]
