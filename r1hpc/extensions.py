"""Names of the compiled extensions setup.py builds from csrc/ (both are the token sampler).

A leaf, free of torch: ``r1hpc info`` probes them without importing what uses them, and
:mod:`r1hpc.rollout.native` loads them."""

CUDA_EXTENSION = "r1hpc._C"
CPU_SAMPLING_EXTENSION = "r1hpc._cpu_sampling"
