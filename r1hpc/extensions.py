"""Names of the compiled extensions setup.py builds from csrc/: the token sampler (CPU and CUDA) and
the CPU decode attention over a paged KV cache.

A leaf, free of torch: ``r1hpc info`` probes them without importing what uses them;
:mod:`r1hpc.rollout.native` and :mod:`r1hpc.model.paged_attention` load them."""

CUDA_EXTENSION = "r1hpc._C"
CPU_SAMPLING_EXTENSION = "r1hpc._cpu_sampling"
CPU_ATTENTION_EXTENSION = "r1hpc._cpu_attention"
