"""Triton kernels, installed as ``r1hpc.triton_kernels`` (setup.py ``package_dir``) so they can never
shadow vLLM's unrelated top-level ``triton_kernels`` package.

Importing this package does not import Triton; the kernel modules do, on first use.
"""
