"""Compile every kernel variant for Hopper (sm_90) on a machine without a GPU.

The CPU tests run the kernels in Triton's interpreter, which accepts some programs the compiler
rejects (types of loop-carried values, constexpr use); lowering to a cubin here catches those in
CI. Run: ``python -m r1hpc.triton_kernels.compile_check`` (TRITON_INTERPRET must be unset).
"""
from __future__ import annotations

import itertools
import os

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from r1hpc.triton_kernels import fused_linear as fl
from r1hpc.triton_kernels import grpo_loss as k

SM90 = GPUTarget("cuda", 90, 32)
F32 = "*fp32"
OBJECTIVE_SCALARS = {"eps_low": "fp32", "eps_high": "fp32", "dual_c": "fp32", "beta": "fp32", "ent_coef": "fp32"}
FLAG_NAMES = ("HAS_REF", "HAS_TIS", "HAS_DUAL", "KL_KIND")


def _compile(fn, sig: dict, consts: dict, num_warps: int = 8) -> None:
    sig = {**sig, **{name: "constexpr" for name in consts}}
    triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=SM90,
                   options={"num_warps": num_warps})


def _compile_fused_linear() -> int:
    """The fused output layer's kernels at their default tiles, for bf16 and fp32 operands (mixed
    dtypes differ from fp32 only by the conversions after the loads; compiled once, by hand)."""
    n = 0
    tiles = {"BLOCK_T": fl.MAX_BLOCK_T, "BLOCK_V": fl.MAX_BLOCK_V, "BLOCK_H": fl.MAX_BLOCK_H}
    sizes = {"T": "i32", "H": "i32", "n_real": "i32", "stride_h": "i32", "stride_w": "i32", "inv_temp": "fp32"}
    per_token = {"g_lp_ptr": F32, "g_ent_ptr": F32, "lse_ptr": F32, "mean_z_ptr": F32}
    for h_dtype, w_dtype in (("*bf16", "*bf16"), ("*fp32", "*fp32")):
        consts = {**tiles, "UPCAST": h_dtype != w_dtype}
        ptrs = {"h_ptr": h_dtype, "w_ptr": w_dtype}
        _compile(fl._fused_linear_stats_kernel, {**ptrs, "target_ptr": "*i32", "stats_ptr": F32, **sizes}, consts, 4)
        _compile(fl._grad_hidden_kernel, {**ptrs, "gh_ptr": F32, **per_token, **sizes}, consts, 4)
        _compile(fl._grad_weight_kernel, {**ptrs, "gw_ptr": F32, **per_token, **sizes}, consts, 4)
        n += 3
    return n


def _objective_flags():
    for kl_kind in k.KL_KINDS.values():
        yield dict(zip(FLAG_NAMES, (True, True, True, kl_kind)))
    yield dict(zip(FLAG_NAMES, (False, False, False, 3)))


def compile_all() -> int:
    """Compile all variants; returns how many were built."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter does not compile")
    n = 0
    per_token = {"old_ptr": F32, "adv_ptr": F32, "ref_ptr": F32, "tis_ptr": F32}
    for dtype in ("*bf16", "*fp16", "*fp32"):
        fwd = {"logits_ptr": dtype, "stride": "i32", "target_ptr": "*i64", "w_ptr": F32, "stats_ptr": F32,
               "out_ptr": F32, **per_token, "T": "i32", "V": "i32", "vocab_start": "i32", "inv_temp": "fp32",
               **OBJECTIVE_SCALARS}
        for fuse, flags in itertools.product((True, False), _objective_flags()):
            _compile(k._grpo_fwd_kernel, fwd, {"FUSE_EPILOGUE": fuse, **flags, "BLOCK_V": 4096})
            n += 1
        bwd = {"logits_ptr": dtype, "stride": "i32", "grad_ptr": dtype, "grad_stride": "i32", "target_ptr": "*i64",
               "w_ptr": F32, "out_ptr": F32, "grad_loss_ptr": F32, "T": "i32", "V": "i32", "vocab_start": "i32",
               "inv_temp": "fp32", "ent_coef": "fp32"}
        for entropy in (True, False):
            _compile(k._grpo_bwd_kernel, bwd, {"HAS_ENTROPY_GRAD": entropy, "BLOCK_V": 4096})
            n += 1
    epi = {"stats_ptr": F32, "w_ptr": F32, "out_ptr": F32, **per_token, "T": "i32", **OBJECTIVE_SCALARS}
    for flags in _objective_flags():
        _compile(k._grpo_epilogue_kernel, epi, {**flags, "BLOCK_T": 1024})
        n += 1
    return n + _compile_fused_linear()


if __name__ == "__main__":
    print(f"compiled {compile_all()} kernel variants for sm_90")
