"""``r1hpc info``: what this machine offers r1hpc, read without starting any process group.

Each probe catches its own failure and reports it as text, so the command answers on a laptop,
in CI and on a CUDA node where a piece (Transformer Engine, a compiled extension) is missing or
broken: the point of the command is to say which piece that is.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
import warnings
from typing import Any, Callable

from r1hpc.extensions import CPU_ATTENTION_EXTENSION, CPU_SAMPLING_EXTENSION, CUDA_EXTENSION


def _probe(fn: Callable[[], Any]) -> Any:
    """``fn()``, or ``{"error": ...}`` when it fails, so one broken piece never hides the others."""
    try:
        return fn()
    except Exception as e:  # any failure is the answer here
        return {"error": f"{type(e).__name__}: {e}"}


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _torch() -> dict:
    import torch

    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            devices.append({"name": torch.cuda.get_device_name(i), "capability": f"{major}.{minor}"})
    return {"version": torch.__version__, "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "devices": devices}


def _megatron() -> dict:
    """The version, and whether it is a release CI tests (else: supported series or not)."""
    from r1hpc.model import mcore_compat

    version = mcore_compat.installed_version()
    if mcore_compat.is_tested(version):
        status = "tested"
    else:
        try:
            status = f"untested (its series is supported; CI tests {mcore_compat.features(version).tested})"
        except mcore_compat.MegatronVersionError:
            status = f"unsupported (supported: {mcore_compat.supported_text()})"
    return {"version": version, "status": status}


def _transformer_engine() -> dict:
    from r1hpc.model.provider import transformer_engine_available

    installed = importlib.util.find_spec("transformer_engine") is not None
    return {"installed": installed, "importable": transformer_engine_available(),
            "version": _dist_version("transformer-engine", "transformer_engine") if installed else None}


def _triton() -> dict:
    if importlib.util.find_spec("triton") is None:
        return {"version": None, "backend": None}
    import triton

    try:
        target = triton.runtime.driver.active.get_current_target()
        backend = f"{target.backend} (arch {target.arch})"
    except Exception:  # no GPU driver: triton raises when asked for the active one
        backend = "none (kernels run only in the interpreter, TRITON_INTERPRET=1)"
    return {"version": triton.__version__, "backend": backend, "interpret": os.environ.get("TRITON_INTERPRET", "0") == "1"}


def _extension(module: str) -> dict:
    """'not built' when the module is absent; the import error when it is there but broken."""
    if importlib.util.find_spec(module) is None:
        return {"module": module, "status": "not built"}
    try:
        importlib.import_module(module)
    except Exception as e:
        return {"module": module, "status": f"import failed: {type(e).__name__}: {e}"}
    return {"module": module, "status": "ok"}


def _allocator() -> str:
    """The host memory allocator of compute commands (train, sft, evaluate, ...; r1hpc.launch.allocator)."""
    from r1hpc.launch.allocator import GLIBC, compute_allocator

    library = compute_allocator()
    if library == GLIBC:
        return f"{GLIBC} (tcmalloc: Debian libtcmalloc-minimal4, unless R1HPC_ALLOCATOR=system)"
    return f"tcmalloc ({library})" if "tcmalloc" in library else library


def _rollout_sampler() -> str:
    """Which sampler a rollout with the default ``rollout.sampler`` (auto) uses on this machine."""
    from r1hpc.rollout.generate import RolloutConfig
    from r1hpc.rollout.native import describe

    return describe(RolloutConfig().sampler)


def _cpu_matrix_units(cpuinfo: str | None = None) -> str:
    """The CPU's matrix-product flags, and whether a bf16 model would be slower than an fp32 one here."""
    from r1hpc.model.cpu_linear import cpu_matrix_flags

    flags = cpu_matrix_flags(cpuinfo)
    if {"avx512_bf16", "amx_bf16"} & set(flags):
        return ", ".join(flags)
    return (f"{', '.join(flags) or 'no AVX2'} (no avx512_bf16 or amx_bf16: bf16 products run slower than fp32 on "
            "this CPU, so keep model.params_dtype fp32 here)")


def _launch() -> dict:
    from r1hpc.distributed import detect_launch_env

    return dataclasses.asdict(detect_launch_env())


def _transformer_impl() -> str:
    from r1hpc.model.config import ModelConfig
    from r1hpc.model.provider import select_transformer_impl

    return select_transformer_impl(ModelConfig())


def _cpu_patches() -> list[dict] | str:
    """The CPU compatibility patches; applied here only on a machine without CUDA (as a run would)."""
    import torch

    if torch.cuda.is_available():
        return "none (CUDA is available)"
    from r1hpc.model import cpu_compat

    return [{"target": p.target, "why": p.why} for p in cpu_compat.apply()]


def collect_info() -> dict:
    """Versions, devices, extensions, launcher and CPU patches as plain data."""
    with warnings.catch_warnings():  # megatron warns at import that TE is absent; the report says so itself
        warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed")
        return _collect()


def _collect() -> dict:
    return {
        "r1hpc": _dist_version("r1hpc"),
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "torch": _probe(_torch),
        "megatron-core": _probe(_megatron),
        "transformer-engine": _probe(_transformer_engine),
        "triton": _probe(_triton),
        "cuda extension": _probe(lambda: _extension(CUDA_EXTENSION)),
        "cpu sampling extension": _probe(lambda: _extension(CPU_SAMPLING_EXTENSION)),
        "cpu paged attention extension": _probe(lambda: _extension(CPU_ATTENTION_EXTENSION)),
        "rollout sampler": _probe(_rollout_sampler),
        "host allocator (compute commands)": _probe(_allocator),
        "cpu matrix units": _probe(_cpu_matrix_units),
        "launch": _probe(_launch),
        "transformer impl (default model)": _probe(_transformer_impl),
        "cpu compat patches": _probe(_cpu_patches),
    }


def _line(key: str, value: Any) -> str:
    if isinstance(value, dict) and "error" in value:
        return f"{key}: unavailable ({value['error']})"
    if isinstance(value, dict):
        return f"{key}: " + ", ".join(f"{k}={v}" for k, v in value.items())
    return f"{key}: {value}"


def format_info(info: dict) -> str:
    """Readable text: one line per component, devices and patches one per line below theirs."""
    out = []
    for key, value in info.items():
        if key == "torch" and isinstance(value, dict) and "devices" in value:
            devices = value["devices"]
            out.append(_line(key, {k: v for k, v in value.items() if k != "devices"}))
            out.append(f"cuda devices: {len(devices)}")
            out += [f"  [{i}] {d['name']} (compute capability {d['capability']})" for i, d in enumerate(devices)]
        elif isinstance(value, list):
            out.append(f"{key}: {len(value)}")
            out += [f"  {p['target']}: {p['why']}" for p in value]
        else:
            out.append(_line(key, value))
    return "\n".join(out)


def print_info() -> None:
    print(format_info(collect_info()))
