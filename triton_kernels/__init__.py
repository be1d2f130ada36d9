"""Triton kernels of r1hpc (installed as r1hpc.triton_kernels)."""
