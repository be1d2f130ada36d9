"""``r1hpc info`` runs as a user would run it and names every piece; broken pieces are reported, not fatal."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

from r1hpc import info


def test_info_command_prints_versions_and_patches():
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher and not k.startswith("SLURM_")}
    proc = subprocess.run([sys.executable, "-m", "r1hpc.cli", "info"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"torch: version={torch.__version__}" in out
    from r1hpc.model import mcore_compat

    assert f"megatron-core: version={mcore_compat.installed_version()}, status=tested" in out  # CI locks tested releases
    assert "triton: version=" in out
    assert f"cuda extension: module={info.CUDA_EXTENSION}, status=not built" in out
    assert f"cpu sampling extension: module={info.CPU_SAMPLING_EXTENSION}, status=ok" in out  # built by the install
    assert f"cpu paged attention extension: module={info.CPU_ATTENTION_EXTENSION}, status=ok" in out
    assert "launch: rank=0, world_size=1, local_rank=0, master_addr=127.0.0.1, master_port=" in out
    assert "launcher=single" in out
    assert "Transformer Engine and Apex are not installed" not in proc.stderr
    if not torch.cuda.is_available():
        assert "transformer impl (default model): local" in out
        assert f"rollout sampler: native ({info.CPU_SAMPLING_EXTENSION}, cpu) for rollout.sampler=auto" in out
        assert "cpu compat patches:" in out
        assert "  torch.cuda.current_device: megatron allocates buffers" in out


def test_extension_status(tmp_path, monkeypatch):
    (tmp_path / "r1hpc_broken_ext.py").write_text("raise ImportError('undefined symbol: foo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert info._extension("r1hpc_no_such_ext")["status"] == "not built"
    assert info._extension("r1hpc_broken_ext")["status"] == "import failed: ImportError: undefined symbol: foo"
    assert info._extension("json")["status"] == "ok"


def test_format_info_shows_devices_and_failures():
    text = info.format_info({
        "torch": {"version": "2.13.0", "cuda_build": "12.8", "cuda_available": True,
                  "devices": [{"name": "NVIDIA H100 80GB HBM3", "capability": "9.0"}]},
        "transformer-engine": info._probe(lambda: 1 / 0),
        "cpu compat patches": "none (CUDA is available)",
    })
    assert text.splitlines() == [
        "torch: version=2.13.0, cuda_build=12.8, cuda_available=True",
        "cuda devices: 1",
        "  [0] NVIDIA H100 80GB HBM3 (compute capability 9.0)",
        "transformer-engine: unavailable (ZeroDivisionError: division by zero)",
        "cpu compat patches: none (CUDA is available)",
    ]


def test_every_command_in_the_table_has_its_own_sub_parser():
    from r1hpc.cli import COMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == list(COMMANDS)  # each table entry registered exactly its own name
    for name in COMMANDS:  # what `r1hpc <name> --help` prints
        assert sub.choices[name].format_help().startswith(f"usage: r1hpc {name}")


def test_cpu_matrix_units_say_when_bf16_is_the_slower_dtype():
    def cpuinfo(flags: str) -> str:
        return f"processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu {flags}\n"

    assert info._cpu_matrix_units(cpuinfo("avx2 avx512f avx512_bf16 amx_tile amx_bf16")) == \
        "avx2, avx512f, avx512_bf16, amx_bf16"
    assert info._cpu_matrix_units(cpuinfo("avx2 avx512f avx512_vnni")).startswith(
        "avx2, avx512f (no avx512_bf16 or amx_bf16: bf16 products run slower than fp32")
    assert info._cpu_matrix_units(cpuinfo("sse4_2")).startswith("no AVX2 (no avx512_bf16")
